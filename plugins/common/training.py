"""A minibatch training loop with early stopping, a time budget and a progress bar.

On a GPU the loop keeps the GPU fed and uses its bf16 arithmetic where no served number depends
on it:

- the families move their training tensor to the device before :func:`fit`, and every batch is
  indexed there (the permutation is drawn on the CPU, for the same draws on every device, and
  copied once an epoch), so no rows cross the bus per step;
- the training loss's forward runs under ``torch.autocast(device, bfloat16)`` when the
  precision (``TrainControl.precision``, ``genreg train --precision``) resolves to bf16: auto
  does so on a GPU, never on the CPU. Backward, the optimiser and the weights stay float32, and
  validation runs in plain float32 (no autocast, no TF32), as do export, parity and evaluation,
  which run after training on the CPU;
- a family whose maths cannot take bf16 opts out: the whole loss with ``fit(...,
  mixed_precision=False)``, or one part of it (a flow's log-determinants, say) by computing that
  part under ``torch.autocast(x.device.type, enabled=False)`` on ``.float()`` inputs, PyTorch's
  own idiom, which keeps the rest of the network in bf16;
- a loss that draws noise may draw it on the device (``fit(..., noise_on_device=True)``, then
  ``torch.randn(shape, generator=generator, device=generator.device)``) instead of on the CPU
  and copying it each step.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from registry.contract.family import TrainControl
from registry.pipeline.distributed import DEVICES, resolve_device, resolve_precision


@dataclass
class FitResult:
    epochs: int
    best_epoch: int
    best_validation: float
    seconds: float
    stopped: str  # "early-stopping", "epochs" or "time-budget"
    processes: int = 1  # data-parallel ranks that trained it
    # Rows (images, on image data) trained per second of the training steps after the first
    # few, all ranks together; warm-up, validation and best-state copies left out: what says
    # whether the device is kept fed.
    rows_per_second: float = 0.0
    precision: str = "float32"  # the training loss's forward: float32, or bf16 under autocast


def seed_everything(seed: int) -> torch.Generator:
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))
    return torch.Generator().manual_seed(seed)


def with_labels(rows: torch.Tensor, labels: np.ndarray | None) -> torch.Tensor:
    """Rows with each row's class label as one more, last, column (None: the rows as they are).

    The shared minibatch loop (:func:`fit`) and a data-parallel rank's share of each batch then
    keep every label with its row; class numbers are small integers, exact in float32.
    """
    if labels is None:
        return rows
    return torch.cat([rows, torch.as_tensor(labels, dtype=torch.float32).reshape(-1, 1).to(rows.device)], 1)


def split_labels(rows: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(the data's ``dim`` columns, the (n, 1) int64 labels after them, or None without any)."""
    if rows.shape[1] == dim:
        return rows, None
    return rows[:, :dim], rows[:, dim:].round().long()


def pick_device(control: TrainControl) -> torch.device:
    """The device to train on. cpu, cuda or auto as the CLI takes them (ValueError naming
    --device for cuda where PyTorch sees none, not a CUDA error mid-training; auto falls back to
    the CPU); any other name is a torch device string a Python caller chose (``cuda:1``)."""
    name = control.device
    if name in DEVICES:
        name = resolve_device(name)
    if name == "cuda":
        # The process's own GPU (one per rank under --nproc; torch.cuda.set_device chose it).
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device(name)


def train_precision(control: TrainControl, device: torch.device) -> str:
    """``float32`` or ``bf16``: ``control.precision`` (auto, float32, bf16) on ``device``."""
    return resolve_precision(control.precision, "cuda" if device.type == "cuda" else "cpu")


