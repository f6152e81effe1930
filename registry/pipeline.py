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
from registry.two_sample import c2st, jsd_lower_bound, mmd_test

IWAE_K = 64
TWO_SAMPLE_ROWS = 1000
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


def likelihood_free(loaded: LoadedModel, real: np.ndarray, seed: int = 0) -> dict[str, Any]:
    """Two-sample tests (MMD, k-NN C2ST) of held-out rows against as many model samples, and
    the JSD lower bound from the model's own discriminator when it has one."""
    real = real[:TWO_SAMPLE_ROWS].astype(np.float64)
    fake = loaded.sample(len(real), seed=seed).astype(np.float64)
    out: dict[str, Any] = {
        "mmd": mmd_test(real, fake, seed=seed),
        "c2st": c2st(real, fake, seed=seed),
    }
    spec = loaded.stored.graph("discriminator")
    if spec is not None:
        logit = lambda a: loaded.run(spec, {spec.x_input or "x": a.astype(np.float32)}).reshape(-1)  # noqa: E731
        out["jsd"] = jsd_lower_bound(logit(real), logit(fake))
    return out


def evaluate(loaded: LoadedModel, data: Dataset, split: str = "test", seed: int = 0) -> dict[str, Any]:
    """Test-split metrics from the exported graphs, i.e. what the service will answer."""
    x = getattr(data, split)
    metrics: dict[str, Any] = {"split": split, "n": len(x)}
    if loaded.stored.graph("sampler") is not None:
        metrics["two_sample"] = likelihood_free(loaded, x, seed=seed)
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
