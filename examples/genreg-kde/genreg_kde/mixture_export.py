"""The mixture's ONNX graphs: the stored base graphs (names prefixed `base_`) merged with a
small head exported from PyTorch, so the base model is reused exactly as it is served."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import onnx
import torch
from onnx import compose
from torch import nn

from genreg_kde.mixture import MixtureModel
from registry import GraphSpec, NoiseInput
from registry.pipeline.export import export_torch


class _ScoreHead(nn.Module):
    def __init__(self, model: MixtureModel) -> None:
        super().__init__()
        self.levels, self.dim = model.levels, model.dim
        self.log_w, self.log_1mw = math.log(model.config.weight), math.log(1 - model.config.weight)
        self.register_buffer("mean", torch.as_tensor(model.mean, dtype=torch.float32))
        self.register_buffer("scale", torch.as_tensor(model.scale, dtype=torch.float32))

    def forward(self, log_base: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.levels:
            log_noise = torch.zeros_like(log_base) - self.dim * math.log(self.levels)
        else:
            z = (y - self.mean) / self.scale
            log_noise = (-0.5 * z * z - torch.log(self.scale) - 0.5 * math.log(2 * math.pi)).sum(1)
        # log(e^a + e^b) written out: the exporter's logaddexp underflows below about -87.
        a, b = log_base + self.log_w, log_noise + self.log_1mw
        top = torch.maximum(a, b)
        return top + torch.log(torch.exp(a - top) + torch.exp(b - top))


class _SampleHead(nn.Module):
    def __init__(self, model: MixtureModel) -> None:
        super().__init__()
        self.levels, self.weight = model.levels, model.config.weight
        self.register_buffer("mean", torch.as_tensor(model.mean, dtype=torch.float32))
        self.register_buffer("scale", torch.as_tensor(model.scale, dtype=torch.float32))

    def forward(self, base_x: torch.Tensor, pick: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        if self.levels:
            other = torch.clamp(torch.floor(noise * self.levels), 0, self.levels - 1)
        else:
            other = self.mean + self.scale * noise
        return torch.where(pick < self.weight, base_x, other)


def _with_output(model: onnx.ModelProto, tensor: str, alias: str) -> onnx.ModelProto:
    """Expose an input tensor of the graph as an extra output (via Identity)."""
    graph = model.graph
    graph.node.append(onnx.helper.make_node("Identity", [tensor], [alias]))
    source = next(i for i in graph.input if i.name == tensor)
    out = onnx.ValueInfoProto()
    out.CopyFrom(source)
    out.name = alias
    graph.output.append(out)
    return model


def _merge(
    base_path: Path,
    head: nn.Module,
    head_inputs: dict[str, torch.Tensor],
    io_map: list[tuple[str, str]],
    out: Path,
    expose: tuple[str, str] | None = None,
) -> None:
    base = onnx.load(str(base_path))
    base = compose.add_prefix(base, "base_")
    if expose is not None:
        base = _with_output(base, *expose)
    with tempfile.TemporaryDirectory() as tmp:
        head_path = Path(tmp) / "head.onnx"
        export_torch(head, head_inputs, "out", head_path)
        head_model = onnx.load(str(head_path))
    head_model = compose.add_prefix(head_model, "head_", rename_inputs=False, rename_outputs=False)
    if head_model.ir_version != base.ir_version:
        head_model.ir_version = base.ir_version
    merged = compose.merge_models(base, head_model, io_map=io_map)
    onnx.checker.check_model(merged)
    onnx.save(merged, str(out))


def export_mixture(model: MixtureModel, base, directory: Path) -> list[GraphSpec]:
    d = model.dim
    sampler = base.graph("sampler")
    noise_dist = "uniform" if model.levels else "normal"
    _merge(
        base.file(sampler.file),
        _SampleHead(model),
        {"base_x_in": torch.zeros(4, d), "pick": torch.rand(4, 1), "noise": torch.rand(4, d)},
        [(f"base_{sampler.output}", "base_x_in")],
        directory / "sampler.onnx",
    )
    scorer = base.graph("scorer", model.base_kind)
    x_name = f"base_{scorer.x_input or 'x'}"
    _merge(
        base.file(scorer.file),
        _ScoreHead(model),
        {"log_base": torch.zeros(4), "y_in": torch.zeros(4, d)},
        [(f"base_{scorer.output}", "log_base"), ("base_y_out", "y_in")],
        directory / "scorer.onnx",
        expose=(x_name, "base_y_out"),
    )
    return [
        GraphSpec(
            role="sampler",
            file="sampler.onnx",
            x_input=None,
            noise=[NoiseInput(name=f"base_{n.name}", dist=n.dist, dim=n.dim) for n in sampler.noise]
            + [
                NoiseInput(name="pick", dist="uniform", dim=1),
                NoiseInput(name="noise", dist=noise_dist, dim=d),
            ],
            output="out",
        ),
        GraphSpec(
            role="scorer",
            file="scorer.onnx",
            kind=model.base_kind,
            x_input=x_name,
            noise=[NoiseInput(name=f"base_{n.name}", dist=n.dist, dim=n.dim) for n in scorer.noise],
            output="out",
        ),
    ]