def loss_autocast(device: torch.device, precision: str) -> torch.autocast:
    """The context a training loss's forward runs in: bf16 autocast for ``precision`` bf16, else
    a disabled autocast (plain float32). For a family's own loop (the GAN's)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def _tf32_switches() -> list[tuple[object, str, object]]:
    """(holder, attribute, float32 value) of PyTorch's TF32 switches for matmuls and cuDNN
    convolutions: the fp32_precision settings where this PyTorch has them (2.9 and later; mixing
    them with the older allow_tf32 flags is an error there), else allow_tf32."""
    cudnn_conv = getattr(torch.backends.cudnn, "conv", None)
    if cudnn_conv is not None and hasattr(cudnn_conv, "fp32_precision"):
        return [
            (torch.backends.cuda.matmul, "fp32_precision", "ieee"),
            (cudnn_conv, "fp32_precision", "ieee"),
        ]
    return [(torch.backends.cuda.matmul, "allow_tf32", False), (torch.backends.cudnn, "allow_tf32", False)]


@contextmanager
def full_float32(device: torch.device) -> Iterator[None]:
    """Plain float32 arithmetic for what picks or reports a number (validation): no autocast,
    and on a GPU no TF32, which PyTorch lets cuDNN's convolutions use by default."""
    with torch.autocast(device.type, enabled=False):
        if device.type != "cuda":
            yield
            return
        switches = _tf32_switches()
        saved = [getattr(holder, name) for holder, name, _ in switches]
        try:
            for holder, name, value in switches:
                setattr(holder, name, value)
            yield
        finally:
            for (holder, name, _), value in zip(switches, saved, strict=True):
                setattr(holder, name, value)


