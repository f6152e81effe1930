"""The plugin system: built-ins through the hooks, entry points, and failures reported by name."""

from __future__ import annotations

import subprocess
import sys

import pytest

from registry import Capability, Family
from registry.contract.loading import FamilyError, load_plugins, validate_family


def test_builtin_families_register_through_hooks():
    reg = load_plugins(include_entry_points=False)
    assert {"flow", "gaussian", "categorical"} <= set(reg.families)
    assert reg.errors == []
    flow = reg.families["flow"]
    assert flow.distribution == "genreg" and flow.plugin == "plugins.flow"
    assert {Capability.SAMPLE, Capability.BOUND, Capability.LOG_PROB} <= flow.family.capabilities


def test_fixture_plugins_loaded_and_failures_reported_by_name(fixture_site):
    reg = load_plugins()
    assert "box" in reg.families, reg.errors
    assert reg.families["box"].distribution == "genreg-fixtures"
    errors = {e.plugin: e.error for e in reg.errors}
    assert "broken" in errors and "broken on purpose" in errors["broken"]
    assert "misspelled" in errors and "register_familys" in errors["misspelled"]
    assert "duplicate" in errors and "already registered" in errors["duplicate"]
    assert "liar" in errors and "missing log_prob" in errors["liar"]
    # Every other family keeps working, and the built-in 'flow' is not replaced.
    assert reg.families["flow"].plugin == "plugins.flow"
    assert {"flow", "gaussian", "categorical", "box"} <= set(reg.families)


def test_unknown_family_lists_available_and_broken(fixture_site):
    reg = load_plugins()
    with pytest.raises(FamilyError, match=r"available: .*box.*flow.*broken"):
        reg.get("nope")


def test_validate_family_refuses_bad_declarations():
    class NoName(Family):
        capabilities = frozenset({Capability.SAMPLE})

    with pytest.raises(FamilyError, match="name"):
        validate_family(NoName)

    class NotAFamily:
        name = "x"

    with pytest.raises(FamilyError, match="subclass"):
        validate_family(NotAFamily)

    class Claims(Family):
        name = "claims"
        capabilities = frozenset({Capability.BOUND, Capability.SAMPLE})

        def train(self, data, config, control):
            return None

        def sample(self, model, noise):
            return None

        def export(self, model, directory):
            return []

    with pytest.raises(FamilyError, match="missing bound"):
        validate_family(Claims)


def test_cli_plugins_lists_capabilities_and_distribution(fixture_site):
    out = subprocess.run(
        [sys.executable, "-m", "registry.cli", "plugins"], capture_output=True, text=True, check=True
    )
    lines = {line.split()[0]: line for line in out.stdout.splitlines()}
    assert "bound,decode,encode,log_prob,sample" in lines["flow"] and "genreg" in lines["flow"]
    assert "genreg-fixtures" in lines["box"]
    assert "failed: broken (genreg-fixtures)" in out.stderr
    assert "Traceback" not in out.stderr


def test_a_third_party_step_loop_sampler_trains_checks_and_samples(fixture_site, check_family, tmp_path):
    import itertools

    import numpy as np
    from stepper_plugin import StepperFamily

    from registry.datasets import load_dataset
    from registry.runtime.models import LoadedModel
    from registry.runtime.scoring import score

    rng = np.random.default_rng(0)
    walk = np.cumsum(rng.integers(0, 2, (600, 4)), axis=1) % 3  # each step stays or moves up one
    np.save(tmp_path / "walk.npy", walk)
    stored = check_family(
        StepperFamily, load_dataset(str(tmp_path / "walk.npy")), epochs=None, smoothing=1e-6
    )
    sampler = stored.graph("sampler")
    assert sampler.loop is not None and sampler.loop.steps == 4
    assert stored.meta["parity"]["sampler_mismatch_share"] == 0.0
    loaded = LoadedModel(stored)
    a, b = loaded.sample(50, seed=1), loaded.sample(50, seed=1)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, loaded.sample(50, seed=2))
    # Samples follow the chain: each step stays or moves up one level (mod 3).
    assert np.all(np.isin((np.diff(a, axis=1) % 3), (0, 1)))
    configs = np.array(list(itertools.product(range(3), repeat=4)), dtype=np.float32)
    assert np.exp(score(loaded, configs, "log_prob").scores).sum() == pytest.approx(1.0, abs=1e-5)


STORE_PROBE = """
from registry.runtime.store import list_models, save_model


def save(name, tmp_path):
    (tmp_path / name).mkdir()
    (tmp_path / name / "file.txt").write_text(name)
    save_model(name, tmp_path / name, {"family": "none", "data": {"name": "none"}, "graphs": []})


def test_1_the_session_store(tmp_path):
    save("outside", tmp_path)
    assert [m.name for m in list_models()] == ["outside"]


def test_2_a_private_store(genreg_store, tmp_path):
    assert list_models() == []
    save("inside", tmp_path)
    assert [m.name for m in list_models()] == ["inside"]


def test_3_the_session_store_again():
    assert [m.name for m in list_models()] == ["outside"]
"""


def test_genreg_store_fixture_is_private_and_gives_the_session_store_back(tmp_path):
    """The fixture genreg ships for plugin authors (pytest11), in a pytest run of its own: a
    store already in use must be swapped for an empty one, and restored after the test."""
    import os

    (tmp_path / "test_probe.py").write_text(STORE_PROBE)
    env = dict(os.environ, BENTOML_HOME=str(tmp_path / "session-home"))
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_probe.py"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    assert proc.returncode == 0 and "3 passed" in proc.stdout, proc.stdout + proc.stderr
