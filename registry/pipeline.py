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

from registry.data import Dataset
from registry.evaluation import elbo_surgery, encode, mig
from registry.export import check_parity
from registry.family import Family, FamilyConfig, TrainControl
from registry.inference import LoadedModel, bound_estimates
from registry.store import StoredModel, get_model, save_model

IWAE_K = 64
SURGERY_ROWS = 2000
EVAL_DRAWS = 4  # uniform draws per test row when estimating E_u of a dequantisation bound
LIBRARIES = ("genreg", "numpy", "torch", "onnx", "onnxruntime", "bentoml", "pluggy", "scikit-learn")


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for lib in LIBRARIES:
        try:
            versions[lib] = importlib_metadata.version(lib)
        except importlib_metadata.PackageNotFoundError:
            continue
    return versions


def evaluate(loaded: LoadedModel, data: Dataset, split: str = "test", seed: int = 0) -> dict[str, Any]:
    """Test-split metrics from the exported graphs, i.e. what the service will answer."""
    x = getattr(data, split)
    metrics: dict[str, Any] = {"split": split, "n": len(x)}
    kinds = [k for k in ("log_prob", "bound") if k in loaded.kinds]
    if not kinds:
        return metrics
    kind = kinds[0]
    draws = EVAL_DRAWS if kind == "bound" else 1
    scores = np.mean([loaded.score(x, kind, seed=seed + i)[1] for i in range(draws)], axis=0)
    metrics["kind"] = kind
    metrics["nats"] = float(scores.mean())
    metrics["bits_per_dim"] = float(-scores.mean() / (data.dim * np.log(2)))
    metrics["finite_share"] = float(np.isfinite(scores).mean())
    if kind == "bound":
        # The importance-weighted bound with 64 draws: tighter, still a lower bound.
        rows = x[:1000]
        _, iwae = bound_estimates(loaded.log_weights(rows, seed=seed, k=IWAE_K))
        metrics[f"iwae{IWAE_K}_nats"] = float(iwae.mean())
        metrics[f"iwae{IWAE_K}_bits_per_dim"] = float(-iwae.mean() / (data.dim * np.log(2)))
    if loaded.stored.graph("encoder") is not None:
        # The aggregate posterior costs N^2 per draw: 2,000 points keep it to seconds.
        metrics["surgery"] = elbo_surgery(loaded, x[:SURGERY_ROWS], seed=seed)
        if data.factors is not None:
            splits = ("train", "validation", "test")
            codes, _ = encode(loaded, np.concatenate([getattr(data, s) for s in splits]))
            factors = np.concatenate([data.factors[s] for s in splits])
            metrics["mig"] = {**mig(codes, factors), "factors": list(data.factor_names), "n": len(codes)}
    if data.log_density is not None:
        # KL(pi || p) = E_pi[log pi(x) - log p(x)], Monte Carlo over the test samples.
        gap = data.log_density(x.astype(np.float64)) - scores
        metrics["kl"] = float(gap.mean())
        metrics["kl_stderr"] = float(gap.std() / np.sqrt(len(gap)))
    return metrics


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
