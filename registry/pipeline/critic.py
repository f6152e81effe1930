"""`genreg critic NAME`: train a real-vs-sample classifier for a stored model and store it,
as the model's `discriminator` graph, in a new version of that model.

The critic learns from the validation split against model samples and is judged on the test
split against fresh samples: its held-out accuracy (with the binomial p-value) and AUC are
the classifier two-sample test (C2ST), and its value V gives the JSD lower bound.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from registry.datasets import load_dataset
from registry.pipeline.export import PARITY_TOLERANCE, ExportError
from registry.runtime.cost import measured
from registry.runtime.graphs import GraphSpec
from registry.runtime.models import LoadedModel
from registry.runtime.sessions import open_session
from registry.runtime.store import StoredModel, get_model, save_model
from registry.runtime.two_sample import auc, binomial_tail, jsd_lower_bound

CRITIC_FILE = "discriminator.onnx"


def attach_critic(ref: str, *, steps: int = 2000, seed: int = 0, replace: bool = False) -> StoredModel:
    import torch

    from registry.pipeline.classifier import critic_logits, train_critic
    from registry.pipeline.export import export_torch

    stored = get_model(ref)
    if stored.graph("discriminator") is not None and not replace:
        raise ValueError(f"{stored.tag} already has a discriminator; pass --replace to train a new critic")
    data = load_dataset(stored.data["name"])
    if data.fingerprint != stored.data["fingerprint"]:
        raise ValueError(
            f"{stored.tag} was trained on data that is not a built-in data set; a critic needs it"
        )
    loaded = LoadedModel(stored, providers=["CPUExecutionProvider"])
    if loaded.stored.graph("sampler") is None:
        raise ValueError(f"{stored.tag} cannot sample, so there is nothing to criticise")
    fit_real, held_real = data.validation, data.test[:5000]
    fit_fake = loaded.sample(max(len(fit_real), 2000), seed=seed)
    held_fake = loaded.sample(len(held_real), seed=seed + 1)
    critic = train_critic(fit_real, fit_fake, steps=steps, seed=seed, holdout=0.2)
    lr, lf = critic_logits(critic, held_real), critic_logits(critic, held_fake)
    labels = np.concatenate([np.ones(len(lr)), np.zeros(len(lf))])
    logits = np.concatenate([lr, lf])
    correct = int(((logits > 0) == labels.astype(bool)).sum())
    metrics: dict[str, Any] = {
        "c2st_accuracy": correct / len(labels),
        "c2st_p_value": binomial_tail(correct, len(labels)),
        "auc": auc(logits, labels),
        "n_real": len(lr),
        "n_model": len(lf),
        "steps": steps,
        "trained_on": f"validation ({len(fit_real)} rows) vs {len(fit_fake)} samples",
        **jsd_lower_bound(lr, lf),
    }
    with tempfile.TemporaryDirectory(prefix="genreg-critic-") as tmp:
        directory = Path(tmp)
        for name in stored.meta["checksums"]:
            if name not in (CRITIC_FILE, "genreg.json"):
                shutil.copy2(stored.file(name), directory / name)
        export_torch(
            critic,
            {"x": torch.as_tensor(held_real[:4], dtype=torch.float32)},
            "logit",
            directory / CRITIC_FILE,
        )
        got = open_session(directory / CRITIC_FILE, ["CPUExecutionProvider"]).run(
            ["logit"], {"x": held_real.astype(np.float32)}
        )[0]
        err = float(np.max(np.abs(got - lr)))
        if err > PARITY_TOLERANCE:
            raise ExportError(f"critic: ONNX Runtime differs from PyTorch by {err:.3g}; refused")
        meta = {k: v for k, v in stored.meta.items() if k != "checksums"}
        critic_spec = GraphSpec(role="discriminator", file=CRITIC_FILE, x_input="x", output="logit")
        # Its memory and time per row, as every stored graph carries (registry.runtime.cost).
        (critic_spec,) = measured(directory, [critic_spec])
        meta["graphs"] = [g for g in meta["graphs"] if g["role"] != "discriminator"] + [
            critic_spec.model_dump(mode="json")
        ]
        meta["capabilities"] = sorted({*meta["capabilities"], "discriminate"})
        meta["parity"] = {**meta.get("parity", {}), "critic": err}
        meta["metrics"] = {**meta.get("metrics", {}), "critic": metrics}
        meta["parent"] = stored.tag
        return save_model(stored.name, directory, meta)
