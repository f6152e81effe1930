"""The suite's shared models, trained once per test run and copied into each test process's store.

Training them was the suite's largest single wait (134 s, one model after another with two
torch threads). The small networks barely use a second thread, so two processes with one thread
each train them side by side, longest first. Under pytest-xdist every worker needs them in its
own private store: the first to arrive trains them into a folder shared by the run (keyed by
xdist's test-run id, under a file lock), and every worker copies the finished store.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

FIXTURES = Path(__file__).resolve().parent / "fixture_plugins"

# (family, data, epochs, options), longest first (measured, single-threaded): the pool's two
# processes then finish together.
PLAN: list[tuple[str, str, int | None, dict[str, Any]]] = [
    ("gan", "8gaussians", 30, {}),
    ("flow", "digits", 40, {"name": "flowvd-digits", "dequantization": "variational"}),
    ("autoregressive", "digits", 8, {}),
    # The 2-D flow with its default spline couplings: 12 epochs reach KL 0.05 in 18 s, where
    # affine couplings took 200 epochs and 95 s to reach 0.1 (tests/test_dequantization.py
    # trains a small affine one).
    ("flow", "8gaussians", 12, {}),
    ("flow", "digits", 40, {}),
    ("autoregressive", "8gaussians", 30, {}),
    ("vae", "digits", 30, {}),
    # A diffusion small enough to train and sample in seconds: tests check its contract and its
    # serving (steps, estimates), benchmarks/diffusion.py its quality.
    ("diffusion", "digits", 1, {"channels": 16, "blocks": 1}),
    ("categorical", "digits", None, {}),
    # p(x|y) per class: the exact reference of a conditional model (tests/test_conditional.py).
    ("categorical", "digits", None, {"name": "categorical-digits-cond", "conditional": True}),
    # A conditional bound family: its marginal and its classifier come from log importance weights.
    ("vae", "digits", 10, {"name": "vae-digits-cond", "conditional": True}),
    ("gaussian", "digits", None, {}),
    # A poor model (independent pixels) for a critic (conftest): a separate name keeps
    # gaussian-digits itself without a discriminator.
    ("gaussian", "digits", None, {"name": "gaussian-digits-critic"}),
]


def _stored(home: str) -> None:
    os.environ["BENTOML_HOME"] = home  # before bentoml is imported in this (pool) process
    import torch

    torch.set_num_threads(1)


def train(family: str, data: str, epochs: int | None, options: dict[str, Any]) -> Any:
    """Train ``family`` on ``data`` with the suite's seed into the current store (StoredModel)."""
    from registry.contract.family import TrainControl
    from registry.contract.loading import get_plugins
    from registry.datasets import load_dataset
    from registry.pipeline.train import train_and_store

    fam = get_plugins().get(family)
    return train_and_store(
        fam,
        load_dataset(data, conditional=options.get("conditional", False)),
        fam.Config(**{k: v for k, v in options.items() if k not in ("name", "conditional")}),
        TrainControl(seed=0, epochs=epochs, progress=False),
        name=options.get("name"),
        plugin={"name": "test", "distribution": "genreg"},
    )


def train_one(
    home: str, family: str, data: str, epochs: int | None, options: dict[str, Any]
) -> tuple[str, str]:
    """Train one model into the store at ``home`` (in a pool process); (its key, its tag)."""
    _stored(home)
    return options.get("name", f"{family}-{data}"), train(family, data, epochs, options).tag


def fixture_family(home: str, module: str, family: str, data: str) -> tuple[str, str]:
    """Store a model of a fixture plugin's family (tests/fixture_plugins) trained on ``data``."""
    _stored(home)
    import importlib.util
    import sys

    from registry.contract.family import TrainControl
    from registry.datasets import load_dataset
    from registry.pipeline.train import train_and_store

    spec = importlib.util.spec_from_file_location(f"genreg_fixture_{module}", FIXTURES / f"{module}.py")
    plugin = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plugin)
    fam = getattr(plugin, family)()
    name = f"{fam.name}-{Path(data).stem}"
    stored = train_and_store(fam, load_dataset(data), fam.Config(), TrainControl(progress=False), name=name)
    return name, stored.tag


def critic(home: str, ref: str, steps: int, key: str) -> tuple[str, str]:
    """A new version of ``ref`` with a critic (registry.pipeline.critic)."""
    _stored(home)
    from registry.pipeline.critic import attach_critic

    return key, attach_critic(ref, steps=steps).tag


def small_data(folder: Path) -> tuple[Path, Path]:
    """ar-small (3 dimensions with 4 levels, each depending on the one before: small enough to
    enumerate) and a 2-D blob for the fixture family ``counted``."""
    rng = np.random.default_rng(0)
    first = rng.integers(0, 4, 3000)
    second = (first + rng.integers(0, 2, 3000)) % 4
    third = (second * rng.integers(0, 2, 3000)) % 4
    small, blob = folder / "ar-small.npy", folder / "blob.npy"
    np.save(small, np.stack([first, second, third], 1))
    np.save(blob, rng.normal([1.0, -2.0], [0.5, 2.0], (400, 2)))
    return small, blob


def train_all(home: Path) -> dict[str, str]:
    """Every shared model trained into the store at ``home``, two at a time: key -> tag."""
    small, blob = small_data(Path(tempfile.mkdtemp(prefix="genreg-fixture-data-")))
    where = str(home)
    tags: dict[str, str] = {}
    with ProcessPoolExecutor(2, mp_context=get_context("spawn")) as pool:
        jobs = [pool.submit(train_one, where, *job) for job in PLAN]
        # 12 epochs learn ar-small's structure (each impossible configuration below 1e-4): 10 s.
        jobs.append(pool.submit(train_one, where, "autoregressive", str(small), 12, {"name": "ar-small"}))
        # A sampler whose step count may be chosen (1..16) and a bound that supports the average
        # only (the fixture family `counted`): the fuzzers, the V2 checks and the published
        # document meet both.
        jobs.append(pool.submit(fixture_family, where, "counted_plugin", "CountedFamily", str(blob)))
        tags.update(job.result() for job in jobs)
        critics = [
            # A newer version of flow-8gaussians with a critic: the server serves it as the newest.
            pool.submit(critic, where, "flow-8gaussians", 1500, "flow-8gaussians+critic"),
            # 300 steps suffice: the independent-pixel model's samples are far from digits.
            pool.submit(critic, where, "gaussian-digits-critic", 300, "gaussian-digits-critic"),
        ]
        tags.update(job.result() for job in critics)
    return tags


def shared_store(home: Path) -> dict[str, str]:
    """The run's shared models in the store at ``home`` (key -> tag): trained once per test run
    (by the first process to arrive, under xdist), copied by the others."""
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    if run is None:
        return train_all(home)
    shared = Path(tempfile.gettempdir()) / f"genreg-fixture-models-{run}"
    shared.mkdir(exist_ok=True)
    manifest = shared / "manifest.json"
    with open(shared / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not manifest.exists():
            store = shared / "home"
            store.mkdir(exist_ok=True)
            tags = train_all(store)
            manifest.write_text(json.dumps(tags))
    tags = json.loads(manifest.read_text())
    shutil.copytree(shared / "home" / "models", home / "models", dirs_exist_ok=True)
    return tags
