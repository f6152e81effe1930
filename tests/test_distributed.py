"""`genreg train --nproc 2`: data-parallel training with torchrun and DistributedDataParallel."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from servers import ROOT

from plugins.common.training import fit
from registry.contract.family import TrainControl

pytestmark = pytest.mark.slow
EPOCHS = "4"
# Same seed, same global batch, same epochs: the two runs differ only in how each batch's
# gradient is summed (and in the dequantisation noise each rank draws), which moves the test
# bound by hundredths of a bit per dimension; a broken gradient average (one rank's share
# only) or unsynchronised ranks move it by tenths.
TOLERANCE_BITS_PER_DIM = 0.05


def _train(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, BENTOML_HOME=str(home))
    cmd = [sys.executable, "-m", "registry.cli", "train", "flow", "--data", "digits", "--quiet", *args]
    return subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)


def _stored(home: Path) -> list[dict]:
    code = (
        "import json\nfrom registry.runtime.store import list_models\n"
        "print(json.dumps([{'tag': m.tag, 'train': m.meta['train'], 'test': m.metrics['test']} "
        "for m in list_models()]))"
    )
    env = dict(os.environ, BENTOML_HOME=str(home))
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True)
    return json.loads(out.stdout)


def test_two_processes_store_one_model_as_good_as_one_process(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    single = _train(one, "--epochs", EPOCHS)
    assert single.returncode == 0, single.stderr
    parallel = _train(two, "--epochs", EPOCHS, "--nproc", "2")
    assert parallel.returncode == 0, parallel.stderr[-3000:]
    # Only rank 0 exports, stores and reports.
    assert parallel.stdout.count("saved flow-digits:") == 1
    (a,), (b,) = _stored(one), _stored(two)
    assert a["train"]["epochs"] == b["train"]["epochs"] == int(EPOCHS)
    assert (a["train"]["processes"], b["train"]["processes"]) == (1, 2)
    gap = abs(a["test"]["bits_per_dim"] - b["test"]["bits_per_dim"])
    assert gap < TOLERANCE_BITS_PER_DIM, (a["test"]["bits_per_dim"], b["test"]["bits_per_dim"])


def test_ranks_stop_together_on_a_time_budget(tmp_path):
    # Rank 0 decides when the budget is spent and the others follow: no rank waits forever
    # in a collective the others have left.
    run = _train(tmp_path, "--epochs", "100000", "--time-budget", "3", "--nproc", "2")
    assert run.returncode == 0, run.stderr[-3000:]
    (model,) = _stored(tmp_path)
    assert model["train"]["stopped"] == "time-budget"


def _regression(rank: int, world: int, store: str, out: str) -> None:
    """fit() on a tiny linear regression, in a group of ``world`` (world 1: no group)."""
    if world > 1:
        torch.distributed.init_process_group("gloo", init_method=store, rank=rank, world_size=world)
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(128, 5, generator=gen)
    y = x @ torch.randn(5, 1, generator=gen) + 0.1 * torch.randn(128, 1, generator=gen)
    train = torch.cat([x, y], 1)
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 1)

    def loss_fn(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return ((model(batch[:, :5]) - batch[:, 5:]) ** 2).mean()

    def validate() -> float:
        with torch.no_grad():
            return float(loss_fn(train, gen))

    fit(
        model,
        train,
        loss_fn=loss_fn,
        validate=validate,
        control=TrainControl(seed=3, progress=False),
        epochs=3,
        batch_size=16,
        lr=0.05,
        weight_decay=0.0,
        patience=100,
        grad_clip=100.0,
    )
    torch.save({k: v.clone() for k, v in model.state_dict().items()}, f"{out}.{rank}")
    if world > 1:
        torch.distributed.destroy_process_group()


def test_data_parallel_steps_are_the_steps_of_one_process(tmp_path):
    # Each global batch of 16 splits into two shares of 8; DDP's averaged gradient is the
    # whole batch's, so after 24 AdamW steps both ranks hold the single process's weights.
    out = str(tmp_path / "weights")
    _regression(0, 1, "", out + "-single")
    store = f"file://{tmp_path / 'rendezvous'}"
    torch.multiprocessing.spawn(_regression, args=(2, store, out), nprocs=2, join=True)
    single = torch.load(out + "-single.0")
    ranks = [torch.load(f"{out}.{r}") for r in (0, 1)]
    for name, value in single.items():
        assert torch.equal(ranks[0][name], ranks[1][name]), f"ranks disagree on {name}"
        assert torch.allclose(ranks[0][name], value, atol=1e-5), (name, ranks[0][name], value)
