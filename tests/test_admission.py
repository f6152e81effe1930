"""Heavy requests are admitted a few at a time (429 beyond), which bounds the server's memory."""

from __future__ import annotations

import concurrent.futures as cf
from pathlib import Path

import httpx
import numpy as np
import pytest
from servers import running_server

pytestmark = pytest.mark.slow
MODEL = "admission-gaussian"


def _peak_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def _reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # resets VmHWM to the current RSS


@pytest.fixture(scope="module")
def gated(train_model, tmp_path_factory):
    train_model("gaussian", "digits", name=MODEL)
    log = tmp_path_factory.mktemp("admission") / "server.log"
    env = {"GENREG_MODELS": MODEL, "GENREG_MAX_HEAVY": "1", "GENREG_MAX_TWO_SAMPLE": "2000"}
    with running_server(log, **env) as srv:
        yield srv


def _heavy_body(seed: int) -> dict:
    x = np.random.default_rng(seed).integers(0, 17, (2000, 64)).tolist()
    return {"model": MODEL, "x": x, "n_model": 2000, "test": "mmd", "seed": seed}


def test_concurrent_heavy_requests_beyond_the_limit_get_429_and_memory_stays_bounded(gated):
    (worker,) = gated.workers()
    bodies = [_heavy_body(i) for i in range(6)]
    with httpx.Client(base_url=gated.base, timeout=120) as client:
        client.post("/two_sample_test", json=bodies[0])  # warm: first-call allocations
        _reset_peak(worker)
        base = _peak_kib(worker)
        alone = client.post("/two_sample_test", json=bodies[0])
        assert alone.status_code == 200, alone.text
        one = _peak_kib(worker) - base
        _reset_peak(worker)
        with cf.ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(lambda b: client.post("/two_sample_test", json=b), bodies))
        six = _peak_kib(worker) - base
    statuses = sorted(a.status_code for a in answers)
    assert set(statuses) <= {200, 429} and 200 in statuses and 429 in statuses, statuses
    busy = next(a for a in answers if a.status_code == 429)
    assert busy.json()["field"] == "x" and "heavy" in busy.json()["error"]
    assert busy.headers["retry-after"] == "1"
    # One heavy request at a time: six at once peak no higher than one alone and the parsed
    # bodies of the refused ones (an ungated server holds six tests' matrices: about 6x).
    assert one > 50_000, f"a two-sample test at its limits should take > 50 MB, took {one} KiB"
    assert six < 1.5 * one, (one, six)


def test_light_requests_are_not_gated(gated):
    with httpx.Client(base_url=gated.base, timeout=60) as client:
        with cf.ThreadPoolExecutor(8) as pool:
            answers = list(
                pool.map(
                    lambda s: client.post("/sample", json={"model": MODEL, "n": 16, "seed": s}), range(16)
                )
            )
    assert {a.status_code for a in answers} == {200}
