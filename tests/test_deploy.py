"""Deployment: the Bento (`genreg build`), what it ships and locks, and the execution provider.

The image itself is built and run by tests/test_image.py (`make image-test`).
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import yaml

from registry.packaging.bento import (
    BuildOptions,
    bento_config,
    build_bento,
    forbidden_requirements,
    select_models,
)
from registry.packaging.image import debian_mirror
from registry.runtime.models import LoadedModel
from registry.runtime.sessions import available_providers
from registry.runtime.store import get_model

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def bento(trained):
    return build_bento(BuildOptions(models=["flow-8gaussians", "gaussian-digits"]))


@pytest.mark.bento
@pytest.mark.slow
def test_bento_ships_the_models_and_serving_code_only(bento):
    tags = [get_model("flow-8gaussians").tag, get_model("gaussian-digits").tag]
    assert bento.models == sorted(tags)
    info = yaml.safe_load((bento.path / "bento.yaml").read_text())
    assert sorted(m["tag"] for m in info["models"]) == sorted(tags)
    src = bento.path / "src"
    shipped = {p.relative_to(src).as_posix() for p in src.rglob("*.py")}
    runtime = {p.relative_to(ROOT).as_posix() for p in (ROOT / "registry" / "runtime").glob("*.py")}
    assert {"services/service.py", "services/cache.py", "registry/__init__.py"} | runtime <= shipped
    # Nothing of genreg's but the service and the serving runtime: no plugins, no contract, no
    # training, export or evaluation pipeline, no CLI.
    assert {p.split("/")[0] for p in shipped} == {"services", "registry"}
    assert {p.rsplit("/", 1)[0] for p in shipped if p.startswith("registry/")} <= {
        "registry",
        "registry/runtime",
    }
    dockerfile = (bento.path / "env" / "docker" / "Dockerfile").read_text()
    assert "FROM genreg-base:bookworm-py3.11" in dockerfile and "build-essential" not in dockerfile


@pytest.mark.bento
@pytest.mark.slow
def test_bento_locks_serving_packages_without_torch(bento):
    locked = {
        line.split("==")[0].lower(): line.split("==")[1]
        for line in bento.requirements
        if "==" in line  # name==version lines
    }
    assert "torch" not in locked and forbidden_requirements(bento.requirements) == []
    assert not any(name.startswith(("torch", "nvidia-cu")) for name in locked)
    # The image runs the ONNX Runtime and numpy that the local service and its tests ran.
    assert locked["onnxruntime"] == metadata.version("onnxruntime")
    assert locked["numpy"] == metadata.version("numpy")
    assert "bentoml" in locked and "onnxruntime-gpu" not in locked


@pytest.mark.bento
@pytest.mark.slow
def test_bento_source_holds_every_module_the_service_imports(bento):
    # Imported from the Bento's src folder alone: a module missing from bentofile.yaml's
    # include list would be found in the repository instead, and named here.
    src = bento.path / "src"
    code = (
        "import json, sys, services.service\n"
        "mods = {n: getattr(m, '__file__', None) for n, m in sys.modules.items()\n"
        "        if n.split('.')[0] in ('registry', 'services', 'plugins')}\n"
        "print(json.dumps({'mods': mods, 'torch': 'torch' in sys.modules}))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=src,
        env={**os.environ, "PYTHONPATH": str(src)},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    outside = {n: f for n, f in out["mods"].items() if f and not f.startswith(str(src))}
    assert not outside, f"imported from outside the Bento: {outside}"
    assert not out["torch"]


@pytest.mark.slow
def test_default_models_are_the_newest_of_every_name(trained):
    tags = select_models(None)
    names = [t.split(":")[0] for t in tags]
    assert len(names) == len(set(names)) and {"flow-8gaussians", "gaussian-digits"} <= set(names)
    # flow-8gaussians has two versions (the second with a critic): the newest ships.
    assert get_model("flow-8gaussians").tag in tags


def test_bento_config_pins_local_versions_and_swaps_in_the_gpu_runtime():
    cpu = bento_config(BuildOptions(), ["m:1"])
    assert f"onnxruntime=={metadata.version('onnxruntime')}" in cpu["python"]["packages"]
    assert cpu["models"] == ["m:1"] and cpu["service"] == "services.service:Genreg"
    gpu = bento_config(BuildOptions(gpu=True, pin=False), [])
    assert "onnxruntime-gpu" in gpu["python"]["packages"]
    assert not any(p.startswith("onnxruntime==") or p == "onnxruntime" for p in gpu["python"]["packages"])
    # The image for replicas that pull their models from S3 carries s3fs, pinned like the rest.
    s3 = bento_config(BuildOptions(s3=True), [])
    assert f"s3fs=={metadata.version('s3fs')}" in s3["python"]["packages"]
    assert not any(p.startswith("s3fs") for p in cpu["python"]["packages"])


def test_forbidden_requirements_name_the_training_stack():
    lines = ["torch==2.13.0", "numpy==2.4.6", "nvidia-ml-py==13.0", "scikit_learn==1.5", "onnxscript==0.3"]
    assert forbidden_requirements(lines) == ["torch==2.13.0", "scikit_learn==1.5", "onnxscript==0.3"]


def test_cli_build_refuses_an_unknown_model(bentoml_home):
    proc = subprocess.run(
        [sys.executable, "-m", "registry.cli", "build", "--models", "no-such-model"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "no model named 'no-such-model'" in proc.stderr


def test_debian_mirror_from_deb822_and_one_line_sources(tmp_path):
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://security.example/debian-security\nSuites: bookworm-security\n\n"
        "Types: deb-src\nURIs: http://src.example/debian\nSuites: bookworm\n\n"
        "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\n"
    )
    assert debian_mirror("bookworm", tmp_path) == "http://mirror.example/debian"
    (tmp_path / "sources.list.d" / "debian.sources").unlink()
    (tmp_path / "sources.list").write_text(
        "deb http://security.example/debian-security bookworm-security main\n"
        "deb [arch=amd64] http://old.example/debian bookworm main\n"
    )
    assert debian_mirror("bookworm", tmp_path) == "http://old.example/debian"
    with pytest.raises(RuntimeError, match="no Debian trixie mirror"):
        debian_mirror("trixie", tmp_path)


def test_cuda_is_preferred_when_onnx_runtime_offers_it(monkeypatch):
    import onnxruntime as ort

    offered = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(ort, "get_available_providers", lambda: offered)
    assert available_providers() == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    assert available_providers() == ["CPUExecutionProvider"]


@pytest.mark.slow
def test_provider_reported_is_the_one_running(trained, caplog):
    from services.cache import ModelCache

    stored = get_model("gaussian-digits")
    assert LoadedModel(stored, providers=["CPUExecutionProvider"]).provider == "CPUExecutionProvider"
    import onnxruntime as ort

    # Asking for CUDA where ONNX Runtime has none is what onnxruntime-gpu does on a machine
    # without a GPU: the sessions fall back to the CPU, and that is what gets reported (with a
    # warning). Where CUDA really runs, it is reported, with no warning.
    cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    cache = ModelCache(providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    with caplog.at_level(logging.WARNING, logger="genreg.runtime"):
        loaded = cache.resolve(stored.tag)
    assert loaded.provider == ("CUDAExecutionProvider" if cuda else "CPUExecutionProvider")
    warned = "asked for CUDAExecutionProvider but runs on CPUExecutionProvider" in caplog.text
    assert warned != cuda


@pytest.mark.slow
def test_store_moves_between_homes_with_bentoml_export_and_import(trained, tmp_path):
    """The object-storage route of docs/deploy.md, with a file for the bucket."""
    tag = get_model("gaussian-digits").tag
    archive = tmp_path / "gaussian-digits.bentomodel"
    bentoml = [sys.executable, "-m", "bentoml", "models"]
    subprocess.run([*bentoml, "export", tag, str(archive)], check=True, capture_output=True)
    home = tmp_path / "other-home"
    env = {**os.environ, "BENTOML_HOME": str(home)}
    subprocess.run([*bentoml, "import", str(archive)], check=True, capture_output=True, env=env)
    # get_model recomputes every artifact's sha256, so a damaged transfer would be refused.
    code = "from registry.runtime.store import get_model; print(get_model('gaussian-digits').tag)"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, env=env)
    assert out.stdout.strip() == tag


def test_onnxruntime_builds_are_separate_extras():
    # onnxruntime and onnxruntime-gpu install the same module: one environment gets one.
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

    def names(reqs: list[str]) -> set[str]:
        return {re.match(r"[A-Za-z0-9._-]+", r).group(0).lower() for r in reqs}

    assert not names(project["dependencies"]) & {"onnxruntime", "onnxruntime-gpu"}
    extras = {k: names(v) for k, v in project["optional-dependencies"].items()}
    assert "onnxruntime" in extras["cpu"] and "onnxruntime-gpu" in extras["gpu"]
    assert all(not {"onnxruntime", "onnxruntime-gpu"} <= deps for deps in extras.values())
