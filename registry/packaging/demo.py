"""`make demo`: serve the default models on embedded data within a minute, training them as it goes.

The baselines train in seconds and are served first; the other families train one after the
other (small budgets) while the service runs, and each is served as soon as it is stored (the
live registry, services.cache). A second run reuses the stored models and serves at once.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple


class DemoModel(NamedTuple):
    """One of the demo's models: a family on a data set for a time budget in seconds (0: it fits
    in closed form), trained on the data's classes where ``conditional``."""

    family: str
    data: str
    budget: int
    conditional: bool = False

    @property
    def name(self) -> str:
        return f"{self.family}-{self.data}" + ("-cond" if self.conditional else "")


# A few minutes on 2 cores in all. The conditional categorical (a table per digit) trains in a
# second, so the gallery's class picker and classify answer from the demo's first minute.
DEFAULT_MODELS: tuple[DemoModel, ...] = (
    DemoModel("categorical", "digits", 0),
    DemoModel("gaussian", "digits", 0),
    DemoModel("categorical", "digits", 0, conditional=True),
    DemoModel("flow", "digits", 120),
    DemoModel("vae", "digits", 60),
    DemoModel("flow", "8gaussians", 150),
    DemoModel("gan", "8gaussians", 90),
    DemoModel("autoregressive", "digits", 150),
    DemoModel("diffusion", "digits", 150),
)


CURL_EXAMPLES = """
The service is starting; once it is ready, try:

  curl -s {base}/readyz
  curl -s {base}/models
  curl -s -X POST {base}/sample -H 'content-type: application/json' \\
       -d '{{"model": "flow-8gaussians", "n": 4, "seed": 0}}'
  curl -s -X POST {base}/sample -H 'content-type: application/json' \\
       -d '{{"model": "flow-digits", "n": 16, "seed": 0, "format": "png"}}' \\
       | python3 -c 'import sys, json, base64; sys.stdout.buffer.write(base64.b64decode(json.load(sys.stdin)["png"]))' > samples.png
  curl -s -X POST {base}/score -H 'content-type: application/json' \\
       -d '{{"model": "flow-8gaussians", "x": [[0, 2.83], [0, 0]]}}'
  curl -s -X POST {base}/score -H 'content-type: application/json' \\
       -d '{{"model": "categorical-digits", "x": [[0,0,5,13,9,1,0,0,0,0,13,15,10,15,5,0,0,3,15,2,0,11,8,0,0,4,12,0,0,8,8,0,0,5,8,0,0,9,8,0,0,4,11,0,1,12,7,0,0,2,14,5,10,12,0,0,0,0,6,13,10,0,0,0]]}}'
  curl -s {base}/metrics | grep genreg_
"""


def _train(model: DemoModel, extra: list[str]) -> None:
    cmd = [sys.executable, "-m", "registry.cli", "train", model.family, "--data", model.data, *extra]
    cmd += ["--name", model.name] + (["--conditional"] if model.conditional else [])
    if model.budget:
        cmd += ["--time-budget", str(model.budget)]
    subprocess.run(cmd, check=True)


def train_defaults(
    retrain: bool = False,
    models: tuple[DemoModel, ...] = DEFAULT_MODELS,
    extra: list[str] | None = None,
) -> list[str]:
    """Train each default model unless a version is already stored; return the names trained."""
    from registry.runtime.store import list_models

    stored = {m.name for m in list_models()}
    trained = []
    for model in models:
        if model.name in stored and not retrain:
            print(f"{model.name}: already stored (use --retrain for a new version)", flush=True)
            continue
        _train(model, extra or [])
        trained.append(model.name)
    return trained


def _served(base: str) -> set[str] | None:
    import httpx

    try:
        return {m["name"] for m in httpx.get(base + "/models", timeout=5).json()["models"]}
    except (httpx.HTTPError, ValueError, KeyError):
        return None


def _wait_served(base: str, server: subprocess.Popen, names: set[str], timeout: float = 120) -> bool:
    """Until the service lists ``names`` (it picks new versions up from the store by itself)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and server.poll() is None:
        served = _served(base)
        if served is not None and names <= served:
            return True
        time.sleep(0.5)
    return False


def _status(names: list[str], served: set[str]) -> str:
    ready = [n for n in names if n in served]
    pending = [n for n in names if n not in served]
    line = f"ready ({len(ready)}/{len(names)}): {', '.join(ready) or '-'}"
    return line + (f"; still training: {', '.join(pending)}" if pending else "")


def _grid(out: Path) -> None:
    cmd = [sys.executable, "-m", "registry.cli", "sample", "flow-digits", "-n", "16", "--seed", "0"]
    subprocess.run([*cmd, "--out", str(out)], check=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--retrain", action="store_true", help="train new versions even if stored")
    parser.add_argument("--no-serve", action="store_true", help="train only")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3000)
    parser.add_argument("--epochs", type=int, help="cap every model's epochs (a quick smoke run)")
    parser.add_argument("--exit-when-trained", action="store_true", help="stop serving once all are trained")
    args = parser.parse_args(argv)
    print(f"model store: {os.environ.get('BENTOML_HOME', Path.home() / 'bentoml')}", flush=True)
    extra = ["--epochs", str(args.epochs)] if args.epochs else []
    # The models that train in seconds first, so the service answers within a minute; the
    # rest train while it serves, and the live registry serves each one as it is stored.
    quick = tuple(m for m in DEFAULT_MODELS if m.budget == 0)
    slow = tuple(sorted((m for m in DEFAULT_MODELS if m.budget != 0), key=lambda m: m.budget))
    if args.no_serve:
        train_defaults(args.retrain, DEFAULT_MODELS, extra)
        _grid(Path("grid.png"))
        return
    names = [m.name for m in DEFAULT_MODELS]
    train_defaults(args.retrain, quick, extra)
    base = f"http://{args.host}:{args.port}"
    cmd = [sys.executable, "-m", "registry.cli", "serve", "--host", args.host, "--port", str(args.port)]
    server = subprocess.Popen(cmd)
    # A TERM (e.g. from a supervisor) unwinds like Ctrl-C, so the service is stopped with us.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        quick_names = {m.name for m in quick}
        if not _wait_served(base, server, quick_names):
            raise SystemExit(f"the service did not come up on {base}")
        print(CURL_EXAMPLES.format(base=base), flush=True)
        print(_status(names, _served(base) or set()), flush=True)
        for model in slow:
            if not train_defaults(args.retrain, (model,), extra):
                continue  # already stored and served
            if not _wait_served(base, server, {model.name}):
                print(f"{model.name} was stored but is not served: see the service's log", flush=True)
            print(_status(names, _served(base) or set()), flush=True)
        _grid(Path("grid.png"))
        print("all trained; wrote grid.png (16 samples of flow-digits)", flush=True)
        if not args.exit_when_trained:
            server.wait()
    except KeyboardInterrupt:
        pass
    finally:
        if server.poll() is None:
            server.terminate()
            server.wait(timeout=30)


if __name__ == "__main__":
    main()
