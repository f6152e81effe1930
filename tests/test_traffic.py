"""The per-request layer of genreg's routes (services.traffic): what BentoML's middlewares did
for them before the routes moved in front: the concurrency cap, the deadline, an error body for
a bug, the request metrics and the access log."""

from __future__ import annotations

import asyncio
import json
import logging
import time

import numpy as np
import pytest
from prometheus_client import REGISTRY

from services.traffic import Traffic


def _value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _scope(path: str = "/score") -> dict:
    return {"type": "http", "method": "POST", "path": path, "headers": [], "client": ("127.0.0.1", 5000)}


async def _call(traffic: Traffic, handler, endpoint: str = "score", protocol: str = "genreg"):
    sent: list[dict] = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    await traffic(endpoint, protocol, handler, _scope(), receive, send)
    status = sent[0]["status"] if sent else None
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, (json.loads(body) if body else None)


async def _ok(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


def test_requests_beyond_the_cap_get_429_and_the_cap_frees_again():
    async def run():
        traffic = Traffic(max_concurrency=2, timeout=5, access=False)
        release = asyncio.Event()

        async def slow(scope, receive, send):
            await release.wait()
            await _ok(scope, receive, send)

        held = [asyncio.create_task(_call(traffic, slow)) for _ in range(2)]
        await asyncio.sleep(0.01)
        assert traffic.in_flight == 2 and not traffic.alone()
        overlapped = traffic.overlapped_at
        busy = await _call(traffic, _ok)
        probe = await _call(traffic, _ok, "server_live", "v2")  # probes are never capped
        release.set()
        done = await asyncio.gather(*held)
        after = await _call(traffic, _ok)
        assert traffic.in_flight == 0 and not traffic.alone()  # two overlapped a moment ago
        traffic.overlapped_at = overlapped - traffic.quiet_seconds
        assert traffic.alone()
        return busy, probe, done, after, traffic.in_flight

    busy, probe, done, after, in_flight = asyncio.run(run())
    assert busy[0] == 429 and "2 requests are in flight" in busy[1]["error"] and probe[0] == 200
    assert [d[0] for d in done] == [200, 200] and after[0] == 200 and in_flight == 0


def test_an_answer_that_does_not_start_in_time_is_a_504_in_the_protocol_s_error_body():
    async def stuck(scope, receive, send):
        await asyncio.sleep(10)

    before = _value("genreg_requests_total", endpoint="infer", protocol="v2", code="504")
    status, body = asyncio.run(_call(Traffic(timeout=0.05, access=False), stuck, "infer", "v2"))
    assert status == 504 and body == {"error": "the answer did not start within 0.05 seconds"}
    assert _value("genreg_requests_total", endpoint="infer", protocol="v2", code="504") == before + 1


def test_the_deadline_is_for_the_answer_to_start_not_to_end():
    async def slow_reader(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await asyncio.sleep(0.1)  # twice the deadline, after the answer started
        await send({"type": "http.response.body", "body": b'{"whole": true}'})

    status, body = asyncio.run(_call(Traffic(timeout=0.05, access=False), slow_reader))
    assert status == 200 and body == {"whole": True}


@pytest.mark.parametrize("error", [ZeroDivisionError, TimeoutError])
def test_a_bug_in_a_handler_is_a_500_body_and_one_logged_traceback(caplog, error):
    async def broken(scope, receive, send):
        raise error("a bug")  # a TimeoutError of the handler's own is no 504: the deadline holds

    with caplog.at_level(logging.ERROR, logger="genreg.service"):
        status, body = asyncio.run(_call(Traffic(access=False), broken))
    assert status == 500 and body["error"].startswith("internal error") and body["field"] is None
    assert [r.exc_info[0] for r in caplog.records] == [error]


def test_each_request_is_counted_timed_and_logged_once(caplog):
    labels = {"endpoint": "score", "protocol": "genreg"}
    count = _value("genreg_request_duration_seconds_count", **labels)
    ok = _value("genreg_requests_total", **labels, code="200")
    with caplog.at_level(logging.INFO, logger="genreg.access"):
        assert asyncio.run(_call(Traffic(access=True), _ok))[0] == 200
    assert _value("genreg_request_duration_seconds_count", **labels) == count + 1
    assert _value("genreg_requests_total", **labels, code="200") == ok + 1
    assert _value("genreg_requests_in_progress", **labels) == 0
    (line,) = [r.getMessage() for r in caplog.records if r.name == "genreg.access"]
    assert line.startswith("127.0.0.1:5000 POST /score 200 ") and line.endswith("ms")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="genreg.access"):
        asyncio.run(_call(Traffic(access=False), _ok))
        probes = _value("genreg_requests_total", endpoint="server_ready", protocol="v2", code="200")
        asyncio.run(_call(Traffic(access=True), _ok, "server_ready", "v2"))  # a probe: counted only
    assert not [r for r in caplog.records if r.name == "genreg.access"]
    assert _value("genreg_requests_total", endpoint="server_ready", protocol="v2", code="200") == probes + 1


class _Timed:
    """What services.service._call asks of a model: how long a call is expected to take."""

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds

    def expected_seconds(self, role: str, rows: int, calls: int = 1) -> float | None:
        return self.seconds


def test_model_calls_run_on_the_event_loop_only_when_expected_to_be_short(monkeypatch):
    import threading

    from services import service

    def where(seconds: float | None, in_flight: int, overlapped_ago: float = 60.0) -> str:
        monkeypatch.setattr(service.TRAFFIC, "in_flight", in_flight)
        monkeypatch.setattr(service.TRAFFIC, "overlapped_at", time.perf_counter() - overlapped_ago)
        caller = threading.get_ident()
        ran = asyncio.run(service._call(threading.get_ident, _Timed(seconds), "scorer", 1))
        return "loop" if ran == caller else "thread"

    assert service.INLINE_MS < 10 < service.ALONE_MS < 100
    assert where(None, 1) == "thread"  # never measured: no guess
    assert where(0.0002, 5) == "loop"  # shorter than a thread hop, whatever else waits
    assert where(0.010, 1) == "loop"  # 10 ms alone: nothing else waits for the loop
    assert where(0.010, 2) == "thread"  # 10 ms with another request in flight: keep it free
    assert where(0.010, 1, overlapped_ago=0.01) == "thread"  # alone now, not a moment ago
    assert where(1.0, 1) == "thread"  # a second-long call never blocks the loop, alone or not


def test_a_model_learns_its_own_time_per_row_from_its_calls(trained):
    from registry.runtime.models import LoadedModel
    from registry.runtime.scoring import score
    from registry.runtime.store import get_model

    loaded = LoadedModel(get_model("gaussian-digits"), providers=["CPUExecutionProvider"])
    assert loaded.expected_seconds("scorer", 64) is None
    x = np.full((256, 64), 3.0)
    for _ in range(3):
        score(loaded, x, "bound", seed=0)
    per_row, per_call = loaded.row_seconds["scorer"], loaded.call_seconds["scorer"]
    assert 0 < per_row < 0.01 and 0 < per_call < 1
    assert loaded.expected_seconds("scorer", 1000) == pytest.approx(per_call + 1000 * per_row)
    # A step loop of one row and 1,000 steps is 1,000 calls, not one row's worth of time.
    assert loaded.expected_seconds("scorer", 1000, calls=1000) >= 1000 * per_call
    assert loaded.expected_seconds("sampler", 1) is None  # each graph role on its own


TRACED = """
import asyncio, json, sys
from bentoml._internal.configuration.containers import BentoMLContainer
if sys.argv[1] == "on":
    BentoMLContainer.config.tracing.exporter_type.set("in_memory")
    BentoMLContainer.config.tracing.sample_rate.set(1.0)
from services.routes import ApiRoutes
from services.service import tracing
from services.traffic import Traffic

async def bentoml_app(scope, receive, send):
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})

async def get(app, path):
    sent = []
    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}
    async def send(message):
        sent.append(message)
    scope = {"type": "http", "method": "GET", "path": path, "raw_path": path.encode(),
             "query_string": b"", "headers": [], "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 2),
             "scheme": "http", "http_version": "1.1", "root_path": ""}
    await app(scope, receive, send)
    return sent[0]["status"]

traced = tracing()
app = ApiRoutes(bentoml_app, service=lambda: None, max_body_bytes=1024, auth=False,
                traffic=Traffic(access=False), traced=traced)
statuses = [asyncio.run(get(app, "/v2/health/live")), asyncio.run(get(app, "/healthz"))]
spans = []
if traced is not None:
    provider = BentoMLContainer.tracer_provider.get()
    provider.force_flush()
    for processor in provider._active_span_processor._span_processors:
        spans += [s.attributes.get("http.target") or s.name for s in processor.span_exporter.get_finished_spans()]
print(json.dumps({"traced": traced is not None, "statuses": statuses, "spans": spans}))
"""


def test_genreg_routes_are_traced_where_bentoml_exports_spans_and_cost_nothing_where_not():
    import subprocess
    import sys

    def run(mode: str) -> dict:
        # BentoML's configuration is process-wide: each case in a process of its own.
        out = subprocess.run(
            [sys.executable, "-c", TRACED, mode], capture_output=True, text=True, timeout=120
        )
        assert out.returncode == 0, out.stderr[-3000:]
        return json.loads(out.stdout.strip().splitlines()[-1])

    off, on = run("off"), run("on")
    assert off == {"traced": False, "statuses": [200, 204], "spans": []}
    assert on["traced"] and on["statuses"] == [200, 204]
    # The route of ours is traced (each ASGI send and the request's own span); BentoML's own
    # route is left to BentoML's middleware (not part of this app), so it adds none here.
    assert on["spans"] and all("/healthz" not in s for s in on["spans"]), on["spans"]
    assert any("/v2/health/live" in s for s in on["spans"]), on["spans"]


def test_a_refused_token_is_counted_and_logged_like_any_answer(monkeypatch, caplog):
    from services.auth import BearerAuth
    from services.routes import ApiRoutes

    monkeypatch.setenv("GENREG_API_TOKEN", "secret")

    async def bentoml_app(scope, receive, send):  # stands for BentoML's app: never reached here
        raise AssertionError("a route of ours went to BentoML")

    def guard(app):
        return BearerAuth(app, endpoints={"/models": "models"})

    routes = ApiRoutes(
        guard(bentoml_app),
        service=lambda: None,
        max_body_bytes=1024,
        auth=True,
        traffic=Traffic(access=True),
        guard=guard,
    )
    labels = {"endpoint": "models", "protocol": "genreg", "code": "401"}
    before = _value("genreg_requests_total", **labels)
    sent: list[dict] = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {**_scope("/models"), "method": "GET"}
    with caplog.at_level(logging.INFO, logger="genreg.access"):
        asyncio.run(routes(scope, receive, send))
    assert sent[0]["status"] == 401
    assert _value("genreg_requests_total", **labels) == before + 1
    assert [r.getMessage().split(" ")[:4] for r in caplog.records if r.name == "genreg.access"] == [
        ["127.0.0.1:5000", "GET", "/models", "401"]
    ]


def test_bentoml_s_traffic_configuration_sets_the_limits_of_genreg_s_routes(tmp_path):
    import os
    import subprocess
    import sys

    code = "from services.service import Genreg, TRAFFIC; Genreg.to_asgi(); print(TRAFFIC.timeout, TRAFFIC.max_concurrency)"
    env = {
        **os.environ,
        "BENTOML_HOME": str(tmp_path),
        "BENTOML_CONFIG_OPTIONS": "services.genreg.traffic.timeout=300 services.genreg.traffic.max_concurrency=8",
    }
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split()[-2:] == ["300", "8"]
