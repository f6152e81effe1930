"""ONNX export for PyTorch modules, and the parity check every export must pass.

torch is imported inside :func:`export_torch` only, so this module stays importable (and the
parity check usable) where torch is not installed.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

import numpy as np

from registry.contract.family import Family, GraphSpec

PARITY_ROWS = 1000
# ...and at most this many input values per graph (rows x (x's width + its noise)): a 32x32x3
# diffusion scorer takes 20 strata of noise a row (64,515 values), and 1,000 rows were 20,000
# U-Net passes a side, minutes of the export. Digits' graphs keep their 1,000 rows.
PARITY_VALUES = 2**21
MIN_PARITY_ROWS = 16
# A step-loop sampler runs its step graph once per step: 32 rows x 64 steps of a PixelCNN are
# 2,048 step calls per side (a few seconds), where 1,000 rows took 94 s of the export; 32 x 64
# sampled values still resolve the 0.1% mismatch allowance.
LOOP_PARITY_ROWS = 32
TORCHSCRIPT_OPSET = 18
PARITY_TOLERANCE = 1e-4  # max abs error, nats per row (scores) or data units (samples)
# Float32 rounding grows with the terms a score sums (a flow's log-determinants cancel to a
# value far smaller than themselves), so the allowance grows with the score's magnitude; real
# export faults are off by whole nats. Figures: benchmarks/RESULTS.md, Dequantisation.
PARITY_RELATIVE = 1e-5
# A score is also a sum over the row's values (a decoder's per-value log-probabilities), each
# rounded on its own path through the network, so its rounding grows with the values summed even
# where the sum is small: a beta = 4 VAE on shapes (256 values, scores of -9 to -43 nats) put
# PyTorch's own float32 score up to 1.24e-4 nats from float64 and ONNX Runtime's 1.29e-4; trained
# longer, ONNX Runtime and PyTorch differed by 3.5e-4 where the two terms above allowed 2.8e-4.
# 1e-6 a value is twice the reference's own rounding there (RESULTS.md, "The latent space").
PARITY_PER_VALUE = 1e-6
# Sampling on discrete data floors to a level; a value within float error of a bin edge may
# land in the neighbouring level, so discrete samples are compared by the share that differ.
DISCRETE_MISMATCH_TOLERANCE = 1e-3
# A step loop carries a continuous state through many steps: float differences accumulate, and
# at the end a value near the middle of two levels rounds to the other one. Measured on a 32x32x3
# diffusion model at 256 levels (100 steps, 32 rows): 1.7% of values one level apart, none
# further (0.2% with a random network). A loop's values may differ by one level in this share;
# any further apart count against DISCRETE_MISMATCH_TOLERANCE, as a one-call sampler's do. So
# may a one-call draw that unrolls such a chain (GraphSpec.chained: a VAE's local decoder).
LOOP_NEIGHBOUR_SHARE = 0.05


log = logging.getLogger("genreg.export")


class ExportError(RuntimeError):
    """An exported graph does not reproduce the reference implementation."""


def export_torch(
    module: Any,
    inputs: dict[str, Any],
    output: str,
    path: Path,
    *,
    exporter: Literal["auto", "dynamo"] = "auto",
    optimize: bool = False,
) -> None:
    """Export ``module(*inputs.values())`` to a single self-contained ONNX file, dynamic batch.

    ``auto``: the TorchScript exporter first: it traces a small family's graph in about a
    second, where the dynamo exporter's tracing, decompositions and rewrite rules took 18-27 s
    on the same spline flow (benchmarks/RESULTS.md, Export). A trace bakes in Python control
    flow, so the parity check, run at a batch size other than the example's, is what stands
    behind it. A module the tracer cannot handle goes through the dynamo exporter, by default
    unoptimised (``optimize``): ONNX Runtime optimises the graph again when it loads it.
    """
    import warnings

    import torch

    # The exporters log about optional torchvision ops and deprecations on every call.
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    logging.getLogger("torch._export").setLevel(logging.ERROR)
    module.eval()
    # Distinct tensors per input: the exporter would merge one tensor passed twice.
    args = tuple(t.clone() for t in inputs.values())
    names = list(inputs)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "auto":
            try:
                torch.onnx.export(
                    module,
                    args,
                    str(path),
                    dynamo=False,
                    input_names=names,
                    output_names=[output],
                    dynamic_axes={name: {0: "batch"} for name in [*names, output]},
                    opset_version=TORCHSCRIPT_OPSET,
                )
                _keep_unused_inputs(path, inputs)
                return
            except Exception as exc:  # any tracer failure: the dynamo exporter may still manage
                log.info("TorchScript export of %s failed (%s); using the dynamo exporter", path.name, exc)
        batch = torch.export.Dim("batch", min=1)
        program = torch.onnx.export(
            module,
            args,
            dynamo=True,
            input_names=names,
            output_names=[output],
            dynamic_shapes=tuple({0: batch} for _ in names),
            external_data=False,
            optimize=optimize,
            verbose=False,
            report=False,
        )
    program.save(str(path), external_data=False)


def _keep_unused_inputs(path: Path, inputs: dict[str, Any]) -> None:
    """Put back the inputs the TorchScript exporter dropped because the graph never reads them.

    A graph's inputs are its contract: the runtime feeds every declared noise input, and a
    composing plugin wires graphs together by input name; dynamo keeps unused inputs, the
    tracer does not.
    """
    import onnx

    model = onnx.load(str(path))
    present = {i.name for i in model.graph.input}
    missing = [name for name in inputs if name not in present]
    if not missing:
        return
    for name in missing:
        t = inputs[name]
        # The example's own dtype (an unused step index is int64, not float).
        dtype = onnx.helper.np_dtype_to_tensor_dtype(t.detach().cpu().numpy().dtype)
        shape = ["batch", *t.shape[1:]]
        model.graph.input.append(onnx.helper.make_tensor_value_info(name, dtype, shape))
    onnx.save(model, str(path))


def parity_rows(x: np.ndarray, n: int = PARITY_ROWS) -> np.ndarray:
    """n rows cycled from ``x`` (a small test split is reused rather than padded)."""
    reps = -(-n // len(x))
    return np.concatenate([x] * reps)[:n]


def check_parity(
    family: Family,
    model: Any,
    graphs: list[GraphSpec],
    directory: Path,
    x: np.ndarray,
    *,
    discrete: bool,
    seed: int = 1234,
) -> dict[str, float]:
    """Run each exported graph in ONNX Runtime against the family's reference methods.

    Returns the max abs error per graph; raises ExportError past the tolerance.
    """
    from registry.runtime.graphs import draw_noise, random_conditions, run_sampler, sample_noise
    from registry.runtime.sessions import open_session

    report: dict[str, float] = {}
    for spec in graphs:
        width = x.shape[1] + sum(noise.dim for noise in spec.noise)
        rows = parity_rows(x, max(MIN_PARITY_ROWS, min(PARITY_ROWS, PARITY_VALUES // width)))
        if spec.loop is not None and spec.loop.state_dim != rows.shape[1]:
            raise ExportError(
                f"{spec.file}: the step loop's state has {spec.loop.state_dim} values, the data {rows.shape[1]}"
            )
        session = open_session(directory / spec.file, providers=["CPUExecutionProvider"])
        rng = np.random.default_rng(seed)
        # A step-loop sampler is checked whole: the runtime's loop over ONNX Runtime against
        # the family's reference, given every step's noise.
        n = LOOP_PARITY_ROWS if spec.loop is not None else len(rows)
        noise = (
            sample_noise(spec, n, rng) if spec.role == "sampler" else draw_noise(spec.noise, len(rows), rng)
        )
        # A conditional graph's labels are inputs like its noise: the reference gets them with it.
        noise.update(random_conditions(spec, n if spec.role == "sampler" else len(rows), rng))
        feeds: dict[str, np.ndarray] = dict(noise)
        if spec.role == "sampler":
            expected = family.sample(model, noise)
        elif spec.role == "scorer":
            feeds[spec.x_input or "x"] = rows
            method = family.log_prob if spec.kind == "log_prob" else family.bound
            expected = method(model, rows, noise)
        elif spec.role == "discriminator":
            feeds[spec.x_input or "x"] = rows
            expected = (
                family.discriminate(model, rows, noise)
                if spec.condition
                else family.discriminate(model, rows)
            )
        else:
            # Auxiliary graphs: data rows in, or latents for a decoder: standard normal ones, or
            # for an exact decoder (a flow's inverse) the encoder's latents of the parity rows.
            if spec.x_input == "z":
                width = next(a.shape[1] for a in session.get_inputs() if a.name == "z")
                feeds["z"] = _latents(family, model, spec, graphs, rows, width, seed)
            else:
                feeds[spec.x_input or "x"] = rows
            expected = family.reference(model, spec, feeds)
        call = lambda f, session=session, spec=spec: session.run([spec.output], f)[0]  # noqa: E731
        got = run_sampler(call, spec, n, noise) if spec.role == "sampler" else call(feeds)
        expected = np.asarray(expected, dtype=np.float64).reshape(got.shape)
        label = f"{spec.role}:{spec.kind}" if spec.kind else spec.role
        # A draw of discrete values (a sampler's, a decoder's) may flip at a level's edge.
        if (spec.role == "sampler" or spec.kind == "sample") and discrete:
            share = float(np.mean(got != expected))
            report[f"{label}_mismatch_share"] = share
            far = share
            if spec.loop is not None or spec.chained:
                far = float(np.mean(np.abs(got - expected) > 1.0))
                report[f"{label}_far_share"] = far
                if share > LOOP_NEIGHBOUR_SHARE:
                    raise ExportError(
                        f"{label}: {share:.2%} of sampled values differ from PyTorch (a chained "
                        f"draw may differ by one level in {LOOP_NEIGHBOUR_SHARE:.0%})"
                    )
            if far > DISCRETE_MISMATCH_TOLERANCE:
                raise ExportError(f"{label}: {far:.2%} of sampled values differ from PyTorch")
            continue
        finite = np.isfinite(expected)
        if not np.array_equal(finite, np.isfinite(got)) or not np.array_equal(
            got[~finite], expected[~finite]
        ):
            raise ExportError(
                f"{label}: ONNX Runtime and the reference disagree on which values are infinite"
            )
        summed = rows.shape[1] if spec.role == "scorer" else 0
        report[label] = _within_allowance(label, got, expected, finite, summed)
    return report


def _latents(
    family: Any, model: Any, spec: GraphSpec, graphs: list[GraphSpec], rows: np.ndarray, width: int, seed: int
) -> np.ndarray:
    """A decoder's parity latents: standard normal draws, or for an exact decoder the exact
    encoder's latents (its first ``width`` outputs) of ``rows``, by the reference.

    An exact decoder is the inverse of the encoder, and that is where its parity is checked: a
    flow's inverse at arbitrary normal draws is ill-conditioned in float32 itself (measured on a
    multi-scale flow on patches-rgb: PyTorch's float32 inverse 0.058 of a level from its float64
    one, ONNX Runtime's 0.028), while at the latents of data it is exact to 1e-3 of a level.
    Normal draws through the same inverse are the sampler's, checked on the lattice.
    """
    from registry.runtime.graphs import draw_noise

    encoder = next((g for g in graphs if g.role == "encoder" and g.kind == "exact"), None)
    if spec.kind != "exact" or encoder is None:
        return np.random.default_rng(seed).standard_normal((len(rows), width)).astype(np.float32)
    feeds = {encoder.x_input or "x": rows} | draw_noise(encoder.noise, len(rows), np.random.default_rng(seed))
    latent = np.asarray(family.reference(model, encoder, feeds), dtype=np.float32)
    return np.ascontiguousarray(latent[:, :width])


# The graph each capability needs: (role, the kinds that serve it).
CLAIMED_GRAPHS: dict[str, tuple[str, tuple[str | None, ...]]] = {
    "sample": ("sampler", (None,)),
    "log_prob": ("scorer", ("log_prob",)),
    "bound": ("scorer", ("bound",)),
    "encode": ("encoder", ("gaussian", "exact")),
    "decode": ("decoder", ("mean", "exact")),
}


def check_claims(capabilities: set[str], graphs: list[GraphSpec]) -> None:
    """ExportError naming each capability a model claims without the graph that serves it."""
    missing = [
        f"{cap} (a {role} graph of kind {' or '.join(str(k) for k in kinds)})"
        for cap, (role, kinds) in CLAIMED_GRAPHS.items()
        if cap in capabilities
        and not any(g.role == role and (kinds == (None,) or g.kind in kinds) for g in graphs)
    ]
    if missing:
        raise ExportError(f"the model claims capabilities its export lacks: {'; '.join(missing)}")


def check_conditions(graphs: list[GraphSpec], classes: int | None) -> None:
    """ExportError unless a model trained on labels conditions its sampler and scorers on them
    (with the data's number of classes), and one trained without takes no label."""
    served = [g for g in graphs if g.role in ("sampler", "scorer", "discriminator")]
    if classes is None:
        bad = [g.file for g in served if g.condition is not None]
        if bad:
            raise ExportError(
                f"{', '.join(bad)} take a class label, but the model was trained without labels"
            )
        return
    bad = [g.file for g in served if g.condition is None or g.condition.classes != classes]
    if bad:
        raise ExportError(
            f"{', '.join(bad)} do not take the data's {classes} class labels (GraphSpec.condition)"
        )


def row_allowance(expected: np.ndarray, summed: int = 0) -> np.ndarray:
    """Each row's parity allowance: PARITY_TOLERANCE + PARITY_PER_VALUE * the values a score sums
    (``summed``; 0 for outputs that are not sums over the row) + PARITY_RELATIVE * its largest
    |value|.

    Per row, not the largest row's: one big score must not widen the allowance of small ones.
    """
    rows = np.abs(np.where(np.isfinite(expected), expected, 0.0)).reshape(len(expected), -1)
    return PARITY_TOLERANCE + PARITY_PER_VALUE * summed + PARITY_RELATIVE * rows.max(1, initial=0.0)


def _within_allowance(
    label: str, got: np.ndarray, expected: np.ndarray, finite: np.ndarray, summed: int = 0
) -> float:
    """The max abs error (for the record); raises ExportError when a row exceeds its allowance."""
    diff = np.zeros(expected.shape)
    diff[finite] = np.abs(got[finite] - expected[finite])
    diff = diff.reshape(len(expected), -1).max(1, initial=0.0)
    allowed = row_allowance(expected, summed)
    worst = int(np.argmax(diff - allowed)) if len(diff) else 0
    if len(diff) and diff[worst] > allowed[worst]:
        raise ExportError(
            f"{label}: ONNX Runtime differs from the reference by {diff[worst]:.3g} on row {worst} "
            f"(its tolerance {allowed[worst]:.3g}); export refused"
        )
    return float(diff.max(initial=0.0))
