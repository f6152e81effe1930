"""`genreg containerize`: a serving image built on this machine, from Debian's packages only.

Docker Hub is out of reach here, so the base image is made from scratch: debootstrap a minimal
bookworm (python3, pip, ca-certificates) from the mirror in the machine's apt sources, `docker
import` it, add the host's extra CA certificates, then `bentoml containerize` the Bento on it
with genreg's slim Dockerfile template (deploy/docker/Dockerfile.j2).

Docker runs as a private daemon: its own --data-root, exec-root and socket, no bridge and no
iptables rules (builds and containers use the host network), started for the job and stopped
afterwards, so the host's networking and any other Docker on it are left alone.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from registry.packaging.bento import ROOT

ROOTFS_TAG = "genreg-rootfs:bookworm"
BASE_TAG = "genreg-base:bookworm-py3.11"
BASE_DOCKERFILE = ROOT / "deploy" / "docker" / "base.Dockerfile"
# Debian's docker CLI: /usr/local/bin may hold a newer one that wants buildx for every build.
DOCKER = "/usr/bin/docker"
ROOTFS_PACKAGES = ["python3", "python3-pip", "ca-certificates"]
# Files a serving image never reads; dropping them saves about 40 MB.
ROOTFS_PRUNE = ["usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale", "var/lib/apt/lists"]


class ImageError(RuntimeError):
    """A step of the image build failed; the message says which and shows its log's tail."""


class ImageConfig(BaseModel):
    """Where the private Docker keeps its state, and what to rebuild."""

    model_config = ConfigDict(extra="forbid")

    data_root: Path = Field(
        default_factory=lambda: Path(os.environ.get("GENREG_DOCKER_ROOT", "/var/lib/genreg-docker"))
    )
    cache_dir: Path = Field(
        default_factory=lambda: Path(os.environ.get("GENREG_IMAGE_CACHE", "/var/cache/genreg-image"))
    )
    suite: str = "bookworm"
    mirror: str | None = Field(None, description="Debian mirror; default: the one in the apt sources")
    fresh: bool = Field(False, description="rebuild the root file system and base image")
    ca_dir: Path = Path("/usr/local/share/ca-certificates")


def _run(cmd: list[str], what: str, log: Path | None = None, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    if log is not None:
        with log.open("a") as f:
            f.write(f"$ {' '.join(cmd)}\n{proc.stdout}{proc.stderr}\n")
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-20:])
        raise ImageError(f"{what} failed (exit {proc.returncode}):\n{tail}")
    return proc


def ensure_tools() -> list[str]:
    """Install docker.io and debootstrap from Debian's packages where missing; returns those installed."""
    wanted = {"docker.io": ("dockerd", DOCKER), "debootstrap": ("debootstrap",)}
    missing = [pkg for pkg, progs in wanted.items() if not all(shutil.which(p) for p in progs)]
    if not missing:
        return []
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise ImageError(f"{', '.join(missing)} missing and apt-get unavailable (run as root on Debian)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    _run(["apt-get", "update", "-qq"], "apt-get update", env=env)
    _run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing], "apt-get install", env=env)
    return missing


def debian_mirror(suite: str = "bookworm", sources: Path = Path("/etc/apt")) -> str:
    """The first Debian archive (not the security one) that the apt sources list for ``suite``."""
    files = [*sorted(sources.glob("sources.list.d/*.sources")), sources / "sources.list"]
    files += sorted(sources.glob("sources.list.d/*.list"))
    for file in files:
        if not file.is_file():
            continue
        text = file.read_text()
        if file.suffix == ".sources":  # deb822 stanzas
            for stanza in re.split(r"\n\s*\n", text):
                fields = dict(re.findall(r"^(\w[\w-]*):\s*(.*)$", stanza, re.M))
                uris, suites = fields.get("URIs", "").split(), fields.get("Suites", "").split()
                if suite in suites and "deb" in fields.get("Types", "").split():
                    uris = [u for u in uris if "security" not in u]
                    if uris:
                        return uris[0]
        else:
            for m in re.finditer(r"^deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)", text, re.M):
                if m.group(2) == suite and "security" not in m.group(1):
                    return m.group(1)
    raise ImageError(f"no Debian {suite} mirror in {sources}'s apt sources; pass --mirror")


