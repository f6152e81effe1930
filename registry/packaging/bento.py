"""`genreg build`: the Bento (service code, serving modules, models, locked serving deps).

It wraps `bentoml build`: bentofile.yaml is the template, and this module fills in the models
to ship and pins the serving packages to the versions installed here, then runs BentoML in a
subprocess (so the service is imported there, not into the CLI process).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

from registry.runtime.store import ModelNotFound, StoreError, get_model, list_models

ROOT = Path(__file__).resolve().parents[2]
BENTOFILE = ROOT / "bentofile.yaml"
# Packages that must never reach the serving image: the training stack.
FORBIDDEN = frozenset({"torch", "torchvision", "torchaudio", "triton", "onnxscript", "scikit-learn", "scipy"})
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*")


class BuildError(RuntimeError):
    """The Bento could not be built; the message says why."""


class BuildOptions(BaseModel):
    """What goes into the Bento."""

    model_config = ConfigDict(extra="forbid")

    models: list[str] | None = Field(
        None, description="name or name:version each; None = newest version of every stored name"
    )
    gpu: bool = Field(False, description="onnxruntime-gpu instead of onnxruntime")
    s3: bool = Field(False, description="add s3fs: the service pulls from GENREG_MODELS_FROM=s3://...")
    pin: bool = Field(True, description="pin the serving packages to the versions installed here")
    version: str | None = None


class BuildResult(BaseModel):
    tag: str
    path: Path
    models: list[str]
    seconds: float
    requirements: list[str]


def select_models(refs: list[str] | None) -> list[str]:
    """Full tags of the models to ship: each ref resolved, or the newest version of every name."""
    if refs is None:
        newest: dict[str, str] = {}
        for stored in list_models():  # newest first within each name
            newest.setdefault(stored.name, stored.tag)
        return sorted(newest.values())
    tags = []
    for ref in refs:
        try:
            tags.append(get_model(ref).tag)
        except (ModelNotFound, StoreError) as exc:
            raise BuildError(str(exc)) from None
    return sorted(set(tags))


def _pinned(package: str) -> str:
    name = _NAME.match(package)
    if name is None or name.group(0) != package:
        return package  # already constrained (or a URL): leave it as written
    try:
        return f"{package}=={metadata.version(package)}"
    except metadata.PackageNotFoundError:
        return package


def bento_config(options: BuildOptions, models: list[str]) -> dict[str, Any]:
    """bentofile.yaml with the models and (pinned) packages filled in."""
    config = yaml.safe_load(BENTOFILE.read_text())
    packages = list(config["python"]["packages"])
    if options.gpu:
        packages = ["onnxruntime-gpu" if p == "onnxruntime" else p for p in packages]
    if options.s3:
        packages.append("s3fs")
    if options.pin:
        packages = [_pinned(p) for p in packages]
    config["python"]["packages"] = packages
    config["models"] = models
    return config


def _bento_env() -> dict[str, str]:
    env = dict(os.environ, BENTOML_DO_NOT_TRACK="True")
    # Local wheel folders and file:// indexes configured for this machine's pip would be
    # written into the lock file (BentoML emits index URLs and find-links) and mean nothing in
    # the image.
    env.pop("PIP_FIND_LINKS", None)
    env["PIP_CONFIG_FILE"] = os.devnull
    root = str(ROOT)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


def build_bento(options: BuildOptions | None = None) -> BuildResult:
    """Run `bentoml build` on the filled-in bentofile; the Bento lands in BENTOML_HOME."""
    options = options or BuildOptions()
    models = select_models(options.models)
    config = bento_config(options, models)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="genreg-bento-") as tmp:
        bentofile = Path(tmp) / "bentofile.yaml"
        bentofile.write_text(yaml.safe_dump(config, sort_keys=False))
        cmd = [sys.executable, "-m", "bentoml", "build", "-f", str(bentofile), str(ROOT), "--output", "tag"]
        if options.version:
            cmd += ["--version", options.version]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=_bento_env(), cwd=ROOT)
    seconds = time.perf_counter() - start
    found = re.search(r"__tag__:(\S+)", proc.stdout)
    if proc.returncode != 0 or found is None:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-15:]
        raise BuildError("bentoml build failed:\n" + "\n".join(tail))
    tag = found.group(1)
    path = bento_path(tag)
    requirements = locked_requirements(path)
    bad = forbidden_requirements(requirements)
    if bad:
        raise BuildError(f"the Bento's locked requirements include training packages: {', '.join(bad)}")
    return BuildResult(tag=tag, path=path, models=models, seconds=seconds, requirements=requirements)


def bento_path(tag: str) -> Path:
    import bentoml

    return Path(bentoml.bentos.get(tag).path)


def locked_requirements(bento: Path) -> list[str]:
    """The package lines (name==version) of the Bento's lock file (or plain requirements)."""
    folder = bento / "env" / "python"
    lock = folder / "requirements.lock.txt"
    source = lock if lock.exists() else folder / "requirements.txt"
    lines = [ln.split("#")[0].strip() for ln in source.read_text().splitlines()]
    return [ln for ln in lines if ln and not ln.startswith("-")]


def forbidden_requirements(requirements: list[str]) -> list[str]:
    """Requirement lines naming a training-only package."""
    bad = []
    for line in requirements:
        name = _NAME.match(line)
        if name and name.group(0).lower().replace("_", "-") in FORBIDDEN:
            bad.append(line)
    return bad
