"""Shared fixtures: a private model store, trained models, and fixture plugins on entry points."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest

# The store lives in BentoML's home; point it at a private folder before bentoml is used.
_HOME = tempfile.mkdtemp(prefix="genreg-test-home-")
os.environ["BENTOML_HOME"] = _HOME
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")

# Under pytest-xdist two test processes share the two cores: one torch thread each (and in the
# processes they start), where two each spun against each other (a 12-s test took 126 s).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
TORCH_THREADS = 1 if os.environ.get("PYTEST_XDIST_WORKER") else 2

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixture_plugins"


@pytest.fixture(scope="session")
def bentoml_home() -> Path:
    return Path(_HOME)


def _train(family: str, data: str, epochs: int | None = None, **options):
    import torch
    from fixture_models import train

    torch.set_num_threads(TORCH_THREADS)
    return train(family, data, epochs, options)


@pytest.fixture(scope="session")
def train_model(bentoml_home):
    """train_model(family, data, epochs, **options) -> StoredModel, into the private store."""
    return _train


@pytest.fixture(scope="session")
def trained(bentoml_home):
    """The shared models, trained once per test run into the private store (tests/fixture_models.py)."""
    from fixture_models import shared_store

    from registry.runtime.store import get_model

    return {key: get_model(tag) for key, tag in shared_store(bentoml_home).items()}


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