def _mounts_under(folder: Path) -> list[str]:
    """Mount points inside ``folder``, deepest first."""
    try:
        lines = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return []
    points = [line.split()[1] for line in lines if len(line.split()) > 1]
    return sorted((p for p in points if p.startswith(f"{folder}/")), key=len, reverse=True)


class Docker:
    """A private dockerd; call :meth:`__call__` to run the docker CLI against it."""

    def __init__(self, data_root: Path) -> None:
        self.data_root = data_root
        # Short paths: the containerd socket under exec-root must fit a unix socket name.
        self.run_dir = Path(tempfile.mkdtemp(prefix="genreg-dockerd-", dir="/tmp"))
        self.socket = self.run_dir / "docker.sock"
        self.log = self.run_dir / "dockerd.log"
        self.proc: subprocess.Popen | None = None

    @property
    def env(self) -> dict[str, str]:
        path = os.environ.get("PATH", "")
        return dict(
            os.environ,
            DOCKER_HOST=f"unix://{self.socket}",
            # The legacy builder: BuildKit through a CLI needs buildx, which is not here.
            DOCKER_BUILDKIT="0",
            PATH=f"/usr/bin:{path}",
        )

    def start(self, timeout: float = 60) -> None:
        self.data_root.mkdir(parents=True, exist_ok=True)
        cmd = [
            shutil.which("dockerd") or "dockerd",
            "--data-root", str(self.data_root),
            "--exec-root", str(self.run_dir / "exec"),
            "--pidfile", str(self.run_dir / "dockerd.pid"),
            "--host", f"unix://{self.socket}",
            "--bridge", "none",
            "--iptables=false",
            "--ip-masq=false",
        ]  # fmt: skip
        with self.log.open("w") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            ok = subprocess.run([DOCKER, "version"], capture_output=True, env=self.env).returncode == 0
            if ok:
                return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise ImageError(f"dockerd did not start:\n{self.log.read_text()[-2000:]}")
            time.sleep(0.5)

    def stop(self, timeout: float = 30) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        # dockerd leaves its default network namespace bind-mounted under exec-root.
        for point in _mounts_under(self.run_dir):
            subprocess.run(["umount", "-l", point], capture_output=True)
        shutil.rmtree(self.run_dir, ignore_errors=True)

    def __call__(self, *args: str, what: str | None = None, log: Path | None = None) -> str:
        return _run([DOCKER, *args], what or f"docker {args[0]}", log, env=self.env).stdout.strip()

    def has_image(self, tag: str) -> bool:
        return (
            subprocess.run([DOCKER, "image", "inspect", tag], capture_output=True, env=self.env).returncode
            == 0
        )

    def image_size(self, tag: str) -> int:
        return int(self("image", "inspect", "--format", "{{.Size}}", tag))


@contextlib.contextmanager
def docker_daemon(data_root: Path) -> Iterator[Docker]:
    """A private dockerd for the block; stopped (and its containers with it) on the way out."""
    docker = Docker(data_root)
    docker.start()
    try:
        yield docker
    finally:
        docker.stop()


def rootfs_tarball(config: ImageConfig, log: Path) -> Path:
    """A minimal bookworm with python3 as a tar file, made once and kept in the cache folder."""
    tarball = config.cache_dir / f"rootfs-{config.suite}.tar"
    if tarball.exists() and not config.fresh:
        return tarball
    config.cache_dir.mkdir(parents=True, exist_ok=True)
    mirror = config.mirror or debian_mirror(config.suite)
    with tempfile.TemporaryDirectory(prefix="genreg-rootfs-", dir=config.cache_dir) as tmp:
        rootfs = Path(tmp) / "rootfs"
        _run(
            ["debootstrap", "--variant=minbase", f"--include={','.join(ROOTFS_PACKAGES)}", config.suite, str(rootfs), mirror],
            "debootstrap",
            log,
        )  # fmt: skip
        for rel in ROOTFS_PRUNE:
            for child in (rootfs / rel).glob("*"):
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
        for deb in (rootfs / "var/cache/apt/archives").glob("*.deb"):
            deb.unlink()
        partial = tarball.with_suffix(".partial")
        _run(["tar", "--numeric-owner", "-C", str(rootfs), "-cf", str(partial), "."], "tar rootfs", log)
        partial.replace(tarball)
    return tarball


