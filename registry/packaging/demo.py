"""`make demo`: train the default models on embedded data (small budgets), then serve them."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

# (family, data, time budget in seconds): a few minutes on 2 cores in all.
DEFAULT_MODELS: tuple[tuple[str, str, int], ...] = (
    ("categorical", "digits", 0),
    ("gaussian", "digits", 0),
    ("flow", "digits", 120),
    ("vae", "digits", 60),
    ("flow", "8gaussians", 150),
    ("gan", "8gaussians", 90),
    ("autoregressive", "digits", 150),
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


def train_defaults(retrain: bool = False) -> list[str]:
    """Train each default model unless a version is already stored; return their names."""
    from registry.runtime.store import list_models

    stored = {m.name for m in list_models()}
    names = []
    for family, data, budget in DEFAULT_MODELS:
        name = f"{family}-{data}"
        names.append(name)
        if name in stored and not retrain:
            print(f"{name}: already stored (use --retrain for a new version)")
            continue
        cmd = [sys.executable, "-m", "registry.cli", "train", family, "--data", data]
        if budget:
            cmd += ["--time-budget", str(budget)]
        subprocess.run(cmd, check=True)
    return names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--retrain", action="store_true", help="train new versions even if stored")
    parser.add_argument("--no-serve", action="store_true", help="train only")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3000)
    args = parser.parse_args()
    print(f"model store: {os.environ.get('BENTOML_HOME', Path.home() / 'bentoml')}")
    train_defaults(args.retrain)
    grid = Path("grid.png")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "registry.cli",
            "sample",
            "flow-digits",
            "-n",
            "16",
            "--seed",
            "0",
            "--out",
            str(grid),
        ],
        check=True,
    )
    subprocess.run([sys.executable, "-m", "registry.cli", "list"], check=True)
    if args.no_serve:
        return
    print(CURL_EXAMPLES.format(base=f"http://{args.host}:{args.port}"), flush=True)
    os.execv(
        sys.executable,
        [sys.executable, "-m", "registry.cli", "serve", "--host", args.host, "--port", str(args.port)],
    )


if __name__ == "__main__":
    main()
