"""The VAE's ONNX graphs: sampler, scorer (one importance draw), and the latent space's: the
encoder q(z|x), the decoder's mean, its draw (the sampler, fed a chosen z) and, but for a
discretised-logistic decoder, its distribution parameters (ELBO surgery reads them). A
conditional VAE's sampler and scorer take the label "y" as well; it exports no latent graphs
(plugins.vae.family says why), so the evaluation's ELBO surgery, latent report and MIG, which
read the encoder, do not apply to it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from plugins.common.graph import Traced
from plugins.vae.config import VAEModel
from plugins.vae.local import LocalLogistic
from registry.contract.family import Condition, GraphSpec, LatentPart, NoiseInput
from registry.pipeline.export import export_torch


class _Sampler(nn.Module):
    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, z: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        return self.vae.sample(z, u)


class _ClassSampler(_Sampler):
    """x ~ p(x|z, y): the label as the last input."""

    def forward(self, z: torch.Tensor, u: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return self.vae.sample(z, u, y)


class _Scorer(nn.Module):
    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        rec, prior, post = self.vae.log_weight(x, eps)
        return rec + prior - post


class _ClassScorer(_Scorer):
    """log p(x|z,y) + log p(z) - log q(z|x,y): a log importance weight of p(x|y)."""

    def forward(self, x: torch.Tensor, eps: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        rec, prior, post = self.vae.log_weight(x, eps, y)
        return rec + prior - post


def latent_functions(vae: nn.Module) -> dict[tuple[str, str], Callable[..., torch.Tensor]]:
    """(role, kind) -> the function each latent-space graph computes (export and reference)."""
    functions = {
        ("encoder", "gaussian"): lambda x: torch.cat(vae.encode(x), -1),  # [mean, log_var] of q(z|x)
        ("decoder", "mean"): vae.decode_mean,
        ("decoder", "sample"): vae.sample,
    }
    if vae.has_table:
        functions["decoder", "params"] = vae.decode
    return functions


def export_vae(model: VAEModel, directory: Path) -> list[GraphSpec]:
    vae = model.vae.eval()
    d, k = model.dim, vae.latent
    x = torch.zeros(4, d)
    z = torch.randn(4, k)
    u = NoiseInput(name="u", dist="uniform" if model.levels else "normal", dim=d)
    chained = isinstance(vae.likelihood, LocalLogistic)  # its draws read its earlier draws
    # A conditional VAE's sampler and scorer take "y"; it serves no latent space (below).
    condition = Condition(classes=vae.classes) if vae.classes else None
    y = {"y": torch.arange(4, dtype=torch.int64)[:, None] % vae.classes} if vae.classes else {}
    sampler, scorer = (
        (_ClassSampler(vae), _ClassScorer(vae)) if vae.classes else (_Sampler(vae), _Scorer(vae))
    )
    export_torch(sampler, {"z": z, "u": torch.rand(4, d), **y}, "x", directory / "sampler.onnx")
    export_torch(scorer, {"x": x, "eps": z + 0.1, **y}, "log_weight", directory / "scorer.onnx")
    served = [
        GraphSpec(
            role="sampler",
            file="sampler.onnx",
            x_input=None,
            noise=[NoiseInput(name="z", dist="normal", dim=k), u],
            output="x",
            condition=condition,
            chained=chained,
        ),
        GraphSpec(
            role="scorer",
            file="scorer.onnx",
            kind="bound",
            noise=[NoiseInput(name="eps", dist="normal", dim=k)],
            output="log_weight",
            condition=condition,
        ),
    ]
    if vae.classes:
        return served
    latent = latent_functions(vae)
    export_torch(
        Traced(latent["encoder", "gaussian"], vae=vae), {"x": x + 1}, "stats", directory / "encoder.onnx"
    )
    export_torch(
        Traced(latent["decoder", "mean"], vae=vae), {"z": z + 0.2}, "x", directory / "decoder_mean.onnx"
    )
    params: list[GraphSpec] = []
    if vae.has_table:  # not a logistic's: ELBO surgery reads the scorer instead (plugins.vae.likelihood)
        export_torch(
            Traced(latent["decoder", "params"], vae=vae), {"z": z - 0.1}, "params", directory / "decoder.onnx"
        )
        params.append(
            GraphSpec(role="decoder", file="decoder.onnx", kind="params", x_input="z", output="params")
        )
    return [
        *served,
        GraphSpec(
            role="encoder",
            file="encoder.onnx",
            kind="gaussian",
            output="stats",
            parts=[LatentPart(name="mean", dim=k), LatentPart(name="log_var", dim=k)],
        ),
        GraphSpec(role="decoder", file="decoder_mean.onnx", kind="mean", x_input="z", output="x"),
        # A draw of x|z is the sampler's with z chosen: the same graph, its z fed, not drawn.
        GraphSpec(
            role="decoder",
            file="sampler.onnx",
            kind="sample",
            x_input="z",
            noise=[u],
            output="x",
            chained=chained,
        ),
        *params,
    ]
