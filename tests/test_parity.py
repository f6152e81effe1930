"""The export's parity check: each row's error against that row's own allowance."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from registry.contract.family import Capability, Family, GraphSpec, NoiseInput, StepLoop
from registry.pipeline.export import (
    PARITY_PER_VALUE,
    PARITY_RELATIVE,
    PARITY_TOLERANCE,
    ExportError,
    check_parity,
)


def _sum_scorer(path: Path, width: int = 2) -> GraphSpec:
    """An ONNX scorer whose score is the sum of the row (built with onnx.helper: no torch)."""
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
    node = helper.make_node("ReduceSum", ["x", "axes"], ["score"], keepdims=0)
    graph = helper.make_graph(
        [node],
        "sum",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch"])],
        [axes],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return GraphSpec(role="scorer", file=path.name, kind="log_prob", output="score")


class Offset(Family):
    """A reference that is the row sum plus a chosen error on chosen rows."""

    name = "offset"
    capabilities = frozenset({Capability.LOG_PROB})

    def __init__(self, errors: dict[int, float]) -> None:
        self.errors = errors

    def log_prob(self, model, x, noise):
        out = x.astype(np.float64).sum(1)
        for row, err in self.errors.items():
            out[row % len(out)] += err
        return out


# Row 0 scores -10,000 nats (its allowance 1e-4 + 2e-6 + 1e-5 * 1e4 = 0.100102); row 1 scores -1
# nat (allowance 1.12e-4). The parity check cycles these two rows over its 1,000.
ROWS = np.array([[-5000.0, -5000.0], [-0.5, -0.5]], dtype=np.float32)
SMALL_ALLOWANCE = PARITY_TOLERANCE + PARITY_PER_VALUE * 2 + PARITY_RELATIVE * 1.0
LARGE_ALLOWANCE = PARITY_TOLERANCE + PARITY_PER_VALUE * 2 + PARITY_RELATIVE * 1e4


@pytest.mark.parametrize(
    ("errors", "refused"),
    [
        ({}, False),
        # Each row within its own allowance passes, the large one by far more than the small one's.
        ({0: 0.9 * LARGE_ALLOWANCE, 1: 0.9 * SMALL_ALLOWANCE}, False),
        # An error on the small row that the large row's allowance would hide (10x its own).
        ({1: 10 * SMALL_ALLOWANCE}, True),
        ({0: 1.1 * LARGE_ALLOWANCE}, True),
    ],
)
def test_each_row_is_held_to_its_own_allowance(tmp_path, errors, refused):
    spec = _sum_scorer(tmp_path / "scorer.onnx")
    assert 10 * SMALL_ALLOWANCE < LARGE_ALLOWANCE  # what makes the third case a real test
    family = Offset(errors)
    if refused:
        with pytest.raises(ExportError, match="scorer:log_prob.*row 1" if 1 in errors else "row 0"):
            check_parity(family, None, [spec], tmp_path, ROWS, discrete=False)
    else:
        report = check_parity(family, None, [spec], tmp_path, ROWS, discrete=False)
        # The record is the measured max abs error, float32 rounding of the sums included.
        assert report["scorer:log_prob"] == pytest.approx(max(errors.values(), default=0.0), abs=1e-3)


@pytest.mark.parametrize(("share", "refused"), [(0.9, False), (1.1, True)])
def test_a_score_over_many_values_is_allowed_their_rounding(tmp_path, share, refused):
    """A score sums its row's values, each rounded on its own path: 1,000 values scoring about
    -1 nat in all are allowed 1e-4 + 1,000 x 1e-6 + 1e-5 (~1.1e-3), ten times what the same score
    over two values is allowed, and no more."""
    width = 1000
    spec = _sum_scorer(tmp_path / "scorer.onnx", width)
    rows = np.full((2, width), -1.0 / width, dtype=np.float32)
    allowance = PARITY_TOLERANCE + PARITY_PER_VALUE * width + PARITY_RELATIVE * 1.0
    assert allowance > 9 * SMALL_ALLOWANCE
    family = Offset({0: share * allowance})
    if refused:
        with pytest.raises(ExportError, match="row 0"):
            check_parity(family, None, [spec], tmp_path, rows, discrete=False)
    else:
        check_parity(family, None, [spec], tmp_path, rows, discrete=False)


def _rounding_step(path: Path) -> GraphSpec:
    """A one-step loop sampler: state_next = floor(state + 10 u), a level from 0 to 9 per value."""
    ten = helper.make_tensor("ten", TensorProto.FLOAT, [], [10.0])
    nodes = [
        helper.make_node("Mul", ["u", "ten"], ["scaled"]),
        helper.make_node("Add", ["state", "scaled"], ["moved"]),
        helper.make_node("Floor", ["moved"], ["state_next"]),
    ]
    graph = helper.make_graph(
        nodes,
        "rounding",
        [
            helper.make_tensor_value_info("state", TensorProto.FLOAT, ["batch", 4]),
            helper.make_tensor_value_info("step", TensorProto.INT64, ["batch", 1]),
            helper.make_tensor_value_info("u", TensorProto.FLOAT, ["batch", 4]),
        ],
        [helper.make_tensor_value_info("state_next", TensorProto.FLOAT, ["batch", 4])],
        [ten],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return GraphSpec(
        role="sampler",
        file=path.name,
        x_input=None,
        noise=[NoiseInput(name="u", dist="uniform", dim=4)],
        output="state_next",
        loop=StepLoop(steps=1, state_dim=4),
    )


class Shifted(Family):
    """The loop's reference, with every ``every``-th value moved by ``by`` levels."""

    name = "shifted"
    capabilities = frozenset({Capability.SAMPLE})

    def __init__(self, every: int, by: float) -> None:
        self.every, self.by = every, by

    def sample(self, model, noise):
        out = np.floor(10.0 * noise["u"][0].astype(np.float32)).astype(np.float64)
        if self.every:
            out.reshape(-1)[:: self.every] += self.by
        return out


