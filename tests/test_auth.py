"""Bearer-token auth (GENREG_API_TOKEN) and the body size limit, against the real server."""

from __future__ import annotations

import json
import re

import httpx
import numpy as np
import pytest
from servers import running_server

from services.auth import bearer, check
from services.v2 import endpoint_of

pytestmark = pytest.mark.slow
TOKEN = "s3cret-token-for-tests"
OTHER = "another-client-s-token"  # a second client's: GENREG_API_TOKEN may hold several
LIMIT = 100_000


@pytest.fixture(scope="module")
def guarded(train_model, tmp_path_factory):
    train_model("gaussian", "digits", name="auth-gaussian")
    log = tmp_path_factory.mktemp("auth") / "server.log"
    env = {
        "GENREG_API_TOKEN": f"{TOKEN}, {OTHER}",
        "GENREG_MAX_BODY_BYTES": str(LIMIT),
        "GENREG_MODELS": "auth-gaussian",
        "GENREG_MODEL_CONTROL": "1",
    }
    with running_server(log, **env) as srv, httpx.Client(base_url=srv.base, timeout=30) as client:
        yield client


def _auth(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}", "content-type": "application/json"}


CALLS = [
    ("POST", "/sample", {"model": "auth-gaussian", "n": 2}),
    ("POST", "/score", {"model": "auth-gaussian", "x": [[1] * 64]}),
    ("POST", "/two_sample_test", {"model": "auth-gaussian", "x": [[1] * 64] * 10}),
    ("POST", "/encode", {"model": "auth-gaussian", "x": [[1] * 64]}),
    ("POST", "/decode", {"model": "auth-gaussian", "z": [[1]]}),
    ("POST", "/models", {}),
    ("GET", "/models", None),
    ("GET", "/docs.json", None),
    ("POST", "/v2/repository/index", {}),
    ("POST", "/v2/repository/models/auth-gaussian/load", {}),
    ("POST", "/sample/submit", {"model": "auth-gaussian", "n": 2}),
    ("GET", "/sample/status?task_id=0", None),
    ("GET", "/score/get?task_id=0", None),
    ("PUT", "/two_sample_test/cancel?task_id=0", None),
    ("GET", "/schema.json", None),
]


@pytest.mark.parametrize(("method", "path", "body"), CALLS)
def test_every_api_call_needs_the_token(guarded, method, path, body):
    content = None if body is None else json.dumps(body)
    for headers, why in [
        ({}, "missing bearer token"),
        (_auth("wrong"), "invalid bearer token"),
        ({"authorization": f"Basic {TOKEN}"}, "missing bearer token"),
        (_auth(TOKEN + "x"), "invalid bearer token"),
    ]:
        resp = guarded.request(method, path, content=content, headers=headers)
        assert resp.status_code == 401, (headers, resp.text)
        assert resp.json()["field"] == "authorization" and why in resp.json()["error"]
        assert resp.headers["www-authenticate"].startswith("Bearer")
    ok = guarded.request(method, path, content=content, headers=_auth(TOKEN))
    # past the token: an unknown task id is the task path's own 404, a Gaussian has no latents
    expected = 404 if "task_id=0" in path else 422 if path in ("/encode", "/decode") else 200
    assert ok.status_code == expected, ok.text


def test_health_metrics_and_the_gallery_page_stay_open(guarded):
    for path in ("/healthz", "/livez", "/readyz", "/metrics", "/", "/static/gallery.js"):
        assert guarded.get(path).status_code == 200, path
    assert "genreg_errors_total" in guarded.get("/metrics").text


def _labels(text: str, name: str) -> list[dict[str, str]]:
    return [
        dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
        for line in text.splitlines()
        if line.startswith(name + "{")
    ]


def test_unauthorised_calls_are_counted(guarded):
    series = _labels(guarded.get("/metrics").text, "genreg_errors_total")
    assert {"endpoint": "sample", "reason": "unauthorized", "protocol": "genreg"} in series


V2_CALLS = [
    ("GET", "/v2", None),
    ("GET", "/v2/models/auth-gaussian", None),
    ("GET", "/v2/models/auth-gaussian/ready", None),
    ("POST", "/v2/models/auth-gaussian/infer", {"inputs": [], "parameters": {"n": 2}}),
    (
        "POST",
        "/v2/models/auth-gaussian/infer",
        {"inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP32", "data": [1] * 64}]},
    ),
]


@pytest.mark.parametrize(("method", "path", "body"), V2_CALLS)
def test_every_v2_call_needs_the_token(guarded, method, path, body):
    content = None if body is None else json.dumps(body)
    for headers in ({}, _auth("wrong")):
        resp = guarded.request(method, path, content=content, headers=headers)
        assert resp.status_code == 401, resp.text
        assert set(resp.json()) == {"error"} and "authorization" in resp.json()["error"]  # V2's error body
        assert resp.headers["www-authenticate"].startswith("Bearer")
    ok = guarded.request(method, path, content=content, headers=_auth(TOKEN))
    # past the token: an unknown task id is the task path's own 404
    assert ok.status_code == (404 if "task_id=0" in path else 200), ok.text
    series = _labels(guarded.get("/metrics").text, "genreg_errors_total")
    assert {"endpoint": endpoint_of(path), "reason": "unauthorized", "protocol": "v2"} in series


