"""Train -> evaluate -> export -> parity check -> store: the one path every family goes through."""

from __future__ import annotations

import datetime as dt
import platform
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import numpy as np

from registry.contract.dataset import DataError, Dataset
from registry.contract.family import Family, FamilyConfig, TrainControl
from registry.pipeline.distributed import is_main_process
from registry.pipeline.evaluate import evaluate
from registry.pipeline.export import check_claims, check_conditions, check_parity
from registry.runtime.cost import measured
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
) -> StoredModel | None:
    """Train ``family`` on ``data``, export and check its graphs, and save a new version.

    In a data-parallel group (registry.pipeline.distributed) every rank trains and only rank 0
    exports and stores; the others return None.
    """
    if data.labels is not None and not family.conditional:
        raise DataError(
            f"{family.name} does not train conditionally (its graphs take no class label); drop the labels"
        )
    stages = _Stages(control.log if control.progress else None)
    with stages("train"):
        model = family.train(data, config, control)
    if not is_main_process():
        return None
    caps = family.model_capabilities(model)
    if not caps <= set(family.capabilities):
        raise RuntimeError(f"family {family.name!r}: a model claims {caps - set(family.capabilities)}")

    with tempfile.TemporaryDirectory(prefix="genreg-export-") as tmp:
        directory = Path(tmp)
        with stages("export"):
            graphs = family.export(model, directory)
            check_claims({c.value for c in caps}, graphs)
            check_conditions(graphs, data.classes)
        with stages("parity"):
            parity = check_parity(family, model, graphs, directory, data.test, discrete=data.discrete)
        with stages("cost"):
            # Each graph's memory and time per row, which the serving runtime cuts calls by.
            graphs = measured(directory, graphs)
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
                "seconds": round(stages.seconds["train"], 3),
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
        with stages("evaluate"):
            meta["metrics"] = {"test": evaluate(LoadedModel(probe, providers=["CPUExecutionProvider"]), data)}
        # What each stage after training cost, so a slow export shows in the registry itself.
        meta["stages"] = {k: round(v, 3) for k, v in stages.seconds.items() if k != "train"}
        with stages("store"):
            stored = save_model(name or default_name(family.name, data.name), directory, meta)
    return get_model(stored.tag)


class _Stages:
    """Times the named stages of a run and says which one is running (export and evaluation
    take seconds with no progress bar of their own)."""

    def __init__(self, say: Callable[[str], None] | None) -> None:
        self.say = say
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        if self.say is not None and stage != "train":
            self.say(f"{stage}...")
        start = time.monotonic()
        try:
            yield
        finally:
            self.seconds[stage] = time.monotonic() - start


def default_name(family: str, data: str) -> str:
    return f"{family}-{data}".lower().replace("_", "-")
