"""Do two checkouts give the same answers? A byte-for-byte comparison of the service and the CLI.

A refactor that only moves code should change no answer: every HTTP response body and every
line the CLI prints must stay the same, byte for byte, for the same stored models. This script
trains the demo model set once (into a private temporary BentoML home, unless --store names
one that holds it), then, for each checkout ("root") in turn,

- checks that a child process with PYTHONPATH=<root> and cwd=<root> really imports that root's
  code (the project is installed editable from one checkout: a wrong path would silently
  compare a checkout with itself);
- starts the real server of that root (`python -m registry.cli serve`, as tests/servers.py
  does) on a free loopback port, checks where its processes import the packages from, sends a
  fixed list of requests (/sample, /score for every score kind, error cases, /two_sample_test,
  /models, /docs.json, the gallery page) and records status, content type and raw body; then
  stops it;
- runs that root's CLI (`sample`, `score`, `list --json`, `plugins`, an error) and records exit
  code, stdout and stderr.

Every answer of one root is then compared with the same request's answer of the other; the
script prints a table, the first differing bytes of each difference, and a summary line, and
exits 1 if any answer differs (2 if a root could not be run at all).

Run: .venv/bin/python benchmarks/answers.py --compare-root ../genreg-before [--root .] [--store DIR]
Self-check (both sides one checkout; everything must be identical, else the check is
meaningless): --root ../genreg-before --compare-root ../genreg-before
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

# The checkout this script belongs to: the default --root.
HERE = Path(__file__).resolve().parent.parent
# The test suite's server helpers (no genreg code: subprocess and httpx), as benchmarks/load.py uses them.
sys.path.insert(0, str(HERE / "tests"))
from servers import Server, free_port, wait_ready  # noqa: E402

# The demo model set (registry/demo.py DEFAULT_MODELS), copied rather than imported: the script
# must not import either root's code itself, or it would depend on which one it found first.
DEMO_MODELS: tuple[tuple[str, str], ...] = (
    ("categorical", "digits"),
    ("gaussian", "digits"),
    ("flow", "digits"),
    ("vae", "digits"),
    ("flow", "8gaussians"),
    ("gan", "8gaussians"),
)
SCORE_KINDS = ("log_prob", "bound", "discriminator")
SEED = 7  # the seed of every /score request (dequantisation and encoder noise)

# Fixed 2-D points for the 8gaussians models: on the circle of centres (radius 2*sqrt(2)),
# between centres, at the origin and far outside the support (a log 0 there is part of the answer).
TOY_ROWS: list[list[float]] = [
    [0.0, 2.83],
    [2.0, 2.0],
    [0.0, 0.0],
    [-2.83, 0.1],
    [1.5, -2.5],
    [6.0, -6.0],
]
DIGIT_ROWS = 5  # rows of sklearn's load_digits data scored per digits model


@dataclass(frozen=True)
class Answer:
    """What one request got: HTTP status (or CLI exit code), content type, raw bytes."""

    status: int
    body: bytes
    content_type: str = ""


@dataclass(frozen=True)
class HttpCall:
    label: str
    method: str
    path: str
    body: bytes | None = None


@dataclass(frozen=True)
class CliCall:
    label: str
    args: tuple[str, ...]


@dataclass
class Plan:
    """The fixed list of requests: built once (from the first root's GET /models), sent to both."""

    http: list[HttpCall]
    cli: list[CliCall]


def body(payload: object) -> bytes:
    # Serialised once, so both roots receive exactly the same bytes.
    return json.dumps(payload, separators=(",", ":")).encode()


def child_env(root: Path, store: Path, tmp: Path) -> dict[str, str]:
    """The environment of every child process: only ``root`` on PYTHONPATH, the shared store.

    GENREG_* settings of the caller's shell (a token, batching, limits) are dropped so that
    both roots run with the defaults; TMPDIR is a per-root folder under our own temporary
    directory, so the private BentoML home that `serve` makes per server is cleaned up with it.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("GENREG_")}
    env.update(PYTHONPATH=str(root), BENTOML_HOME=str(store), TMPDIR=str(tmp), NO_COLOR="1")
    return env


def cli_prefix(root: Path, env: dict[str, str]) -> list[str]:
    """`python -m registry.cli`, or the `genreg` console script if the module does not run.

    The CLI's module may move in a refactor (e.g. become a package); the console script of the
    shared virtual environment imports `registry.cli:main` under the same PYTHONPATH, so it
    still runs this root's code.
    """
    candidates = [[sys.executable, "-m", "registry.cli"]]
    script = Path(sys.executable).with_name("genreg")
    found = str(script) if script.exists() else shutil.which("genreg")
    if found:
        candidates.append([found])
    errors = []
    for cmd in candidates:
        done = subprocess.run([*cmd, "--help"], cwd=root, env=env, capture_output=True, text=True)
        if done.returncode == 0:
            return cmd
        errors.append(f"{' '.join(cmd)}: exit {done.returncode}: {done.stderr.strip()[-600:]}")
    raise RuntimeError(f"{root}: no runnable CLI:\n" + "\n".join(errors))


# Run in a child with the root's environment: where does `import registry.cli` come from, and
# where would the other top-level packages (and the service module) be found? find_spec on a
# submodule imports only its parent package, so bentoml is not loaded just for this check.
IMPORT_CHECK = """
import importlib, importlib.util, json, sys
out = {"registry.cli": importlib.import_module("registry.cli").__file__}
for name in ("registry", "services", "plugins", "services.service"):
    try:
        spec = importlib.util.find_spec(name)
    except ImportError:
        spec = None
    out[name] = spec.origin if spec is not None else None
print(json.dumps(out))
"""


def check_imports(root: Path, env: dict[str, str]) -> dict[str, str | None]:
    done = subprocess.run(
        [sys.executable, "-c", IMPORT_CHECK], cwd=root, env=env, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise RuntimeError(f"{root}: importing registry.cli failed:\n{done.stderr[-2000:]}")
    files: dict[str, str | None] = json.loads(done.stdout.strip().splitlines()[-1])
    for name, origin in files.items():
        if origin is not None and not Path(origin).resolve().is_relative_to(root):
            raise RuntimeError(f"{root}: {name} is imported from {origin}, not from this root")
    if files["registry.cli"] is None:
        raise RuntimeError(f"{root}: registry.cli has no file")
    return files


# --- the server -----------------------------------------------------------------------------


def group_pids(pgid: int) -> list[int]:
    """Processes of a process group (the server runs in a session of its own)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Fields after the command name, which may hold spaces: state, ppid, pgrp, ...
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[2]) == pgid:
            pids.append(int(entry.name))
    return sorted(pids)


