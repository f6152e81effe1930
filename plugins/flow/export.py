"""The flow's ONNX graphs: sampler (z -> x), scorer (x[, u] -> log-likelihood or bound), and
the latent space's: the encoder z = f(x) (on discrete data f(x + u), u drawn as the scorer's,
answered with x + u) and the decoder, its exact inverse.

A conditional flow's sampler and scorer take the class label y too ((n, 1) int64, the last
input). It exports no encoder or decoder and claims neither (plugins.flow.family): its latent
f(x; y) depends on the label, which the serving runtime's latent graphs do not take."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from plugins.common.graph import Traced
from plugins.flow.config import FlowModel
from plugins.flow.dequantize import variational_log_weight
from registry.contract.family import Condition, GraphSpec, LatentPart, NoiseInput
from registry.pipeline.export import export_torch


class _Sampler(nn.Module):
    def __init__(self, flow: nn.Module) -> None:
        super().__init__()
        self.flow = flow

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.flow.sample(z)


class _Bound(nn.Module):
    """log p(x + u): one draw of the uniform dequantisation bound."""

    def __init__(self, flow: nn.Module) -> None:
        super().__init__()
        self.flow = flow

    def forward(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        return self.flow.log_prob(x + u)


class _VariationalBound(nn.Module):
    """log p(x + u) - log q(u|x), u = h(eps; x): one draw of the variational dequantisation bound."""

    def __init__(self, flow: nn.Module, dequantizer: nn.Module) -> None:
        super().__init__()
        self.flow = flow
        self.dequantizer = dequantizer

    def forward(self, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        return variational_log_weight(self.flow, self.dequantizer, x, eps)


class _LogProb(nn.Module):
    def __init__(self, flow: nn.Module) -> None:
        super().__init__()
        self.flow = flow

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.flow.log_prob(x)


def conditional_functions(model: FlowModel) -> dict[str, Callable[..., torch.Tensor]]:
    """A conditional flow's sampler and scorer, the label ``y`` last (export and reference)."""
    flow, dequantizer = model.flow, model.dequantizer

    def bound(x: torch.Tensor, u: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return flow.log_prob(x + u, y)

    def variational(x: torch.Tensor, eps: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return variational_log_weight(flow, dequantizer, x, eps, y)

    if not model.levels:
        scorer: Callable[..., torch.Tensor] = flow.log_prob
    else:
        scorer = bound if dequantizer is None else variational
    return {"sampler": flow.sample, "scorer": scorer}


def latent_functions(model: FlowModel) -> dict[tuple[str, str], Callable[..., torch.Tensor]]:
    """(role, kind) -> the function each latent-space graph computes (export and reference).

    The latent of a discrete row x is that of its dequantised value y = x + u, u from the
    model's own dequantiser (uniform, or q(u|x) from normal eps): the encoder answers [z, y],
    and the decoder's exact inverse gives y back, whose floor is x.
    """
    flow = model.flow
    if not model.levels:
        encode: Callable[..., torch.Tensor] = flow.transform
    elif model.dequantizer is None:

        def encode(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
            y = x + u
            return torch.cat([flow.transform(y), y], -1)

    else:
        dequantizer = model.dequantizer

        def encode(x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
            y = x + dequantizer(x, eps)[0]
            return torch.cat([flow.transform(y), y], -1)

    return {("encoder", "exact"): encode, ("decoder", "exact"): flow.invert}


def latent_graphs(model: FlowModel, directory: Path, noise: NoiseInput | None) -> list[GraphSpec]:
    """Export the encoder and decoder (``noise``: the scorer's dequantisation noise, if any)."""
    d = model.dim
    fns = latent_functions(model)
    modules = {"flow": model.flow} | ({"dequantizer": model.dequantizer} if model.dequantizer else {})
    example = {"x": torch.zeros(4, d)} | ({noise.name: torch.full((4, d), 0.5)} if noise else {})
    export_torch(Traced(fns["encoder", "exact"], **modules), example, "latent", directory / "encoder.onnx")
    # On continuous data f^-1 is the sampler itself (no lattice to round to): one graph, two uses.
    decoder = "decoder.onnx" if model.levels else "sampler.onnx"
    if model.levels:
        inverse = Traced(fns["decoder", "exact"], flow=model.flow)
        export_torch(inverse, {"z": torch.zeros(4, d)}, "x", directory / decoder)
    parts = [LatentPart(name="z", dim=d)] + ([LatentPart(name="dequantized", dim=d)] if noise else [])
    return [
        GraphSpec(
            role="encoder",
            file="encoder.onnx",
            kind="exact",
            noise=[noise] if noise else [],
            output="latent",
            parts=parts,
        ),
        GraphSpec(role="decoder", file=decoder, kind="exact", x_input="z", output="x"),
    ]


def export_conditional(model: FlowModel, directory: Path) -> list[GraphSpec]:
    """The sampler (z, y -> x) and scorer (x[, noise], y -> log p(x|y) or a bound on it)."""
    flow = model.flow.eval()
    d = model.dim
    example = torch.zeros(4, d)
    y = torch.zeros(4, 1, dtype=torch.int64)
    condition = Condition(classes=model.classes)
    fns = conditional_functions(model)
    modules = {"flow": flow} | ({"dequantizer": model.dequantizer.eval()} if model.dequantizer else {})
    z = NoiseInput(name="z", dist="normal", dim=d)
    export_torch(Traced(fns["sampler"], flow=flow), {"z": example, "y": y}, "x", directory / "sampler.onnx")
    if not model.levels:
        noise, kind = [], "log_prob"
    elif model.dequantizer is None:
        noise, kind = [NoiseInput(name="u", dist="uniform", dim=d)], "bound"
    else:
        noise, kind = [NoiseInput(name="eps", dist="normal", dim=d)], "bound"
    inputs = {"x": example} | {n.name: example + 0.5 for n in noise} | {"y": y}
    export_torch(Traced(fns["scorer"], **modules), inputs, "log_likelihood", directory / "scorer.onnx")
    return [
        GraphSpec(
            role="sampler", file="sampler.onnx", x_input=None, noise=[z], output="x", condition=condition
        ),
        GraphSpec(
            role="scorer",
            file="scorer.onnx",
            kind=kind,
            noise=noise,
            output="log_likelihood",
            condition=condition,
        ),
    ]


def export_flow(model: FlowModel, directory: Path) -> list[GraphSpec]:
    if model.classes:
        return export_conditional(model, directory)
    flow = model.flow.eval()
    d = model.dim
    example = torch.zeros(4, d)
    z = NoiseInput(name="z", dist="normal", dim=d)
    export_torch(_Sampler(flow), {"z": example}, "x", directory / "sampler.onnx")
    graphs = [GraphSpec(role="sampler", file="sampler.onnx", x_input=None, noise=[z], output="x")]
    if model.levels:
        # The service draws the noise: uniform u, or the normal eps that q(u|x) transforms.
        if model.dequantizer is None:
            noise = NoiseInput(name="u", dist="uniform", dim=d)
            scorer: nn.Module = _Bound(flow)
        else:
            noise = NoiseInput(name="eps", dist="normal", dim=d)
            scorer = _VariationalBound(flow, model.dequantizer.eval())
        export_torch(
            scorer, {"x": example, noise.name: example + 0.5}, "log_likelihood", directory / "scorer.onnx"
        )
        graphs.append(
            GraphSpec(role="scorer", file="scorer.onnx", kind="bound", noise=[noise], output="log_likelihood")
        )
    else:
        noise = None
        export_torch(_LogProb(flow), {"x": example}, "log_likelihood", directory / "scorer.onnx")
        graphs.append(GraphSpec(role="scorer", file="scorer.onnx", kind="log_prob", output="log_likelihood"))
    return graphs + latent_graphs(model, directory, noise)