def _sync(device: torch.device) -> None:
    """Wait for the device's queued work, so that a clock read after it counts that work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rate(rows: int, seconds: float, warm_rows: int, warm_seconds: float) -> float:
    """Rows per second after the warm-up steps, or over every step where none came after them."""
    if rows > warm_rows and seconds > warm_seconds > 0:
        return (rows - warm_rows) / (seconds - warm_seconds)
    return rows / seconds if seconds > 0 else 0.0


def data_parallel_world() -> tuple[int, int]:
    """(rank, world size) of a running data-parallel group; (0, 1) outside one."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _Loss(torch.nn.Module):
    """The loss as a module's forward, so DistributedDataParallel can wrap it: the families'
    losses call their models' own methods (log_prob, encode), not forward."""

    def __init__(self, module: torch.nn.Module, loss_fn: Callable[..., torch.Tensor]) -> None:
        super().__init__()
        self.module = module
        self.loss_fn = loss_fn

    def forward(self, batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return self.loss_fn(batch, generator)


def _agree(values: list[float], src: int = 0) -> list[float]:
    """Rank ``src``'s values on every rank: the group must take the same decisions."""
    t = torch.tensor(values, dtype=torch.float64)
    if torch.distributed.get_backend() == "nccl":
        t = t.cuda()
    torch.distributed.broadcast(t, src)
    return t.cpu().tolist()


WARM_STEPS = 5  # steps left out of the rate that plans a time budget (allocator growth, first calls)


def fit(
    module: torch.nn.Module,
    train: torch.Tensor,
    *,
    loss_fn: Callable[[torch.Tensor, torch.Generator], torch.Tensor],
    validate: Callable[[], float],
    control: TrainControl,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    patience: int,
    grad_clip: float,
    unit: str = "bits/dim",
    mixed_precision: bool = True,
    noise_on_device: bool = False,
) -> FitResult:
    """Minimise ``loss_fn`` over shuffled minibatches of ``train``; keep the best validation state.

    ``validate`` returns a number to minimise, in ``unit``. A non-finite loss stops the
    epoch's update (the step is skipped) rather than poisoning the weights.

    Inside a data-parallel group (``genreg train --nproc N``: torch.distributed initialised)
    every rank draws the same permutation and takes its share of each global batch of
    ``batch_size`` rows; DistributedDataParallel averages the gradients, so the group takes the
    steps one process would with the same global batch. Rank 0's validation, time budget and
    stopping decisions are broadcast, so the ranks stop together.

    ``control.precision`` chooses the loss forward's arithmetic (module docstring);
    ``mixed_precision=False`` keeps a family's loss in float32 whatever it asks.

    ``noise_on_device=True`` hands ``loss_fn`` a generator on the training device (a CUDA one on
    a GPU), for a loss that draws with ``device=generator.device``: its noise is then made where
    it is used, not on one CPU core and copied every step (measured here: 8 ms of a core a step
    for a diffusion model's 64 x 4 x 3,072 Gaussians). On the CPU it changes nothing; on a GPU
    the draws are reproducible by seed there, but not the CPU's. The permutation of the rows
    is drawn on the CPU either way.
    """
    generator = seed_everything(control.seed)
    device = train.device
    on_device = noise_on_device and device.type != "cpu"

    def draws(seed: int) -> torch.Generator:
        return (
            torch.Generator(device=device).manual_seed(seed)
            if on_device
            else torch.Generator().manual_seed(seed)
        )

    noise = draws(control.seed) if on_device else generator
    precision = train_precision(control, device) if mixed_precision else "float32"
    rank, world = data_parallel_world()
    step_module: torch.nn.Module = module
    if world > 1:
        # Data-dependent initialisation (actnorm) runs on the first forward; run it on the same
        # global batch on every rank before DDP starts, so all ranks begin from one state.
        with torch.no_grad():
            first = torch.randperm(len(train), generator=torch.Generator().manual_seed(control.seed))[
                :batch_size
            ]
            module.train()
            loss_fn(train[first.to(device)], draws(control.seed + 7))
        ddp_kwargs = {"device_ids": [device.index]} if device.type == "cuda" else {}
        step_module = torch.nn.parallel.DistributedDataParallel(_Loss(module, loss_fn), **ddp_kwargs)
    opt = torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=weight_decay)
    epochs = control.epochs or epochs
    steps_per_epoch = -(-len(train) // batch_size)
    # Cosine decay over the planned steps: the late small steps are what settle a flow's
    # density on the modes. Under a time budget the plan is re-cut after every epoch to the
    # epochs that fit (never more than asked for), so the decay still completes instead of
    # stopping at a high rate. The first epoch is left out of the estimate once others exist:
    # it pays for warm-up (data-dependent initialisation, allocator growth) and made the plan
    # far too short when it alone was used.
    requested = epochs
    plan = [epochs * steps_per_epoch]
    schedule = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step / plan[0], 1.0)))
    )
    deadline = time.monotonic() + control.time_budget if control.time_budget else math.inf
    best = (math.inf, 0)
    best_state = copy.deepcopy(module.state_dict())
    start = time.monotonic()
    first_epoch_end = start
    stopped = "epochs"
    bar = tqdm(
        range(1, epochs + 1), disable=not control.progress or rank > 0, unit="epoch", dynamic_ncols=True
    )
    epoch = 0
    # One process under a time budget plans by steps, not epochs: an epoch of a large data set
    # (patches-rgb: 20,790 colour patches) can outlast the whole budget, so the rate is measured
    # every few steps after a warm-up, the cosine plan re-cut to the steps that fit, and the
    # deadline honoured mid-epoch. A data-parallel group keeps epoch granularity (its ranks
    # agree on stopping once per epoch).
    by_steps = math.isfinite(deadline) and world == 1
    done, warm, out_of_time = 0, None, False
    rows_trained, step_seconds = 0, 0.0
    # The rows and seconds of the first WARM_STEPS steps (data-dependent initialisation, cuDNN's
    # algorithm search, allocator growth), left out of the rate when later steps exist.
    warm_rows, warm_seconds = 0, 0.0
    for epoch in bar:
        module.train()
        perm = torch.randperm(len(train), generator=generator).to(device)
        # The epoch's summed loss stays on the device: reading it every step would make the
        # CPU wait for the GPU twice a step instead of once (the finiteness check).
        total, count = torch.zeros((), device=device), 0
        steps_start = time.monotonic()
        for i in range(0, len(train), batch_size):
            if by_steps and done >= plan[0]:
                break  # the plan's last step: the learning rate has decayed
            if world > 1:
                share = perm[i : i + batch_size][rank::world]
                if len(perm[i : i + batch_size]) < world:
                    break  # a last batch too small to give every rank a row
                batch = train[share]
                with loss_autocast(device, precision):
                    loss = step_module(batch, noise)
                finite = torch.tensor([float(torch.isfinite(loss))], device=loss.device)
                torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
                if not bool(finite.item()):  # every rank skips the step together
                    continue
            else:
                batch = train[perm[i : i + batch_size]]
                with loss_autocast(device, precision):
                    loss = loss_fn(batch, noise)
                if not torch.isfinite(loss):
                    continue
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(module.parameters(), grad_clip)
            opt.step()
            schedule.step()
            total += loss.detach().float() * len(batch)
            count += len(batch)
            rows_trained += len(perm[i : i + batch_size])  # the global batch, every rank's share
            done += 1
            if done == WARM_STEPS:
                _sync(device)
                warm_rows, warm_seconds = rows_trained, step_seconds + time.monotonic() - steps_start
            if by_steps:
                now = time.monotonic()
                if done == WARM_STEPS:
                    warm = (now, done)
                elif warm is not None and done % 10 == 0:
                    per_step = (now - warm[0]) / (done - warm[1])
                    plan[0] = max(
                        min(requested * steps_per_epoch, done + int((deadline - now) / per_step)), done
                    )
                if now > deadline:
                    out_of_time = True
                    break
        _sync(device)
        now = time.monotonic()
        step_seconds += now - steps_start
        if epoch == 1:
            first_epoch_end = now
        if math.isfinite(deadline) and not by_steps:  # by steps: the plan was re-cut as it ran
            per_epoch = (now - first_epoch_end) / (epoch - 1) if epoch > 1 else now - start
            fits = epoch + int(max(deadline - now, 0.0) / max(per_epoch, 1e-6))
            epochs = max(min(fits, requested), epoch)
        module.eval()
        with full_float32(device):
            val = validate()
        out_of_time = out_of_time or time.monotonic() > deadline
        if world > 1:
            val, epochs, out_of_time = _agree([val, float(epochs), float(out_of_time)])
            epochs, out_of_time = int(epochs), bool(out_of_time)
        if by_steps:
            epochs = max(-(-plan[0] // steps_per_epoch), epoch)
        else:
            plan[0] = epochs * steps_per_epoch
        if val < best[0]:
            best = (val, epoch)
            best_state = copy.deepcopy(module.state_dict())
        bar.set_postfix_str(
            f"train {float(total) / max(count, 1):.3f} val {val:.3f} {unit} (best {best[0]:.3f} @ {best[1]})"
        )
        if epoch - best[1] >= patience:
            stopped = "early-stopping"
            break
        if out_of_time:
            stopped = "time-budget"
            break
        if epoch >= epochs:  # the plan, cut to fit a time budget
            stopped = "time-budget" if epochs < requested else "epochs"
            break
    bar.close()
    module.load_state_dict(best_state)
    module.eval()
    return FitResult(
        epoch,
        best[1],
        best[0],
        time.monotonic() - start,
        stopped,
        world,
        rows_per_second=_rate(rows_trained, step_seconds, warm_rows, warm_seconds),
        precision=precision,
    )


def fit_config(
    module: torch.nn.Module,
    train: torch.Tensor,
    config: object,
    *,
    loss_fn: Callable[[torch.Tensor, torch.Generator], torch.Tensor],
    validate: Callable[[], float],
    control: TrainControl,
    mixed_precision: bool = True,
    noise_on_device: bool = False,
) -> FitResult:
    """:func:`fit` with the optimisation settings a family config carries under the usual names
    (epochs, batch_size, lr, weight_decay, patience, grad_clip)."""
    return fit(
        module,
        train,
        loss_fn=loss_fn,
        validate=validate,
        control=control,
        epochs=config.epochs,
        batch_size=config.batch_size,
        lr=config.lr,
        weight_decay=config.weight_decay,
        patience=config.patience,
        grad_clip=config.grad_clip,
        mixed_precision=mixed_precision,
        noise_on_device=noise_on_device,
    )


def run_numpy(fn: Callable[..., torch.Tensor], *arrays: np.ndarray) -> np.ndarray:
    """Call a torch function on float32 copies of numpy arrays, without gradients; float64 out."""
    with torch.no_grad():
        return fn(*[torch.as_tensor(np.asarray(a, dtype=np.float32)) for a in arrays]).double().numpy()
