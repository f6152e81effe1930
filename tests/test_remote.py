"""A shared model store on S3: push, pull, and replicas that serve what is pushed.

The S3 server is moto's standalone server (it speaks the S3 HTTP API) on a loopback port,
started here; genreg talks to it through s3fs exactly as it would to AWS or MinIO.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import httpx
import pytest
from servers import ROOT, free_port, running_server

pytestmark = pytest.mark.slow
NAME = "remote-gaussian"
BUCKET = "genreg-test"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """moto's S3 server on loopback, with a bucket; the AWS variables that point at it."""
    pytest.importorskip("s3fs", reason="s3fs is in the dev extra (make venv installs it)")
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], stdout=out, stderr=out
        )
    env = {
        "AWS_ACCESS_KEY_ID": "genreg-test-key",
        "AWS_SECRET_ACCESS_KEY": "genreg-test-secret",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
    }
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(env["AWS_ENDPOINT_URL"], timeout=2)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    pytest.fail(f"moto did not start:\n{log.read_text()[-2000:]}")
                time.sleep(0.2)
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        import s3fs

        s3fs.S3FileSystem.clear_instance_cache()
        s3fs.S3FileSystem().mkdir(BUCKET)
        yield env, f"s3://{BUCKET}/models"
    finally:
        for k, v in locals().get("saved", {}).items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        proc.terminate()
        proc.wait(timeout=20)


def genreg(*args: str, home: Path | None = None, check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, **({"BENTOML_HOME": str(home)} if home else {}))
    proc = subprocess.run(
        [sys.executable, "-m", "registry.cli", *args], capture_output=True, text=True, env=env, cwd=ROOT
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"genreg {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def _tags(home: Path) -> list[str]:
    return [line.split()[0] for line in genreg("list", home=home).stdout.splitlines() if ":" in line]


def test_push_then_pull_into_another_store_verified(s3, train_model, tmp_path):
    env, uri = s3
    stored = train_model("gaussian", "moons", name=NAME)
    out = genreg("push", stored.tag, uri).stdout
    assert f"pushed {stored.tag}" in out
    other = tmp_path / "other-home"
    assert f"pulled {stored.tag}" in genreg("pull", NAME, uri, home=other).stdout
    assert _tags(other) == [stored.tag]
    # The pulled version answers exactly as the original does.
    a = genreg("sample", stored.tag, "-n", "4", "--seed", "7", "--out", str(tmp_path / "a.npy"))
    b = genreg("sample", stored.tag, "-n", "4", "--seed", "7", "--out", str(tmp_path / "b.npy"), home=other)
    assert a.returncode == b.returncode == 0
    assert (tmp_path / "a.npy").read_bytes() == (tmp_path / "b.npy").read_bytes()
    # Pulling again is a no-op, and no credential ever appears in what genreg prints.
    again = genreg("pull", stored.tag, uri, home=other)
    assert env["AWS_SECRET_ACCESS_KEY"] not in again.stdout + again.stderr + out


def test_a_truncated_or_tampered_object_is_refused_by_name(s3, train_model, tmp_path):
    import s3fs

    _, uri = s3
    fs = s3fs.S3FileSystem()
    stored = train_model("gaussian", "rings", name="remote-tamper")
    genreg("push", stored.tag, uri)
    base = f"{BUCKET}/models/remote-tamper/{stored.version}"
    archive = fs.cat_file(base + ".bentomodel")
    home = tmp_path / "home"

    # 1. Truncated in the bucket: the archive's sha256 no longer matches its index entry.
    fs.pipe_file(base + ".bentomodel", archive[: len(archive) // 2])
    proc = genreg("pull", stored.tag, uri, home=home, check=False)
    assert proc.returncode == 2 and stored.tag in proc.stderr and "sha256" in proc.stderr
    assert "Traceback" not in proc.stderr and _tags(home) == []

    # 2. Rewritten consistently (archive and its sha256 both replaced) with one graph damaged:
    #    the import happens, the per-artifact checksums catch it, and the version is removed.
    tampered = io.BytesIO()
    with (
        tarfile.open(fileobj=io.BytesIO(archive), mode="r:*") as src,
        tarfile.open(fileobj=tampered, mode="w:xz") as dst,
    ):
        for member in src.getmembers():
            data = src.extractfile(member).read() if member.isfile() else None
            if member.name.endswith("scorer.onnx"):
                data = data[:-8] + b"\0" * 8
            dst.addfile(member, io.BytesIO(data) if data is not None else None)
    payload = tampered.getvalue()
    index = json.loads(fs.cat_file(base + ".json"))
    index["archive_sha256"] = __import__("hashlib").sha256(payload).hexdigest()
    fs.pipe_file(base + ".bentomodel", payload)
    fs.pipe_file(base + ".json", json.dumps(index).encode())
    proc = genreg("pull", stored.tag, uri, home=home, check=False)
    assert proc.returncode == 2 and "scorer.onnx" in proc.stderr and "sha256" in proc.stderr
    assert _tags(home) == []


def test_two_replicas_serve_the_pushed_version_and_pick_up_a_new_push(s3, train_model, tmp_path):
    _, uri = s3
    first = train_model("gaussian", "moons", name="remote-live")
    genreg("push", first.tag, uri)
    env = {"GENREG_POLL_SECONDS": "0.3", "GENREG_REMOTE_POLL_SECONDS": "0.5", "GENREG_MODELS": "remote-live"}
    with (
        running_server(
            tmp_path / "a.log", args=("--models-from", uri), BENTOML_HOME=str(tmp_path / "a"), **env
        ) as a,
        running_server(
            tmp_path / "b.log", args=("--models-from", uri), BENTOML_HOME=str(tmp_path / "b"), **env
        ) as b,
    ):
        body = {"model": "remote-live", "n": 5, "seed": 11}
        answers = [httpx.post(s.base + "/sample", json=body, timeout=30).json() for s in (a, b)]
        assert answers[0] == answers[1] and answers[0]["model"] == first.tag
        second = train_model("gaussian", "rings", name="remote-live")
        genreg("push", second.tag, uri)
        deadline = time.monotonic() + 60
        for server in (a, b):
            while httpx.post(server.base + "/sample", json=body, timeout=30).json()["model"] != second.tag:
                assert time.monotonic() < deadline, f"{server.base} did not serve {second.tag}"
                time.sleep(0.3)
        answers = [httpx.post(s.base + "/sample", json=body, timeout=30).json() for s in (a, b)]
        assert answers[0] == answers[1] and answers[0]["model"] == second.tag
        assert (
            answers[0]["samples"]
            != httpx.post(a.base + "/sample", json={**body, "model": first.tag}).json()["samples"]
        )
