"""The VAE's ONNX graphs: sampler, scorer (one importance draw), encoder and decoder."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from plugins.vae.config import VAEModel
from registry.contract.family import GraphSpec, NoiseInput
from registry.pipeline.export import export_torch


class _Sampler(nn.Module):
    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, z: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        return self.vae.sample(z, u)


class _Scorer(nn.Module):
    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        rec, prior, post = self.vae.log_weight(x, eps)
        return rec + prior - post


class _Encoder(nn.Module):
    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean, log_var = self.vae.encode(x)
        return torch.cat([mean, log_var], -1)


class _Decoder(nn.Module):
    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(z)


def export_vae(model: VAEModel, directory: Path) -> list[GraphSpec]:
    vae = model.vae.eval()
    d, k = model.dim, vae.latent
    x = torch.zeros(4, d)
    z = torch.randn(4, k)
    u_dist = "uniform" if model.levels else "normal"
    export_torch(_Sampler(vae), {"z": z, "u": torch.rand(4, d)}, "x", directory / "sampler.onnx")
    export_torch(_Scorer(vae), {"x": x, "eps": z + 0.1}, "log_weight", directory / "scorer.onnx")
    export_torch(_Encoder(vae), {"x": x + 1}, "stats", directory / "encoder.onnx")
    export_torch(_Decoder(vae), {"z": z - 0.1}, "params", directory / "decoder.onnx")
    return [
        GraphSpec(
            role="sampler",
            file="sampler.onnx",
            x_input=None,
            noise=[NoiseInput(name="z", dist="normal", dim=k), NoiseInput(name="u", dist=u_dist, dim=d)],
            output="x",
        ),
        GraphSpec(
            role="scorer",
            file="scorer.onnx",
            kind="bound",
            noise=[NoiseInput(name="eps", dist="normal", dim=k)],
            output="log_weight",
        ),
        GraphSpec(role="encoder", file="encoder.onnx", output="stats"),
        GraphSpec(role="decoder", file="decoder.onnx", x_input="z", output="params"),
    ]
