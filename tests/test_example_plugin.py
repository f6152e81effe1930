"""The separately packaged example plugin (examples/genreg-kde), installed with pip."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from servers import running_server

from registry.contract import hookspecs

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "genreg-kde"
DOC = ROOT / "docs" / "writing-a-plugin.md"


def test_every_hookspec_is_documented():
    text = DOC.read_text()
    specs = [
        name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction) if hasattr(fn, "genreg_spec")
    ]
    assert specs, "no hookspecs found"
    for name in specs:
        params = ", ".join(inspect.signature(getattr(hookspecs, name)).parameters)
        assert f"### `{name}({params})`" in text, f"hook {name} is not documented in {DOC.name}"


def _genreg(*args: str, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "registry.cli", *args], capture_output=True, text=True, env=env, cwd=ROOT
    )
    if check and proc.returncode:
        raise AssertionError(f"genreg {' '.join(args)}: {proc.stdout}\n{proc.stderr}")
    return proc


def _pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args], check=True)


@pytest.fixture()
def installed_example():
    """pip-installs the example plugin into the test environment; removes it afterwards."""
    _pip("install", "--no-deps", "--no-build-isolation", str(EXAMPLE))
    try:
        yield
    finally:
        _pip("uninstall", "-y", "genreg-kde")


@pytest.mark.slow
def test_installed_plugin_trains_serves_and_uninstalls_cleanly(installed_example, bentoml_home, tmp_path):
    listing = _genreg("plugins").stdout
    lines = {line.split()[0]: line for line in listing.splitlines()}
    assert "genreg-kde" in lines["kde"] and "genreg-kde" in lines["noise-mixture"]
    assert "flow" in lines  # the built-ins are untouched

    out = _genreg("train", "kde", "--data", "8gaussians", "-o", "eps=0.3", "--name", "kde-e2e", "--quiet")
    assert "saved kde-e2e:" in out.stdout

    with running_server(tmp_path / "server.log", timeout=90, GENREG_MODELS="kde-e2e") as server:
        base = server.base
        headers = {"content-type": "application/json"}
        sample = httpx.post(
            base + "/sample", content=json.dumps({"model": "kde-e2e", "n": 5, "seed": 1}), headers=headers
        )
        assert sample.status_code == 200 and np.array(sample.json()["samples"]).shape == (5, 2)
        score = httpx.post(
            base + "/score",
            content=json.dumps({"model": "kde-e2e", "x": [[0, 2.83], [0, 0]]}),
            headers=headers,
        )
        assert score.status_code == 200, score.text
        high, low = score.json()["scores"]
        assert score.json()["kind"] == "log_prob" and high > low  # a mode of 8gaussians beats the centre

    _pip("uninstall", "-y", "genreg-kde")
    try:
        assert "kde" not in _genreg("plugins").stdout.split()
        listing = _genreg("list").stdout
        assert "kde (unavailable)" in listing
        # Its stored graphs are still ONNX: sampling works without the plugin.
        assert _genreg("sample", "kde-e2e", "-n", "2", "--seed", "0").stdout.count("\n") == 2
    finally:
        _pip("install", "--no-deps", "--no-build-isolation", str(EXAMPLE))  # the fixture removes it


@pytest.mark.slow
def test_noise_mixture_likelihood_within_log_100_and_samples_mostly_noise(installed_example, trained):
    out = _genreg(
        "train", "noise-mixture", "--data", "digits", "-o", "base=flow-digits", "--name", "mix-e2e", "--quiet"
    )
    assert "saved mix-e2e:" in out.stdout
    from registry.runtime.models import LoadedModel
    from registry.runtime.store import get_model

    mix = get_model("mix-e2e")
    flow_bpd = trained["flow-digits"].metrics["test"]["bits_per_dim"]
    mix_bpd = mix.metrics["test"]["bits_per_dim"]
    # log(0.01 p + 0.99 q) >= log p - log 100: at most log2(100) / 64 bits/dim worse.
    assert flow_bpd <= mix_bpd <= flow_bpd + np.log2(100) / 64 + 0.02
    assert mix.metrics["test"]["two_sample"]["c2st"]["accuracy"] > 0.9  # the samples give it away
    x = LoadedModel(mix).sample(2000, seed=0)
    assert set(np.unique(x)) <= set(range(17))
