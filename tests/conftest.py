"""Shared fixtures: a private model store, trained models, and fixture plugins on entry points."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

# The store lives in BentoML's home; point it at a private folder before bentoml is used.
_HOME = tempfile.mkdtemp(prefix="genreg-test-home-")
os.environ["BENTOML_HOME"] = _HOME
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixture_plugins"

# Budgets small enough for CI's 2 cores, large enough for the checks the tests make.
TEST_EPOCHS = {
    "flow-digits": 40,
    "flowvd-digits": 40,
    "vae-digits": 30,
    "flow-8gaussians": 12,
    "gan-8gaussians": 30,
    "autoregressive-digits": 8,
    "autoregressive-8gaussians": 30,
}


@pytest.fixture(scope="session")
def bentoml_home() -> Path:
    return Path(_HOME)


def _train(family: str, data: str, epochs: int | None = None, **options):
    import torch

    from registry.contract.family import TrainControl
    from registry.contract.loading import get_plugins
    from registry.datasets import load_dataset
    from registry.pipeline.train import train_and_store

    torch.set_num_threads(2)
    fam = get_plugins().get(family)
    return train_and_store(
        fam,
        load_dataset(data),
        fam.Config(**{k: v for k, v in options.items() if k != "name"}),
        TrainControl(seed=0, epochs=epochs, progress=False),
        name=options.get("name"),
        plugin={"name": "test", "distribution": "genreg"},
    )


@pytest.fixture(scope="session")
def train_model(bentoml_home):
    """train_model(family, data, epochs, **options) -> StoredModel, into the private store."""
    return _train


@pytest.fixture(scope="session")
def trained(bentoml_home):
    """The default models, trained once per test session into the private store."""
    models = {}
    for family, data in [
        ("categorical", "digits"),
        ("gaussian", "digits"),
        ("flow", "digits"),
        ("vae", "digits"),
        ("flow", "8gaussians"),
        ("gan", "8gaussians"),
    ]:
        name = f"{family}-{data}"
        # The 2-D flow with its default spline couplings: 12 epochs reach KL 0.05 in 18 s, where
        # affine couplings took 200 epochs and 95 s to reach 0.1 (tests/test_dequantization.py
        # trains a small affine one).
        models[name] = _train(family, data, TEST_EPOCHS.get(name))
    # The same flow with variational dequantisation and the same epochs, to compare bounds.
    models["flowvd-digits"] = _train(
        "flow", "digits", TEST_EPOCHS["flowvd-digits"], name="flowvd-digits", dequantization="variational"
    )
    for data in ("digits", "8gaussians"):
        name = f"autoregressive-{data}"
        models[name] = _train("autoregressive", data, TEST_EPOCHS[name])
    # A diffusion small enough to train and sample in seconds: tests check its contract and
    # its serving (steps, estimates), benchmarks/diffusion.py its quality.
    models["diffusion-digits"] = _train("diffusion", "digits", 1, channels=16, blocks=1)
    # 3 dimensions with 4 levels, each depending on the one before: small enough to enumerate.
    rng = np.random.default_rng(0)
    first = rng.integers(0, 4, 3000)
    second = (first + rng.integers(0, 2, 3000)) % 4
    third = (second * rng.integers(0, 2, 3000)) % 4
    small = Path(tempfile.mkdtemp(prefix="genreg-ar-small-")) / "ar-small.npy"
    np.save(small, np.stack([first, second, third], 1))
    # 12 epochs learn the structure (each impossible configuration below 1e-4): 10 s, where 40 took 29.
    models["ar-small"] = _train("autoregressive", str(small), 12, name="ar-small")
    # A sampler whose step count may be chosen (1..16) and a bound that supports the average
    # only (the fixture family `counted`, stored in a fraction of a second): the fuzzers, the V2
    # checks and the published document meet both.
    models["counted-blob"] = _fixture_family("counted_plugin", "CountedFamily", "blob", rng, small.parent)
    from registry.pipeline.critic import attach_critic

    # A newer version of flow-8gaussians with a critic: the server serves it as the newest.
    models["flow-8gaussians+critic"] = attach_critic("flow-8gaussians", steps=1500)
    # A poor model (independent pixels) with a critic: the likelihood-free checks must tell it
    # from digits. A separate name keeps gaussian-digits itself without a discriminator; 300
    # steps suffice because its samples are far from digits.
    _train("gaussian", "digits", name="gaussian-digits-critic")
    models["gaussian-digits-critic"] = attach_critic("gaussian-digits-critic", steps=300)
    return models


def _fixture_family(module: str, family: str, name: str, rng: np.random.Generator, folder: Path):
    """Store a model of a fixture plugin's family (tests/fixture_plugins) trained on a 2-D blob."""
    import importlib.util

    from registry.contract.family import TrainControl
    from registry.datasets import load_dataset
    from registry.pipeline.train import train_and_store

    spec = importlib.util.spec_from_file_location(f"genreg_fixture_{module}", FIXTURES / f"{module}.py")
    plugin = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plugin)
    fam = getattr(plugin, family)()
    data = folder / f"{name}.npy"
    np.save(data, rng.normal([1.0, -2.0], [0.5, 2.0], (400, 2)))
    return train_and_store(
        fam, load_dataset(str(data)), fam.Config(), TrainControl(progress=False), name=f"{fam.name}-{name}"
    )


