"""The live registry: versions stored while the service runs are served without a restart.

The server here has a store of its own (its own BENTOML_HOME), so that storing and tampering
with versions cannot change what the session's shared server answers. New versions are
trained by the CLI in a subprocess pointed at that store, as a user would.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from servers import ROOT, running_server

pytestmark = pytest.mark.slow
NAME = "live-gaussian"
X = [[0.5, 1.5], [-2.0, 0.0]]


def _train(home: Path, data: str) -> str:
    """Store a new version of NAME in ``home`` (the Gaussian's fit on ``data``); its tag."""
    env = dict(os.environ, BENTOML_HOME=str(home))
    cmd = [sys.executable, "-m", "registry.cli", "train", "gaussian", "--data", data]
    out = subprocess.run(
        [*cmd, "--name", NAME, "--quiet"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return out.split("saved ", 1)[1].split(";", 1)[0]


def _served(client: httpx.Client) -> dict[str, str]:
    return {m["name"]: m["tag"] for m in client.get("/models").json()["models"]}


def _wait(predicate, timeout: float = 60.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:.0f}s: {what}")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    home = tmp_path_factory.mktemp("live-home")
    first = _train(home, "8gaussians")
    log = tmp_path_factory.mktemp("live") / "server.log"
    env = {"BENTOML_HOME": str(home), "GENREG_POLL_SECONDS": "0.3", "GENREG_MODEL_CONTROL": "1"}
    with running_server(log, **env) as srv, httpx.Client(base_url=srv.base, timeout=30) as client:
        yield client, home, first, log


def test_a_new_version_is_served_without_a_restart_under_traffic(live):
    client, home, first, _ = live
    assert _served(client)[NAME] == first
    # (sent, received, status, tag): requests overlap across threads, so "after the swap" is
    # judged by time: a request sent after any answer from the new version was received.
    answered: list[tuple[float, float, int, str]] = []
    stop = threading.Event()

    def traffic() -> None:
        with httpx.Client(base_url=str(client.base_url), timeout=30) as own:
            while not stop.is_set():
                for path, body in (
                    ("/sample", {"model": NAME, "n": 8, "seed": 1}),
                    ("/score", {"model": NAME, "x": X}),
                ):
                    sent = time.monotonic()
                    resp = own.post(path, json=body)
                    tag = resp.json().get("model", resp.text)
                    answered.append((sent, time.monotonic(), resp.status_code, tag))

    threads = [threading.Thread(target=traffic) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        second = _train(home, "moons")
        _wait(lambda: _served(client)[NAME] == second, what=f"{second} served")
        seen = len(answered)
        _wait(lambda: len(answered) > seen + 30, what="traffic after the swap")
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert second != first
    statuses = {status for _, _, status, _ in answered}
    assert statuses == {200}, [a for a in answered if a[2] != 200][:5]
    tags = [tag for *_, tag in answered]
    # Traffic ran on both sides of the swap, and never went back to the old version after it.
    assert first in tags and second in tags
    swapped = min(received for _, received, _, tag in answered if tag == second)
    late = [(sent - swapped, tag) for sent, _, _, tag in answered if sent > swapped]
    assert late and all(tag == second for _, tag in late), [x for x in late if x[1] == first][:5]
    # The old version stays reachable by its tag, and answers what it answered before.
    pinned = client.post("/sample", json={"model": first, "n": 4, "seed": 3})
    assert pinned.status_code == 200 and pinned.json()["model"] == first
    newest = client.post("/sample", json={"model": NAME, "n": 4, "seed": 3}).json()
    assert newest["model"] == second and newest["samples"] != pinned.json()["samples"]


def test_a_tampered_version_is_refused_by_name_and_the_previous_keeps_serving(live, tmp_path):
    client, home, _, log = live
    before = _served(client)[NAME]
    # Store a version elsewhere, damage one of its graphs, then move it into the served store
    # whole (one rename, as BentoML itself stores), so the watcher only ever sees it damaged.
    other = tmp_path / "other-home"
    shutil.copytree(home, other)
    bad = _train(other, "rings")
    version = bad.split(":")[1]
    folder = other / "models" / NAME / version
    graph = folder / "scorer.onnx"
    graph.write_bytes(graph.read_bytes()[:-16] + b"\0" * 16)
    staging = home / "models" / NAME / f".{version}.tmp"
    shutil.copytree(folder, staging)
    os.rename(staging, home / "models" / NAME / version)

    def refused() -> list[dict]:
        index = client.post("/v2/repository/index", json={}).json()
        return [e for e in index if f"{e['name']}:{e['version']}" == bad and e["state"] == "UNAVAILABLE"]

    _wait(lambda: refused() and "scorer.onnx" in refused()[0]["reason"], what=f"{bad} refused")
    assert "sha256" in refused()[0]["reason"]
    assert _served(client)[NAME] == before
    assert client.post("/sample", json={"model": NAME, "n": 2}).json()["model"] == before
    pinned = client.post("/sample", json={"model": bad, "n": 2})
    assert pinned.status_code == 409 and pinned.json()["field"] == "model"
    assert "scorer.onnx" in pinned.json()["error"]
    ready = [
        f"{e['name']}:{e['version']}"
        for e in client.post("/v2/repository/index", json={"ready": True}).json()
    ]
    assert before in ready and bad not in ready
    assert "not serving " + bad in Path(log).read_text()


def test_models_unload_and_load_over_http(live):
    client, _, _, _ = live
    tag = _served(client)[NAME]
    resp = client.post(f"/v2/repository/models/{NAME}/unload")
    assert resp.status_code == 200 and resp.json() == {"model": NAME, "state": "UNLOADED"}
    assert NAME not in _served(client)
    gone = client.post("/sample", json={"model": NAME, "n": 2})
    assert gone.status_code == 404 and "unloaded" in gone.json()["error"]
    index = [e for e in client.post("/v2/repository/index").json() if e["name"] == NAME]
    # Every version is unloaded but the damaged one, which stays refused with its reason.
    assert {e["state"] for e in index if "sha256" not in e["reason"]} == {"UNLOADED"}
    # The watcher does not bring an unloaded model back by itself.
    time.sleep(1.0)
    assert NAME not in _served(client)
    resp = client.post(f"/v2/repository/models/{NAME}/load", json={"parameters": {}})
    assert resp.status_code == 200 and resp.json() == {"model": tag, "state": "READY"}
    assert client.post("/sample", json={"model": NAME, "n": 2}).json()["model"] == tag


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "field", "says"),
    [
        ("POST", "/v2/repository/models/no-such-model/load", None, 404, "model", "'no-such-model'"),
        ("POST", "/v2/repository/models/no-such-model/unload", None, 404, "model", "'no-such-model'"),
        ("POST", "/v2/repository/models/Bad Name/load", None, 400, "model", "'Bad Name'"),
        ("POST", f"/v2/repository/models/{NAME}/load", {"parameters": 3}, 400, "parameters", "parameters:"),
        ("POST", f"/v2/repository/models/{NAME}/load", {"force": True}, 400, "force", "force: unknown field"),
        ("POST", "/v2/repository/index", {"ready": "yes"}, 400, "ready", "ready:"),
        ("GET", "/v2/repository/index", None, 405, "method", "use POST"),
    ],
)
def test_repository_calls_with_bad_input_get_4xx_naming_the_field(
    live, method, path, body, status, field, says
):
    client = live[0]
    resp = client.request(method, path, json=body)
    assert resp.status_code == status, resp.text
    assert resp.json()["field"] == field
    assert says in resp.json()["error"], resp.json()