def package_homes(pid: int) -> dict[str, str] | None:
    """Where a running Python process finds `registry` and `services`, judged from outside.

    A module's search path is, in order, a `--working-dir` that BentoML puts first, the process's
    working directory (``-m``), then PYTHONPATH; the first of them holding the package is where
    it is imported from (the editable install's finder comes after all of them).
    """
    try:
        argv = (Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0"))[:-1]
        environ = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace").split("\0")
        cwd = os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return None
    if not argv or "python" not in Path(argv[0]).name:
        return None
    search = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--working-dir"]
    search.append(cwd)
    for item in environ:
        if item.startswith("PYTHONPATH="):
            search += [p for p in item.removeprefix("PYTHONPATH=").split(os.pathsep) if p]
    homes = {}
    for pkg in ("registry", "services"):
        home = next((p for p in search if (Path(cwd, p) / pkg / "__init__.py").is_file()), None)
        homes[pkg] = str(Path(cwd, home).resolve()) if home else "(editable install)"
    return homes


@contextmanager
def running_server(root: Path, prefix: list[str], env: dict[str, str], log_path: Path) -> Iterator[Server]:
    """That root's `serve` on a free loopback port, started like tests/servers.py does it."""
    port = free_port()
    cmd = [*prefix, "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    with log_path.open("w") as log:
        # A session of its own: if TERM does not stop every worker, its group can be killed
        # without touching anything else.
        proc = subprocess.Popen(
            cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    server = Server(f"http://127.0.0.1:{port}", proc, log_path)
    try:
        wait_ready(server)
        yield server
    finally:
        stop(server)


def stop(server: Server) -> None:
    """TERM, as an orchestrator would; KILL the group only if it is still there after 30 s."""
    pgid = server.proc.pid
    if server.proc.poll() is None:
        server.proc.terminate()
        try:
            server.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            print(f"  server {pgid} ignored TERM for 30 s: killed", flush=True)
    deadline = time.monotonic() + 10
    while group_pids(pgid) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = group_pids(pgid)
    if left:
        print(f"  server processes {left} outlived the server: killed", flush=True)
        os.killpg(pgid, signal.SIGKILL)
    server.proc.wait()


def check_server_imports(server: Server, root: Path) -> list[str]:
    """Every Python process of the server must find both packages in ``root``."""
    seen = []
    for pid in group_pids(server.proc.pid):
        homes = package_homes(pid)
        if homes is None:
            continue
        wrong = {pkg: home for pkg, home in homes.items() if Path(home) != root}
        if wrong:
            raise RuntimeError(f"server process {pid} imports {wrong}, not from {root}")
        seen.append(pid)
    if not seen:
        raise RuntimeError(f"no Python process found in the server's group {server.proc.pid}")
    return [str(p) for p in seen]


def ask(client: httpx.Client, call: HttpCall) -> Answer:
    headers = {"content-type": "application/json"} if call.body is not None else {}
    resp = client.request(call.method, call.path, content=call.body, headers=headers)
    return Answer(resp.status_code, resp.content, resp.headers.get("content-type", ""))


# --- the fixed requests ------------------------------------------------------------------------


def digits_rows() -> np.ndarray:
    from sklearn.datasets import load_digits

    return load_digits().data


def toy_reference(n: int = 64) -> list[list[float]]:
    """n points of the 8-Gaussians mixture, drawn once here (seeded) and sent as data."""
    rng = np.random.default_rng(0)
    angles = rng.integers(0, 8, n) * (np.pi / 4)
    centres = 2 * np.sqrt(2) * np.stack([np.cos(angles), np.sin(angles)], 1)
    return np.round(centres + 0.1 * rng.standard_normal((n, 2)), 6).tolist()


def build_plan(models_body: bytes, rows_dir: Path) -> Plan:
    """Requests for every served demo model and every score kind it lists, plus error cases.

    ``rows_dir`` receives the .npy files the CLI scores (the same rows as the HTTP requests).
    """
    served = {m["name"]: m for m in json.loads(models_body)["models"]}
    names = [f"{f}-{d}" for f, d in DEMO_MODELS]
    missing = [n for n in names if n not in served]
    if missing:
        raise RuntimeError(f"the server does not list {missing}")
    digits = digits_rows()
    rows: dict[str, list[list[float]]] = {
        "digits": digits[:DIGIT_ROWS].tolist(),
        "8gaussians": TOY_ROWS,
    }
    for data, x in rows.items():
        np.save(rows_dir / f"{data}.npy", np.asarray(x, dtype=np.float64))

    # /models is compared raw, nothing removed: both servers read one store, so versions,
    # creation times and metrics are the same; only a behaviour change can make it differ.
    http: list[HttpCall] = [
        HttpCall("GET /models", "GET", "/models"),
        HttpCall("POST /models", "POST", "/models", b"{}"),
        HttpCall("GET /docs.json", "GET", "/docs.json"),
        HttpCall("GET / (gallery page)", "GET", "/"),
    ]
    cli: list[CliCall] = [
        CliCall("cli list --json", ("list", "--json")),
        CliCall("cli plugins", ("plugins",)),
    ]
    for name in names:
        data = name.split("-", 1)[1]
        image = data == "digits"
        kinds = served[name]["kinds"]
        sample = {"model": name, "n": 8, "seed": 3}
        http.append(HttpCall(f"/sample {name} n=8 seed=3", "POST", "/sample", body(sample)))
        http.append(
            HttpCall(
                f"/sample {name} n=8 seed=3 temperature=0.7",
                "POST",
                "/sample",
                body({**sample, "temperature": 0.7}),
            )
        )
        if image:
            http.append(
                HttpCall(
                    f"/sample {name} n=8 seed=3 png", "POST", "/sample", body({**sample, "format": "png"})
                )
            )
        cli.append(CliCall(f"cli sample {name} -n 8 --seed 3", ("sample", name, "-n", "8", "--seed", "3")))
        x = rows[data]
        http.append(
            HttpCall(
                f"/score {name} (default kind)", "POST", "/score", body({"model": name, "x": x, "seed": SEED})
            )
        )
        for kind in kinds:
            for k in (1, 16) if kind == "bound" else (1,):
                payload = {"model": name, "x": x, "kind": kind, "seed": SEED, "k": k}
                http.append(HttpCall(f"/score {name} kind={kind} k={k}", "POST", "/score", body(payload)))
                args = ("score", name, "--file", str(rows_dir / f"{data}.npy"), "--kind", kind)
                cli.append(CliCall(f"cli score {name} --kind {kind} -k {k}", (*args, "-k", str(k))))
    http += error_calls(served, names, rows)
    cli.append(CliCall("cli sample no-such-model (error)", ("sample", "no-such-model", "-n", "2")))
    for name in ("flow-8gaussians", "vae-digits"):
        x = toy_reference() if name.endswith("8gaussians") else digits[100:164].tolist()
        for test in ("mmd", "c2st"):
            payload = {"model": name, "x": x, "test": test, "seed": 5}
            http.append(
                HttpCall(f"/two_sample_test {name} {test}", "POST", "/two_sample_test", body(payload))
            )
    return Plan(http, cli)


def error_calls(
    served: dict[str, dict], names: list[str], rows: dict[str, list[list[float]]]
) -> list[HttpCall]:
    """Refusals: the status and the JSON error body (message and field) must not change either."""
    lacking, kind = next((n, k) for n in names for k in SCORE_KINDS if k not in served[n]["kinds"])
    with_log_prob = next(n for n in names if "log_prob" in served[n]["kinds"])
    digit_row = rows["digits"][0]
    cases: list[tuple[str, str, dict[str, object]]] = [
        ("unknown model (404)", "/sample", {"model": "no-such-model", "n": 2}),
        ("unknown model (404)", "/score", {"model": "no-such-model", "x": TOY_ROWS}),
        ("wrong width (400)", "/score", {"model": "flow-digits", "x": TOY_ROWS}),
        (
            f"{lacking} lacks kind {kind} (422)",
            "/score",
            {"model": lacking, "x": rows[lacking.split("-", 1)[1]], "kind": kind},
        ),
        (
            f"k>1 for log_prob on {with_log_prob} (400)",
            "/score",
            {"model": with_log_prob, "x": rows[with_log_prob.split("-", 1)[1]], "kind": "log_prob", "k": 4},
        ),
        (
            "value off the digit levels (400)",
            "/score",
            {"model": "flow-digits", "x": [[*digit_row[:-1], 17.0]]},
        ),
        ("non-integer digit (400)", "/score", {"model": "flow-digits", "x": [[*digit_row[:-1], 0.5]]}),
        ("png of 2-D data (400)", "/sample", {"model": "flow-8gaussians", "n": 2, "format": "png"}),
        ("n=0 (400)", "/sample", {"model": "flow-8gaussians", "n": 0}),
        ("unknown field (400)", "/sample", {"model": "flow-8gaussians", "n": 2, "colour": "red"}),
        ("too few rows for a test (400)", "/two_sample_test", {"model": "flow-8gaussians", "x": TOY_ROWS}),
    ]
    calls = [HttpCall(f"{path} {what}", "POST", path, body(payload)) for what, path, payload in cases]
    calls.append(HttpCall("/score body not JSON (400)", "POST", "/score", b"{not json"))
    return calls


# --- one root ------------------------------------------------------------------------------------


def run_root(
    root: Path, store: Path, work: Path, tag: str, plan: Plan | None
) -> tuple[Plan, dict[str, Answer]]:
    """Every answer of one root, keyed by request label; builds the plan if none is given."""
    tmp = work / f"tmp-{tag}"
    tmp.mkdir()
    env = child_env(root, store, tmp)
    started = time.perf_counter()
    files = check_imports(root, env)
    print(f"[{tag}] {root}: registry.cli imported from {files['registry.cli']}", flush=True)
    print(f"[{tag}]   services.service found at {files['services.service']}", flush=True)
    prefix = cli_prefix(root, env)
    print(f"[{tag}]   CLI: {' '.join(prefix)}", flush=True)
    answers: dict[str, Answer] = {}
    with running_server(root, prefix, env, work / f"server-{tag}.log") as server:
        pids = check_server_imports(server, root)
        ready = time.perf_counter() - started
        print(
            f"[{tag}]   server ready at {server.base} after {ready:.1f}s; processes {', '.join(pids)}",
            flush=True,
        )
        print(f"[{tag}]   ... each finds registry and services in {root}", flush=True)
        with httpx.Client(base_url=server.base, timeout=300) as client:
            if plan is None:
                models = client.get("/models")
                models.raise_for_status()
                rows_dir = work / "rows"
                rows_dir.mkdir()
                plan = build_plan(models.content, rows_dir)
            for call in plan.http:
                answers[call.label] = ask(client, call)
    print(
        f"[{tag}]   {len(plan.http)} HTTP answers; server stopped (exit {server.proc.returncode})", flush=True
    )
    # The CLI runs after the server has stopped: both would share the 2 cores otherwise.
    for call in plan.cli:
        done = subprocess.run([*prefix, *call.args], cwd=root, env=env, capture_output=True)
        answers[f"{call.label} [stdout]"] = Answer(done.returncode, done.stdout)
        # `sample` writes nothing to stderr unless it fails; score's stderr is its summary line.
        answers[f"{call.label} [stderr]"] = Answer(done.returncode, done.stderr)
    print(f"[{tag}]   {len(plan.cli)} CLI runs; {time.perf_counter() - started:.1f}s in all", flush=True)
    return plan, answers


# --- the model store -------------------------------------------------------------------------


def ensure_models(root: Path, store: Path, work: Path, epochs: int) -> None:
    """Train the demo models the store lacks, with ``root``'s CLI (few epochs: same models, not good ones)."""
    env = child_env(root, store, work)
    prefix = None
    for family, data in DEMO_MODELS:
        name = f"{family}-{data}"
        if (store / "models" / name / "latest").is_file():
            print(f"{name}: stored", flush=True)
            continue
        prefix = prefix or cli_prefix(root, env)
        start = time.perf_counter()
        cmd = [*prefix, "train", family, "--data", data, "--epochs", str(epochs), "--quiet"]
        done = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
        print(f"{done.stdout.strip()} ({time.perf_counter() - start:.0f}s)", flush=True)


# --- comparison -------------------------------------------------------------------------------


def first_difference(a: bytes, b: bytes, context: int = 60) -> str:
    if a == b:  # the status or the content type differs, not the bytes
        return f"bodies byte-identical ({len(a)} bytes)"
    at = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    lo = max(0, at - context)
    return (
        f"first difference at byte {at} (lengths {len(a)} and {len(b)}):\n"
        f"    A: {a[lo : at + context]!r}\n"
        f"    B: {b[lo : at + context]!r}"
    )


def compare(labels: list[str], a: dict[str, Answer], b: dict[str, Answer]) -> list[str]:
    """Print the table; return the labels whose answers differ."""
    width = max(len(label) for label in labels)
    print(f"\n{'request':<{width}}  {'status':>9}  {'bytes':>9}  identical")
    differ = []
    for label in labels:
        x, y = a[label], b[label]
        same = x == y
        status = str(x.status) if x.status == y.status else f"{x.status}/{y.status}"
        size = str(len(x.body)) if len(x.body) == len(y.body) else f"{len(x.body)}/{len(y.body)}"
        print(f"{label:<{width}}  {status:>9}  {size:>9}  {'yes' if same else 'NO'}")
        if not same:
            differ.append(label)
    return differ


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", type=Path, default=HERE, help="checkout A (default: this script's)")
    parser.add_argument("--compare-root", type=Path, required=True, help="checkout B")
    parser.add_argument(
        "--store", type=Path, help="a BENTOML_HOME to use (and fill); default: a temporary one"
    )
    parser.add_argument("--epochs", type=int, default=1, help="epochs when training the demo models")
    parser.add_argument("--keep", action="store_true", help="keep the temporary store and the server logs")
    args = parser.parse_args()
    roots = [args.root.resolve(), args.compare_root.resolve()]
    for root in roots:
        if not (root / "registry").is_dir():
            parser.error(f"{root} is not a genreg checkout (no registry/)")

    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="genreg-answers-"))
    store = args.store.resolve() if args.store else work / "store"
    store.mkdir(parents=True, exist_ok=True)
    print(f"store {store}; logs in {work}", flush=True)
    try:
        ensure_models(roots[0], store, work, args.epochs)
        trained = time.perf_counter()
        plan, first = run_root(roots[0], store, work, "A", None)
        _, second = run_root(roots[1], store, work, "B", plan)
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        print(f"(logs kept in {work})", file=sys.stderr)
        sys.exit(2)

    labels = [c.label for c in plan.http] + [
        f"{c.label} [{s}]" for c in plan.cli for s in ("stdout", "stderr")
    ]
    differ = compare(labels, first, second)
    print(f"\nA = {roots[0]}\nB = {roots[1]}")
    for label in differ[:10]:
        x, y = first[label], second[label]
        print(
            f"\n{label}: status {x.status} / {y.status}, content type {x.content_type!r} / {y.content_type!r}"
        )
        print("  " + first_difference(x.body, y.body))
    total = time.perf_counter() - started
    print(
        f"\nanswers: {len(labels)} compared, {len(labels) - len(differ)} byte-identical"
        f" ({total:.0f}s in all, {total - (trained - started):.0f}s after training)"
    )
    if args.keep or differ:
        print(f"kept {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    sys.exit(1 if differ else 0)


if __name__ == "__main__":
    main()
