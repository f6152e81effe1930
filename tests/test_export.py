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
