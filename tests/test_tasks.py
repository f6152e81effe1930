"""Long work as tasks (services.tasks), and BentoML's own clients, against the real server."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time

import bentoml
import httpx
import numpy as np
import pytest
from bentoml.exceptions import BentoMLException
from servers import running_server

pytestmark = pytest.mark.slow
TTL = 4  # seconds a finished task's result is kept on the tasks server


@pytest.fixture(scope="module")
def tasks_server(trained, tmp_path_factory):
    """Two workers, a queue of two tasks, results kept TTL seconds; a 10-s synchronous deadline
    (the shared server's), so that a task's limits (GENREG_TASK_SECONDS, 1,800 s) are far above
    the synchronous ones."""
    log = tmp_path_factory.mktemp("tasks") / "server.log"
    env = {
        "BENTOML_CONFIG_OPTIONS": "services.genreg.traffic.timeout=10",
        "GENREG_TASK_QUEUE": "2",
        "GENREG_TASK_TTL": str(TTL),
        "GENREG_MODELS": "diffusion-digits,flow-8gaussians",
    }
    with running_server(log, workers=2, **env) as srv:
        yield srv


def _submit(base: str, api: str, **body) -> str:
    """Submit with BentoML's AsyncHTTPClient (its SyncHTTPClient's submit: see below)."""

    async def go() -> str:
        async with bentoml.AsyncHTTPClient(base) as client:
            task = await getattr(client, api).submit(**body)
            return task.id

    return asyncio.run(go())


def _wait(client: bentoml.SyncHTTPClient, api: str, task_id: str, timeout: float = 120) -> None:
    endpoint = getattr(client, api)
    start = time.monotonic()
    while endpoint.get_status(task_id).value in ("pending", "in_progress"):
        assert time.monotonic() - start < timeout, f"task {task_id} did not finish in {timeout} s"
        time.sleep(0.05)


def _status(base: str, api: str, task_id: str) -> httpx.Response:
    return httpx.get(f"{base}/{api}/status", params={"task_id": task_id})


def test_bentoml_clients_call_every_api_as_http_does(server, trained):
    """bentoml.SyncHTTPClient and AsyncHTTPClient read the service's /schema.json and call
    every API synchronously; their answers are the plain HTTP answers."""
    http, _ = server
    base = str(http.base_url).rstrip("/")
    rows = np.random.default_rng(0).normal(size=(20, 2)).round(3).tolist()
    digits = [[int(v) for v in row] for row in np.random.default_rng(1).integers(0, 17, (3, 64))]
    calls = [
        ("sample", {"model": "flow-8gaussians", "n": 5, "seed": 3}),
        ("sample", {"model": "diffusion-digits", "n": 2, "seed": 3, "steps": 4}),
        ("score", {"model": "flow-8gaussians", "x": rows}),
        ("score", {"model": "diffusion-digits", "x": digits, "kind": "bound", "k": 2, "seed": 5}),
        ("two_sample_test", {"model": "flow-8gaussians", "x": rows, "test": "mmd", "seed": 1}),
        ("models", {}),
    ]
    sync = bentoml.SyncHTTPClient(base)
    assert {"sample", "score", "two_sample_test", "models"} <= set(sync.endpoints)

    async def with_async() -> list:
        async with bentoml.AsyncHTTPClient(base) as client:
            return [await getattr(client, api)(**body) for api, body in calls]

    answers = asyncio.run(with_async())
    for (api, body), from_async in zip(calls, answers, strict=True):
        over_http = http.post(f"/{api}", json=body)
        assert over_http.status_code == 200, over_http.text
        assert getattr(sync, api)(**body) == over_http.json(), api
        assert from_async == over_http.json(), api
    # A refusal reaches the client as BentoML's exception, with genreg's message.
    with pytest.raises(BentoMLException, match="n: Input should be greater than or equal to 1"):
        sync.sample(model="flow-8gaussians", n=0)


@pytest.mark.parametrize(
    ("api", "body", "unit"),
    [
        ("sample", {"model": "diffusion-digits", "n": 8, "steps": 40, "seed": 2}, "steps"),
        (
            "score",
            {"model": "diffusion-digits", "x": [[3] * 64] * 5, "kind": "bound", "k": 4, "seed": 7},
            "draws",
        ),
        ("two_sample_test", {"model": "flow-8gaussians", "x": [[0.5, -1.0]] * 30, "seed": 1}, "steps"),
    ],
)
def test_a_task_answers_what_the_synchronous_call_answers(tasks_server, api, body, unit):
    """Submitted, polled and fetched with BentoML's clients: the result is the synchronous
    answer byte for byte; the status reports its progress and times, from every worker alike."""
    base = tasks_server.base
    task_id = _submit(base, api, **body)
    client = bentoml.SyncHTTPClient(base)
    _wait(client, api, task_id)
    assert getattr(client, api).get_status(task_id).value == "completed"
    synchronous = httpx.post(f"{base}/{api}", content=json.dumps(body), timeout=60)
    fetched = httpx.get(f"{base}/{api}/get", params={"task_id": task_id})
    assert fetched.status_code == 200
    assert fetched.content == synchronous.content
    assert getattr(client, api).get(task_id) == synchronous.json()
    # Two workers: whichever answers, the status is the same.
    statuses = [_status(base, api, task_id).json() for _ in range(12)]
    assert all(s == statuses[0] for s in statuses)
    status = statuses[0]
    progress = status["progress"]
    assert progress["unit"] == unit and progress["done"] == progress["total"] > 0
    if api == "score":
        assert progress["total"] == 5 * 4  # rows x k draws
    assert status["created_at"] <= status["executed_at"] <= status["completed_at"]
    # Retry submits the same body again: a new task, the same answer.
    again = client.client.post(f"/{api}/retry", params={"task_id": task_id})
    assert again.status_code == 200, again.text
    new_id = again.json()["task_id"]
    assert new_id != task_id
    _wait(client, api, new_id)
    assert httpx.get(f"{base}/{api}/get", params={"task_id": new_id}).content == synchronous.content


def test_the_sync_client_submits(tasks_server):
    """bentoml.SyncHTTPClient's own submit. BentoML 1.4.40's sends the request, then fails in its
    clean-up (``self._opened_files``, an attribute its client no longer has); its
    AsyncHTTPClient's submit works, and so do the sync client's status, get, cancel and retry."""
    client = bentoml.SyncHTTPClient(tasks_server.base)
    try:
        task = client.sample.submit(model="flow-8gaussians", n=3, seed=1)
    except AttributeError as exc:
        if "_opened_files" not in str(exc):
            raise
        pytest.xfail(f"BentoML's SyncHTTPClient.submit is broken upstream ({bentoml.__version__}): {exc}")
    _wait(client, "sample", task.id)
    assert task.get() == client.sample(model="flow-8gaussians", n=3, seed=1)


def test_submission_refuses_what_the_call_refuses(tasks_server):
    """Every check is made at submission: the same status and body as the synchronous call."""
    bodies = [
        b'{"model": "diffusion-digits", "n": 0}',
        b'{"model": "no-such-model", "n": 2}',
        b'{"model": "diffusion-digits", "n": 2, "steps": 100000}',
        b'{"model": "diffusion-digits", "n": 2, "format": "png", "extra": 1}',
        b'{"model": "flow-8gaussians", "n": 2, "format": "png"}',
        b'{"model": "flow-8gaussians", "x": [[1, 2, 3]]}',
        b'{"model": "flow-8gaussians", "x": [[1, 2]], "kind": "bound"}',
        b"[1, 2]",
        b"not json",
    ]
    for body in bodies:
        api = "score" if b'"x"' in body else "sample"
        direct = httpx.post(f"{tasks_server.base}/{api}", content=body)
        submitted = httpx.post(f"{tasks_server.base}/{api}/submit", content=body)
        assert 400 <= direct.status_code < 500, body
        assert (submitted.status_code, submitted.json()) == (direct.status_code, direct.json()), body
    missing = httpx.get(f"{tasks_server.base}/sample/status")
    assert missing.status_code == 400 and missing.json()["field"] == "task_id"
    wrong = httpx.post(f"{tasks_server.base}/sample/status", params={"task_id": "x"})
    assert wrong.status_code == 405 and wrong.headers["allow"] == "GET"


def test_cancel_stops_a_long_sample_and_frees_its_place(tasks_server):
    """A 1,000-step sample is canceled mid-way: its worker stops at the next step and its place
    in the queue (GENREG_TASK_QUEUE=2 here) is free within a fraction of a second; a full queue
    answers 429 with Retry-After."""
    base = tasks_server.base
    client = bentoml.SyncHTTPClient(base)
    long = {"model": "diffusion-digits", "n": 64, "steps": 1000, "seed": 1}
    first = _submit(base, "sample", **long)
    second = _submit(base, "sample", **long)
    full = httpx.post(f"{base}/sample/submit", json=long)
    assert full.status_code == 429, full.text
    assert int(full.headers["retry-after"]) >= 1 and "GENREG_TASK_QUEUE" in full.json()["error"]
    while (status := _status(base, "sample", first).json())["progress"]["done"] < 3:
        assert status["status"] in ("pending", "in_progress"), status
        time.sleep(0.02)
    client.sample.cancel(first)
    canceled = time.monotonic()
    while (resubmitted := httpx.post(f"{base}/sample/submit", json={**long, "steps": 2})).status_code == 429:
        assert time.monotonic() - canceled < 5, "the canceled task still holds its place"
        time.sleep(0.01)
    freed = time.monotonic() - canceled
    status = _status(base, "sample", first).json()
    assert status["status"] == "canceled" and status["progress"]["done"] < 1000, status
    got = httpx.get(f"{base}/sample/get", params={"task_id": first})
    assert got.status_code == 409 and "canceled" in got.json()["error"]
    print(f"canceled at step {status['progress']['done']} of 1000; its place was free {freed:.3f} s later")
    assert freed < 0.5  # measured 6-14 ms idle (benchmarks/tasks.py); a loaded CI machine is slower
    client.sample.cancel(second)
    _wait(client, "sample", resubmitted.json()["task_id"])


def test_a_finished_task_expires(tasks_server):
    base = tasks_server.base
    task_id = _submit(base, "sample", model="flow-8gaussians", n=4, seed=0)
    _wait(bentoml.SyncHTTPClient(base), "sample", task_id)
    assert httpx.get(f"{base}/sample/get", params={"task_id": task_id}).status_code == 200
    time.sleep(TTL + 1.5)
    for action in ("status", "get"):
        gone = httpx.get(f"{base}/sample/{action}", params={"task_id": task_id})
        assert gone.status_code == 404 and gone.json()["field"] == "task_id", gone.text


def test_a_task_may_run_what_the_deadline_refuses(tasks_server):
    """Task limits come from GENREG_TASK_SECONDS, not the synchronous deadline: a score the
    synchronous call refuses for its size is accepted as a task (then canceled here)."""
    base = tasks_server.base
    (model,) = [m for m in httpx.get(f"{base}/models").json()["models"] if m["name"] == "diffusion-digits"]
    limit, task_limit = model["score_rows"]["bound"], model["task_score_rows"]["bound"]
    k = 512
    rows = limit // k + 1  # rows x k just past the synchronous limit
    assert rows * k <= task_limit, (limit, task_limit)  # 180 x the time: the cap, or near it
    body = {"model": "diffusion-digits", "x": [[3] * 64] * rows, "kind": "bound", "k": k, "seed": 0}
    refused = httpx.post(f"{base}/score", json=body)
    assert refused.status_code == 400 and refused.json()["field"] == "k", refused.text
    assert "POST /NAME/submit" in refused.json()["error"]
    submitted = httpx.post(f"{base}/score/submit", json=body)
    assert submitted.status_code == 200, submitted.text
    task_id = submitted.json()["task_id"]
    assert _status(base, "score", task_id).json()["progress"]["total"] == rows * k
    httpx.put(f"{base}/score/cancel", params={"task_id": task_id})


def test_a_task_whose_worker_dies_fails_visibly(tasks_server):
    """Last here: it kills the server's workers (BentoML starts new ones)."""
    base = tasks_server.base
    task_id = _submit(base, "sample", model="diffusion-digits", n=64, steps=1000, seed=3)
    while _status(base, "sample", task_id).json()["status"] != "in_progress":
        time.sleep(0.02)
    for pid in tasks_server.workers():
        os.kill(pid, signal.SIGKILL)
    start = time.monotonic()
    while True:
        try:
            status = _status(base, "sample", task_id).json()
            break
        except httpx.HTTPError:
            assert time.monotonic() - start < 60, "no worker came back"
            time.sleep(0.2)
    assert status["status"] == "failed" and "exited" in status["error"], status
    got = httpx.get(f"{base}/sample/get", params={"task_id": task_id})
    assert got.status_code == 503 and "exited" in got.json()["error"]
