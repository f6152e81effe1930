"""The GPU path of training, checked without a GPU: device and precision resolution, and the
shared loop's bf16 autocast (torch.autocast on the CPU stands in for CUDA's: the same context
manager, which is what the loop's plumbing decides) kept to the training loss."""

from __future__ import annotations

import time

import pytest
import torch

from plugins.common.training import _tf32_switches, fit, full_float32, pick_device
from registry.contract.family import TrainControl
from registry.pipeline.distributed import resolve_precision


def _fit(precision: str, seen: dict[str, list], mixed_precision: bool = True):
    torch.manual_seed(0)
    module = torch.nn.Linear(3, 1)
    train = torch.randn(96, 3, generator=torch.Generator().manual_seed(1))

    def loss_fn(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        out = module(batch)
        seen["loss"].append((torch.is_autocast_enabled("cpu"), out.dtype))
        return (out.float() ** 2).mean()

    def validate() -> float:
        with torch.no_grad():
            out = module(train)
        seen["validate"].append((torch.is_autocast_enabled("cpu"), out.dtype))
        return float((out**2).mean())

    result = fit(
        module,
        train,
        loss_fn=loss_fn,
        validate=validate,
        control=TrainControl(seed=0, progress=False, precision=precision),
        epochs=2,
        batch_size=32,
        lr=1e-2,
        weight_decay=0.0,
        patience=10,
        grad_clip=1.0,
        mixed_precision=mixed_precision,
    )
    return module, result


def test_bf16_runs_the_training_loss_under_autocast_and_validation_in_float32():
    seen: dict[str, list] = {"loss": [], "validate": []}
    module, result = _fit("bf16", seen)
    assert seen["loss"] == [(True, torch.bfloat16)] * 6  # 2 epochs x 3 batches
    assert seen["validate"] == [(False, torch.float32)] * 2
    assert result.precision == "bf16"
    assert all(p.dtype == torch.float32 for p in module.parameters())  # autocast casts, never stores
    assert result.rows_per_second > 0


def test_auto_on_the_cpu_is_plain_float32_and_a_family_can_opt_out():
    auto: dict[str, list] = {"loss": [], "validate": []}
    module_auto, result = _fit("auto", auto)
    assert result.precision == "float32" and {e for e in auto["loss"]} == {(False, torch.float32)}
    explicit: dict[str, list] = {"loss": [], "validate": []}
    module_float, _ = _fit("float32", explicit)
    # The CPU's numbers do not change: auto is float32 there, bit for bit.
    assert torch.equal(module_auto.weight, module_float.weight)
    opted: dict[str, list] = {"loss": [], "validate": []}
    _, opted_result = _fit("bf16", opted, mixed_precision=False)
    assert opted_result.precision == "float32" and {e for e in opted["loss"]} == {(False, torch.float32)}


def test_validation_on_a_gpu_turns_tf32_off_and_restores_it():
    before = [getattr(holder, name) for holder, name, _ in _tf32_switches()]
    with full_float32(torch.device("cuda")):
        assert [getattr(holder, name) for holder, name, _ in _tf32_switches()] == [
            value for _, _, value in _tf32_switches()
        ]
    assert [getattr(holder, name) for holder, name, _ in _tf32_switches()] == before


def test_pick_device_refuses_cuda_without_it_and_auto_falls_back(monkeypatch):
    # A family's train called from Python (not the CLI) gets the same clear refusal.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"--device cuda: .*use --device cpu"):
        pick_device(TrainControl(device="cuda"))
    assert pick_device(TrainControl(device="auto")) == torch.device("cpu")


def test_precision_resolves_per_device_and_refuses_what_the_gpu_lacks(monkeypatch):
    with pytest.raises(ValueError, match="--precision: 'fp8' is not one of auto, float32, bf16"):
        resolve_precision("fp8", "cpu")
    assert [resolve_precision(p, "cpu") for p in ("auto", "float32", "bf16")] == [
        "float32",
        "float32",
        "bf16",
    ]
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "an old GPU")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_precision("auto", "cuda") == "bf16" and resolve_precision("float32", "cuda") == "float32"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_precision("auto", "cuda") == "float32"
    with pytest.raises(ValueError, match="--precision bf16: an old GPU has no bfloat16"):
        resolve_precision("bf16", "cuda")


def test_the_training_rate_leaves_the_warm_up_steps_out():
    module = torch.nn.Linear(3, 1)
    train = torch.randn(640, 3)
    calls = [0]

    def loss_fn(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        calls[0] += 1
        # A first step as slow as a GPU's first (cuDNN's search, allocator growth), then 10 ms.
        time.sleep(0.5 if calls[0] == 1 else 0.01)
        return (module(batch) ** 2).mean()

    result = fit(
        module,
        train,
        loss_fn=loss_fn,
        validate=lambda: 0.0,
        control=TrainControl(seed=0, progress=False),
        epochs=1,
        batch_size=32,
        lr=1e-3,
        weight_decay=0.0,
        patience=10,
        grad_clip=1.0,
    )
    # Counting the first step, 640 rows took at least 0.69 s (927 rows/s); the 15 steps after the
    # warm-up ones run at up to 3,200 rows/s.
    assert result.rows_per_second > 640 / 0.69, result


def test_noise_on_device_changes_nothing_on_the_cpu():
    def run(on_device: bool) -> torch.Tensor:
        torch.manual_seed(0)
        module = torch.nn.Linear(3, 1)
        devices = set()

        def loss_fn(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
            devices.add(generator.device.type)
            noise = torch.randn(batch.shape, generator=generator, device=generator.device)
            return (module(batch + noise) ** 2).mean()

        fit(
            module,
            torch.randn(64, 3, generator=torch.Generator().manual_seed(1)),
            loss_fn=loss_fn,
            validate=lambda: 0.0,
            control=TrainControl(seed=0, progress=False),
            epochs=2,
            batch_size=16,
            lr=1e-2,
            weight_decay=0.0,
            patience=10,
            grad_clip=1.0,
            noise_on_device=on_device,
        )
        assert devices == {"cpu"}
        return module.weight.detach().clone()

    assert torch.equal(run(True), run(False))