@pytest.mark.parametrize(
    ("every", "by", "refused"),
    [
        (0, 0.0, None),
        (50, 1.0, None),  # 2% one level apart: float error at the end of a long loop
        (5, 1.0, "may differ by one level in 5%"),  # too many, even one level apart
        (200, 2.0, r"^sampler: 0\.78% of sampled values differ from PyTorch$"),  # a fault: 2 levels
    ],
)
def test_a_loop_sampler_may_differ_by_one_level_in_a_few_values_only(tmp_path, every, by, refused):
    spec = _rounding_step(tmp_path / "sampler.onnx")
    x = np.zeros((2, 4), dtype=np.float32)
    if refused:
        with pytest.raises(ExportError, match=refused):
            check_parity(Shifted(every, by), None, [spec], tmp_path, x, discrete=True)
        return
    report = check_parity(Shifted(every, by), None, [spec], tmp_path, x, discrete=True)
    assert report["sampler_far_share"] == 0.0
    assert report["sampler_mismatch_share"] == pytest.approx(1 / every if every else 0.0, abs=0.01)


def _rounding_draw(path: Path, chained: bool) -> GraphSpec:
    """A one-call sampler: x = floor(10 u), a level from 0 to 9 per value."""
    ten = helper.make_tensor("ten", TensorProto.FLOAT, [], [10.0])
    nodes = [helper.make_node("Mul", ["u", "ten"], ["scaled"]), helper.make_node("Floor", ["scaled"], ["x"])]
    graph = helper.make_graph(
        nodes,
        "draw",
        [helper.make_tensor_value_info("u", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [ten],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    noise = [NoiseInput(name="u", dist="uniform", dim=4)]
    return GraphSpec(role="sampler", file=path.name, x_input=None, noise=noise, output="x", chained=chained)


class OneCall(Shifted):
    def sample(self, model, noise):
        out = np.floor(10.0 * noise["u"].astype(np.float32)).astype(np.float64)
        out.reshape(-1)[:: self.every] += self.by
        return out


@pytest.mark.parametrize(
    ("chained", "by", "refused"),
    [
        (True, 1.0, None),  # 2% one level apart: a flip at a bin edge moved the draws after it
        (False, 1.0, r"^sampler: 2\.00% of sampled values differ from PyTorch$"),  # independent draws
        (True, 2.0, r"^sampler: 2\.00% of sampled values differ from PyTorch$"),  # a fault: 2 levels
    ],
)
def test_a_chained_one_call_draw_is_judged_as_a_loop(tmp_path, chained, by, refused):
    """A one-call sampler whose draws feed its later draws (GraphSpec.chained: the VAE's local
    decoder) may differ by one level as a step loop may; an unchained one by the 0.1% only."""
    spec = _rounding_draw(tmp_path / "draw.onnx", chained)
    x = np.zeros((2, 4), dtype=np.float32)
    if refused:
        with pytest.raises(ExportError, match=refused):
            check_parity(OneCall(50, by), None, [spec], tmp_path, x, discrete=True)
        return
    report = check_parity(OneCall(50, by), None, [spec], tmp_path, x, discrete=True)
    assert report["sampler_far_share"] == 0.0
    assert report["sampler_mismatch_share"] == pytest.approx(0.02, abs=0.01)