def test_v2_health_stays_open_and_v2_bodies_have_the_size_limit(guarded):
    for path in ("/v2/health/live", "/v2/health/ready"):
        assert guarded.get(path).status_code == 200, path
    x = np.zeros((1000, 64), dtype=np.float32).tobytes()  # 256,000 bytes > LIMIT
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": [1000, 64],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": len(x)},
                }
            ]
        }
    ).encode()
    headers = {**_auth(TOKEN), "inference-header-content-length": str(len(head))}
    resp = guarded.post("/v2/models/auth-gaussian/infer", content=head + x, headers=headers)
    assert resp.status_code == 413 and set(resp.json()) == {"error"} and str(LIMIT) in resp.json()["error"]


def test_oversized_body_gets_413_declared_or_streamed(guarded):
    big = json.dumps({"model": "auth-gaussian", "x": [[1] * 64] * 1000}).encode()
    assert len(big) > LIMIT
    resp = guarded.post("/score", content=big, headers=_auth(TOKEN))
    assert resp.status_code == 413 and resp.json()["field"] == "body"

    def chunks():  # no content-length: the limit is enforced while reading
        for i in range(0, len(big), 8192):
            yield big[i : i + 8192]

    resp = guarded.post("/score", content=chunks(), headers=_auth(TOKEN))
    assert resp.status_code == 413 and str(LIMIT) in resp.json()["error"]
    small = guarded.post("/score", content=big[: LIMIT // 2], headers=_auth(TOKEN))
    assert small.status_code == 400  # under the limit, but cut: not JSON


def test_bearer_parsing_and_comparison():
    token = TOKEN.encode()
    assert bearer([(b"authorization", b"Bearer abc")]) == b"abc"
    assert bearer([(b"Authorization", b"bearer  abc ")]) == b"abc"
    assert bearer([(b"authorization", b"Bearer ")]) is None
    assert bearer([(b"x-other", b"Bearer abc")]) is None
    tokens = (token, OTHER.encode())
    assert check(tokens, [(b"authorization", b"Bearer " + token)]) is None
    assert check(tokens, [(b"authorization", b"Bearer " + OTHER.encode())]) is None
    assert check(tokens, [(b"authorization", b"Bearer " + token[:-1])]) == "invalid bearer token"
    assert check(tokens, []).startswith("missing")


def test_a_task_is_seen_only_with_the_token_that_submitted_it(guarded):
    """A task id alone reveals nothing: another client's token gets the answer an unknown id
    gets (404) from every task path, and cannot cancel it; its own client sees it finish."""
    body = json.dumps({"model": "auth-gaussian", "n": 3, "seed": 4})
    submitted = guarded.post("/sample/submit", content=body, headers=_auth(TOKEN))
    assert submitted.status_code == 200, submitted.text
    task = submitted.json()["task_id"]
    assert len(task) >= 32  # 128 random bits, not a counter
    unknown = guarded.get("/sample/status?task_id=" + "0" * 32, headers=_auth(TOKEN))
    for method, action in [("GET", "status"), ("GET", "get"), ("PUT", "cancel"), ("POST", "retry")]:
        other = guarded.request(method, f"/sample/{action}?task_id={task}", headers=_auth(OTHER))
        assert other.status_code == 404, (action, other.text)
        assert other.json()["error"] == unknown.json()["error"].replace("0" * 32, task)
    for _ in range(100):
        status = guarded.get(f"/sample/status?task_id={task}", headers=_auth(TOKEN)).json()
        if status["status"] == "completed":
            break
    assert status["status"] == "completed", status
    own = guarded.get(f"/sample/get?task_id={task}", headers=_auth(TOKEN))
    assert own.content == guarded.post("/sample", content=body, headers=_auth(TOKEN)).content


def test_a_websocket_without_the_token_is_closed_before_it_reaches_the_app(monkeypatch):
    import asyncio

    from services.auth import BearerAuth

    monkeypatch.setenv("GENREG_API_TOKEN", TOKEN)
    reached: list[str] = []

    async def app(scope, receive, send):  # an app that would accept any websocket
        reached.append(scope["path"])
        await send({"type": "websocket.accept"})

    async def connect(headers):
        sent: list[dict] = []

        async def receive():
            return {"type": "websocket.connect"}

        async def send(message):
            sent.append(message)

        scope = {"type": "websocket", "path": "/anything", "headers": headers}
        await BearerAuth(app, endpoints={})(scope, receive, send)
        return sent

    refused = asyncio.run(connect([(b"authorization", b"Bearer wrong")]))
    assert refused == [{"type": "websocket.close", "code": 1008, "reason": "unauthorized"}]
    assert reached == []
    accepted = asyncio.run(connect([(b"authorization", f"Bearer {TOKEN}".encode())]))
    assert accepted == [{"type": "websocket.accept"}] and reached == ["/anything"]