@pytest.fixture(scope="session")
def server_process(trained, tmp_path_factory):
    """The real service (`genreg serve`, 2 workers) on a free loopback port (tests/servers.py).

    Two-sample tests are capped at 400 rows here (the tests send at most 300), and the deadline is
    10 s, so that each model's published row limits are what it runs in 5 s: the published
    schema follows both, so the schema-driven fuzzers' boundary cases stay cheap (the largest
    requests took 109 of schemathesis's 178 s at a 20-s deadline).

    It serves the session's trained models only (GENREG_MODELS): the store also gathers what
    other tests train, and the schema-driven fuzzers' work grows with every served model (their
    run took 316 s with the ~40 models of a whole session, 160 s with these), so the suite's time
    does not depend on which tests ran first."""
    from servers import running_server

    log_path = tmp_path_factory.mktemp("server") / "server.log"
    try:
        with running_server(
            log_path,
            workers=2,
            GENREG_MAX_ROWS="5000",
            GENREG_MAX_N="2000",
            GENREG_MAX_TWO_SAMPLE="400",
            BENTOML_CONFIG_OPTIONS="services.genreg.traffic.timeout=10",
            GENREG_MODELS=",".join(sorted({stored.name for stored in trained.values()})),
        ) as srv:
            yield srv
    except RuntimeError as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="session")
def server(server_process):
    """(httpx client, log path) of the shared real service."""
    import httpx

    with httpx.Client(base_url=server_process.base, timeout=30) as client:
        yield client, server_process.log_path


def write_dist(site: Path, dist: str, entry_points: dict[str, str]) -> None:
    """A minimal installed distribution (a .dist-info folder) exposing `genreg` entry points."""
    info = site / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    lines = "\n".join(f"{name} = {target}" for name, target in entry_points.items())
    (info / "entry_points.txt").write_text(f"[genreg]\n{lines}\n")


@pytest.fixture()
def fixture_site(tmp_path, monkeypatch):
    """Installs the fixture plugins as entry points for this test (and its subprocesses)."""
    site = tmp_path / "site"
    site.mkdir()
    write_dist(
        site,
        "genreg-fixtures",
        {
            "box": "box_plugin",
            "stepper": "stepper_plugin",
            "broken": "broken_plugin",
            "misspelled": "misspelled_plugin",
            "duplicate": "duplicate_plugin",
            "liar": "liar_plugin",
        },
    )
    for path in (str(site), str(FIXTURES)):
        monkeypatch.syspath_prepend(path)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(site), str(FIXTURES), str(ROOT)]))
    import importlib

    importlib.invalidate_caches()
    yield site
    for mod in (
        "box_plugin",
        "stepper_plugin",
        "broken_plugin",
        "misspelled_plugin",
        "duplicate_plugin",
        "liar_plugin",
    ):
        sys.modules.pop(mod, None)
