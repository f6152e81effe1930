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
    ("flow", "8gaussians", 150),
)


def train_defaults(retrain: bool = False) -> list[str]:
    """Train each default model unless a version is already stored; return their names."""
    from registry.store import list_models

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
    os.execv(
        sys.executable,
        [sys.executable, "-m", "registry.cli", "serve", "--host", args.host, "--port", str(args.port)],
    )


if __name__ == "__main__":
    main()
