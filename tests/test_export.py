"""export_torch: what the exported graph keeps of its declared interface."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import torch

from registry.pipeline.export import export_torch


class _ReadsOnlyA(torch.nn.Module):
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a.sum(1) * 2


def test_an_input_the_graph_never_reads_stays_an_input(tmp_path):
    # The TorchScript tracer drops unused inputs; the runtime feeds every declared noise input
    # and composing plugins wire graphs by input name, so the declared interface must survive.
    path = tmp_path / "m.onnx"
    export_torch(_ReadsOnlyA(), {"a": torch.zeros(4, 3), "b": torch.zeros(4, 5)}, "out", path)
    assert [i.name for i in onnx.load(str(path)).graph.input] == ["a", "b"]
    out = ort.InferenceSession(str(path)).run(
        None, {"a": np.ones((7, 3), np.float32), "b": np.zeros((7, 5), np.float32)}
    )[0]
    assert out.tolist() == [6.0] * 7


class _IgnoresTheStep(torch.nn.Module):
    def forward(self, state: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
        return state + 1


def test_an_unused_integer_input_keeps_its_type(tmp_path):
    # A step graph that ignores its step index still takes the int64 column the runtime feeds.
    path = tmp_path / "m.onnx"
    inputs = {"state": torch.zeros(4, 2), "step": torch.zeros(4, 1, dtype=torch.int64)}
    export_torch(_IgnoresTheStep(), inputs, "out", path)
    session = ort.InferenceSession(str(path))
    assert [(i.name, i.type) for i in session.get_inputs()] == [
        ("state", "tensor(float)"),
        ("step", "tensor(int64)"),
    ]
    out = session.run(None, {"state": np.zeros((3, 2), np.float32), "step": np.zeros((3, 1), np.int64)})[0]
    assert out.tolist() == [[1.0, 1.0]] * 3
