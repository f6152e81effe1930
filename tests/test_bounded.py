"""A request's memory and time are bounded by construction (registry.runtime.budget).

Graph calls run over chunks sized by each graph's measured cost, with the noise drawn chunk by
chunk from the same stream (the answers are byte-identical to one call's); a request stops at
the next chunk once its answer is not wanted; and the largest request the service publishes for
each model, on each endpoint, stays within the memory budget, measured from outside.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from servers import PeakRSS, largest_bodies, running_server, status_kib

from registry.runtime import scoring
from registry.runtime.budget import RESERVE, TOKEN, BudgetError, Cancelled, Token, row_limit
from registry.runtime.graphs import GraphCost, NoiseInput, draw_noise, noise_chunks
from registry.runtime.models import LoadedModel
from registry.runtime.store import get_model
from registry.runtime.two_sample import _off_diagonal_median, _sq_dists, mmd_test

pytestmark = pytest.mark.slow

SPECS = [
    NoiseInput(name="u", dist="uniform", dim=3),
    NoiseInput(name="eps", dist="normal", dim=5),
    NoiseInput(name="g", dist="gumbel", dim=2),
]


@pytest.mark.parametrize(("n", "chunk"), [(10, 3), (7, 7), (100, 1), (33, 10), (5, 64)])
def test_noise_drawn_in_chunks_is_the_noise_drawn_at_once(n, chunk):
    whole_rng, chunked_rng = np.random.default_rng(5), np.random.default_rng(5)
    whole = draw_noise(SPECS, n, whole_rng, 0.7)
    parts = list(noise_chunks(SPECS, n, chunked_rng, chunk, 0.7))
    assert len(parts) == -(-n // chunk)
    for name, value in whole.items():
        assert np.array_equal(value, np.concatenate([p[name] for p in parts]))
    # the caller's stream ends where draw_noise leaves it
    assert whole_rng.random() == chunked_rng.random()


@pytest.mark.parametrize(
    ("name", "kind", "k"),
    [
        ("diffusion-digits", "bound", 8),
        ("vae-digits", "bound", 8),
        ("flowvd-digits", "bound", 4),
        ("autoregressive-digits", "log_prob", 1),
        ("gan-8gaussians", "discriminator", 1),
    ],
)
def test_chunked_answers_are_byte_identical_to_one_call(trained, name, kind, k):
    whole = LoadedModel(get_model(name), threads=1)
    x = whole.sample(300, seed=1)
    one = whole.plan_score(len(x), kind, k)
    # a budget that leaves room for a fifth of the rows in one call
    cost = whole.cost(
        whole.stored.graph("discriminator") if kind == "discriminator" else whole.stored.graph("scorer", kind)
    )
    per_row = (one.chunk_bytes - cost.call_bytes) / one.chunk
    budget = int(one.held + RESERVE + cost.call_bytes + per_row * one.rows / 5)
    tiny = LoadedModel(get_model(name), threads=1, budget=budget)
    assert tiny.plan_score(len(x), kind, k).calls >= 5 > one.calls
    assert np.array_equal(
        scoring.score(whole, x, kind, k=k, seed=3).scores, scoring.score(tiny, x, kind, k=k, seed=3).scores
    )
    drawn = whole.plan_sample(300)
    sampler = whole.cost(whole.stored.graph("sampler"))
    per_row = (drawn.chunk_bytes - sampler.call_bytes) / drawn.chunk
    tiny.budget = int(drawn.held + RESERVE + sampler.call_bytes + per_row * 300 / 5)
    assert tiny.plan_sample(300).calls > whole.plan_sample(300).calls
    assert np.array_equal(whole.sample(300, seed=2), tiny.sample(300, seed=2))


def test_every_stored_graph_carries_its_measured_cost(trained):
    stored = get_model("diffusion-digits")
    for spec in stored.graphs:
        assert spec.cost is not None and spec.cost.row_bytes > 0 and spec.cost.row_seconds > 0
    # the scorer runs 20 strata per row through the network: it costs more per row than a step
    assert stored.graph("scorer").cost.row_bytes > 5 * stored.graph("sampler").cost.row_bytes
    assert "cost" in stored.meta["stages"]


def test_a_request_whose_held_arrays_exceed_the_budget_is_refused_before_any_call(trained):
    model = LoadedModel(get_model("flow-digits"), threads=1, budget=RESERVE + (1 << 20))
    with pytest.raises(BudgetError) as err:
        model.plan_score(4096, "bound", 16)
    assert err.value.field == "k" and "GENREG_REQUEST_MEMORY" in str(err.value)


def test_a_cancelled_request_stops_at_the_next_chunk(trained):
    model = LoadedModel(get_model("diffusion-digits"), threads=1, budget=RESERVE + (4 << 20))
    x = model.sample(64, seed=0)
    calls = []
    run = model._shrinking["scorer.onnx"]
    token = Token()

    def counted(feeds):
        calls.append(len(next(iter(feeds.values()))))
        if len(calls) == 2:
            token.cancel("the client disconnected")
        return run(feeds)

    model._shrinking["scorer.onnx"] = model.runners["scorer.onnx"] = counted
    reset = TOKEN.set(token)
    try:
        with pytest.raises(Cancelled, match="disconnected"):
            model.log_weights(x, 0, 16)
    finally:
        TOKEN.reset(reset)
    assert len(calls) == 2 < model.plan_score(64, "bound", 16).calls
    # a deadline in the past stops it before the first call
    reset = TOKEN.set(Token(deadline=time.monotonic() - 1))
    try:
        with pytest.raises(Cancelled, match="deadline"):
            model.sample(4, seed=0)
    finally:
        TOKEN.reset(reset)


def test_row_limits_follow_the_measured_rate_as_powers_of_two():
    cost = GraphCost(row_bytes=1, call_bytes=0, row_seconds=1e-3, call_seconds=1e-3, rows=64)
    assert row_limit(cost, 1 << 18, 60.0) == 16384  # 30 s at 1 ms a row: 30,000 -> 16,384
    assert row_limit(cost, 1 << 10, 60.0) == 1 << 10
    assert row_limit(cost, 1 << 18, None) == 1 << 18
    assert row_limit(None, 77, 60.0) == 77


def test_the_lean_mmd_is_the_textbook_computation():
    rng = np.random.default_rng(0)
    for n in (4, 5, 40):
        a = rng.normal(size=(n, 3))
        plain = np.maximum((a * a).sum(1)[:, None] + (a * a).sum(1)[None, :] - 2.0 * a @ a.T, 0.0)
        assert np.array_equal(_sq_dists(a, a), plain)
        assert _off_diagonal_median(plain) == float(np.median(plain[np.triu_indices(n, 1)]))
    x, y = rng.normal(size=(60, 2)), rng.normal(size=(50, 2)) + 1.0
    assert mmd_test(x, y)["p_value"] < 0.05


# --- the largest published requests, against a real server ------------------------------------

BUDGET_MIB = 96
# Allocator noise: pages touched by Python's and glibc's bookkeeping, not by the request's arrays.
SLACK_MIB = 16


def test_the_largest_published_requests_stay_within_the_budget(trained, tmp_path):
    """Every demo family, the largest request /models publishes on each endpoint: each answer is
    a 200 within the deadline or an immediate refusal, the worker's peak stays within the budget
    over its idle size, and its idle size comes back after the heavy requests."""
    import httpx

    limits = {"max_rows": 2048, "max_draws": 64, "max_n": 2048, "max_two_sample": 1000}
    env = {
        "GENREG_MODELS": "flow-digits,vae-digits,gan-8gaussians,autoregressive-digits,diffusion-digits,"
        "categorical-digits,flow-8gaussians,categorical-digits-cond",
        "GENREG_REQUEST_MEMORY": str(BUDGET_MIB << 20),
        "GENREG_MAX_ROWS": str(limits["max_rows"]),
        "GENREG_MAX_DRAWS": str(limits["max_draws"]),
        "GENREG_MAX_N": str(limits["max_n"]),
        "GENREG_MAX_TWO_SAMPLE": str(limits["max_two_sample"]),
        "GENREG_POLL_SECONDS": "0",
        "GENREG_ACCESS_LOG": "0",
        # A 4-s deadline: the published limits are what runs in 2 s at each graph's measured rate.
        "BENTOML_CONFIG_OPTIONS": "services.genreg.traffic.timeout=4",
    }
    report = []
    with (
        running_server(tmp_path / "server.log", workers=1, **env) as srv,
        httpx.Client(base_url=srv.base, timeout=60) as client,
    ):
        worker = max(srv.workers(), key=lambda pid: status_kib(pid, "VmRSS"))
        models = {m["name"]: m for m in client.get("/models").json()["models"]}
        assert len(models) == 8
        digits = client.post("/sample", json={"model": "categorical-digits", "n": 200, "seed": 1}).json()[
            "samples"
        ]
        toy = client.post("/sample", json={"model": "flow-8gaussians", "n": 200, "seed": 1}).json()["samples"]
        plans = [
            (path, body)
            for info in models.values()
            for path, body in largest_bodies(info, toy if "8gaussians" in info["name"] else digits, limits)
        ]
        # One heavy request first: the worker's one-off allocations (imports, thread pools) are
        # then part of its idle size.
        client.post(*plans[0][:1], json=plans[0][1])
        time.sleep(1.0)
        for path, body in plans:
            idle = status_kib(worker, "VmRSS")
            Path(f"/proc/{worker}/clear_refs").write_text("5")
            peak = PeakRSS(worker)
            peak.start()
            start = time.monotonic()
            answer = client.post(path, json=body)
            seconds = time.monotonic() - start
            top = peak.stop()
            what = f"{path} {body['model']} {body.get('kind', '')} k={body.get('k')} n={body.get('n')} rows={len(body.get('x', body.get('z', [])))}"
            time.sleep(0.5)
            then = status_kib(worker, "VmRSS")
            report.append(
                f"{what}: {answer.status_code} in {seconds:.1f} s, +{(top - idle) / 1024:.0f} MiB, "
                f"then {then / 1024:.0f} MiB"
            )
            # Memory returns: each request leaves at most its graphs' kept arenas (light calls
            # keep theirs, up to SHRINK_BYTES a session, for speed)
            assert then <= 1.2 * idle, "\n".join(report)
            assert answer.status_code in (200, 429), f"{what}: {answer.status_code} {answer.text[:300]}"
            if answer.status_code == 429:
                assert seconds < 1.0, what  # refused at once, never started
            assert seconds < 6.0, what
            assert (top - idle) / 1024 <= BUDGET_MIB + SLACK_MIB, "\n".join(report)
        time.sleep(10)
        after = status_kib(worker, "VmRSS")
    print("\n".join(report))
    # 10 s after the last, within 20% of the idle size before it
    assert after <= 1.2 * idle, "\n".join(
        [*report, f"idle {idle / 1024:.0f} MiB, {after / 1024:.0f} MiB after"]
    )


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def test_a_computation_stops_when_its_client_goes_away(trained, tmp_path):
    """A score planned at several seconds, whose client gives up after half a second: the
    worker's CPU goes quiet at the next chunk instead of finishing the work nobody will read."""
    import httpx

    env = {
        "GENREG_MODELS": "diffusion-digits",
        "GENREG_REQUEST_MEMORY": str(64 << 20),
        "GENREG_POLL_SECONDS": "0",
        "GENREG_ACCESS_LOG": "0",
    }
    with (
        running_server(tmp_path / "server.log", workers=1, **env) as srv,
        httpx.Client(base_url=srv.base, timeout=60) as client,
    ):
        worker = max(srv.workers(), key=lambda pid: status_kib(pid, "VmRSS"))
        x = client.post("/sample", json={"model": "diffusion-digits", "n": 64, "seed": 0}).json()["samples"]
        body = {"model": "diffusion-digits", "x": x, "k": 64, "kind": "bound"}
        start = time.monotonic()
        client.post("/score", json=body)  # the whole request, for its time
        whole = time.monotonic() - start
        assert whole > 2.0, f"too short to tell: {whole:.1f} s"
        with pytest.raises(httpx.ReadTimeout):
            client.post("/score", json=body, timeout=0.5)
        time.sleep(1.0)  # the next chunk boundary is a fraction of a second away
        ticks = _cpu_ticks(worker)
        time.sleep(1.0)
        busy = _cpu_ticks(worker) - ticks
    # 100 ticks a second; an abandoned computation would keep the worker at ~100 per second
    assert busy < 20, f"the worker kept computing ({busy} ticks in 1 s; the whole request took {whole:.1f} s)"
