"""Train -> evaluate -> export -> parity check -> store: the one path every family goes through."""

from __future__ import annotations

import datetime as dt
import platform
import tempfile
import time
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import numpy as np

from registry.contract.dataset import Dataset
from registry.contract.family import Family, FamilyConfig, TrainControl
from registry.pipeline.evaluate import evaluate
from registry.pipeline.export import check_parity
from registry.runtime.models import LoadedModel
from registry.runtime.store import StoredModel, get_model, save_model

LIBRARIES = ("genreg", "numpy", "torch", "onnx", "onnxruntime", "bentoml", "pluggy", "scikit-learn")


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for lib in LIBRARIES:
        try:
            versions[lib] = importlib_metadata.version(lib)
        except importlib_metadata.PackageNotFoundError:
            continue
    return versions


def train_and_store(
    family: Family,
    data: Dataset,
    config: FamilyConfig,
    control: TrainControl,
    *,
    name: str | None = None,
    plugin: dict[str, str] | None = None,
) -> StoredModel:
    """Train ``family`` on ``data``, export and check its graphs, and save a new version."""
    start = time.monotonic()
    model = family.train(data, config, control)
    train_seconds = time.monotonic() - start
    caps = family.model_capabilities(model)
    if not caps <= set(family.capabilities):
        raise RuntimeError(f"family {family.name!r}: a model claims {caps - set(family.capabilities)}")

    with tempfile.TemporaryDirectory(prefix="genreg-export-") as tmp:
        directory = Path(tmp)
        graphs = family.export(model, directory)
        parity = check_parity(family, model, graphs, directory, data.test, discrete=data.discrete)
        weights = family.weights(model)
        if weights:
            np.savez(directory / "weights.npz", **weights)
        resolved = family.config_of(model)
        meta: dict[str, Any] = {
            "family": family.name,
            "plugin": plugin or {},
            "capabilities": sorted(c.value for c in caps),
            "config": resolved.model_dump(mode="json"),
            "data": data.describe(),
            "graphs": [g.model_dump(mode="json") for g in graphs],
            "parity": parity,
            "train": {
                "seconds": round(train_seconds, 3),
                "seed": control.seed,
                "device": control.device,
                **getattr(model, "fit", {}),
            },
            "versions": library_versions(),
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }
        # Evaluate through ONNX Runtime on the graphs as they will be stored.
        probe = StoredModel(
            name or f"{family.name}-{data.name}", "unsaved", directory, {**meta, "checksums": {}}
        )
        meta["metrics"] = {"test": evaluate(LoadedModel(probe, providers=["CPUExecutionProvider"]), data)}
        stored = save_model(name or default_name(family.name, data.name), directory, meta)
    return get_model(stored.tag)


def default_name(family: str, data: str) -> str:
    return f"{family}-{data}".lower().replace("_", "-")