def build_base(docker: Docker, config: ImageConfig, log: Path) -> bool:
    """genreg-base (the rootfs plus the host's extra CAs); False when it was already there."""
    if docker.has_image(BASE_TAG) and not config.fresh:
        return False
    docker("import", str(rootfs_tarball(config, log)), ROOTFS_TAG, what="docker import", log=log)
    with tempfile.TemporaryDirectory(prefix="genreg-base-") as tmp:
        ctx = Path(tmp)
        shutil.copy(BASE_DOCKERFILE, ctx / "Dockerfile")
        (ctx / "ca").mkdir()
        for cert in sorted(config.ca_dir.rglob("*.crt")) if config.ca_dir.is_dir() else []:
            shutil.copy(cert, ctx / "ca" / cert.name)
        docker("build", "--network", "host", "-t", BASE_TAG, str(ctx), what="base image build", log=log)
    return True


def containerize(docker: Docker, bento_tag: str, image: str, log: Path) -> None:
    """`bentoml containerize` the Bento onto genreg-base, as ``image``."""
    env = dict(docker.env, BENTOML_DO_NOT_TRACK="True")
    cmd = [sys.executable, "-m", "bentoml", "containerize", bento_tag, "-t", image, "--network", "host"]
    # BentoML copies the Bento to a temporary build context and refuses a Dockerfile template
    # outside its working directory, so it runs from the temporary folder's parent.
    _run(cmd, "bentoml containerize", log, env=env, cwd=tempfile.gettempdir())


class Container:
    """A running genreg container on the host network, answering on ``port``."""

    def __init__(
        self, docker: Docker, image: str, port: int, name: str, extra: list[str] | None = None
    ) -> None:
        self.docker, self.port, self.name = docker, port, name
        self.remove()  # one left behind by an interrupted run would hold the name
        args = ["run", "-d", "--name", name, "--network", "host", *(extra or []), image]
        self.id = docker(*args, "--host", "127.0.0.1", "--port", str(port), what="docker run")

    def wait_ready(self, timeout: float = 120) -> float:
        """Seconds until /readyz answered 200; raises with the container's log if it never did."""
        import httpx

        start = time.monotonic()
        while time.monotonic() - start < timeout:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"http://127.0.0.1:{self.port}/readyz", timeout=2).status_code == 200:
                    return time.monotonic() - start
            if self.docker("inspect", "--format", "{{.State.Running}}", self.name) != "true":
                break
            time.sleep(0.25)
        raise ImageError(f"the container never became ready:\n{self.logs()[-3000:]}")

    def logs(self) -> str:
        proc = subprocess.run(
            [DOCKER, "logs", self.name], capture_output=True, text=True, env=self.docker.env
        )
        return proc.stdout + proc.stderr

    def stop(self, timeout: int = 30) -> tuple[float, int]:
        """SIGTERM (docker stop), then (seconds it took, exit code)."""
        start = time.monotonic()
        self.docker("stop", "-t", str(timeout), self.name)
        seconds = time.monotonic() - start
        code = int(self.docker("inspect", "--format", "{{.State.ExitCode}}", self.name))
        return seconds, code

    def remove(self) -> None:
        subprocess.run([DOCKER, "rm", "-f", self.name], capture_output=True, env=self.docker.env)


class ImageReport(BaseModel):
    image: str
    bento: str
    size_bytes: int
    base_built: bool
    seconds: dict[str, float]


def make_image(docker: Docker, config: ImageConfig, bento_tag: str, log: Path) -> ImageReport:
    """Base image (unless present) and the Bento's image on it, tagged genreg:<bento version>."""
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    base_built = build_base(docker, config, log)
    seconds["base"] = time.perf_counter() - start
    image = "genreg:" + bento_tag.partition(":")[2]
    start = time.perf_counter()
    containerize(docker, bento_tag, image, log)
    docker("tag", image, "genreg:latest")
    seconds["containerize"] = time.perf_counter() - start
    return ImageReport(
        image=image,
        bento=bento_tag,
        size_bytes=docker.image_size(image),
        base_built=base_built,
        seconds=seconds,
    )
