"""Faults: a tampered artifact, concurrent saves, a killed worker, SIGTERM with requests in flight."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from servers import ROOT, running_server

from registry.runtime.models import LoadedModel
from registry.runtime.scoring import score
from registry.runtime.store import get_model, list_models

pytestmark = pytest.mark.slow
HEADERS = {"content-type": "application/json"}


def post(client: httpx.Client, path: str, body: dict) -> httpx.Response:
    return client.post(path, content=json.dumps(body), headers=HEADERS)


@pytest.fixture(scope="module")
def fault_models(train_model):
    """Two small models of the shared store: (intact name, name to tamper with)."""
    train_model("gaussian", "moons", name="fault-intact")
    train_model("gaussian", "digits", name="fault-tampered")
    return "fault-intact", "fault-tampered"


def test_tampered_artifact_is_refused_by_name_while_the_rest_serve(fault_models, bentoml_home, tmp_path):
    intact, tampered = fault_models
    home = tmp_path / "home"
    for name in fault_models:  # a private copy of the two entries: the shared store stays intact
        shutil.copytree(bentoml_home / "models" / name, home / "models" / name)
    victim = next((home / "models" / tampered).glob("*/scorer.onnx"))
    victim.chmod(0o644)
    with victim.open("r+b") as fh:  # flip one byte in place: same size, different sha256
        fh.seek(100)
        byte = fh.read(1)
        fh.seek(100)
        fh.write(bytes([byte[0] ^ 0xFF]))
    with (
        running_server(tmp_path / "server.log", BENTOML_HOME=str(home)) as srv,
        httpx.Client(base_url=srv.base, timeout=30) as client,
    ):
        assert client.get("/readyz").status_code == 200
        assert [m["name"] for m in client.get("/models").json()["models"]] == [intact]
        resp = post(client, "/sample", {"model": tampered, "n": 1})
        assert resp.status_code == 409 and resp.json()["field"] == "model"
        assert "scorer.onnx" in resp.json()["error"] and "sha256" in resp.json()["error"]
        assert post(client, "/sample", {"model": intact, "n": 3}).status_code == 200
        assert post(client, "/score", {"model": intact, "x": [[0.5, 0.1]]}).status_code == 200
    log = (tmp_path / "server.log").read_text()
    assert f"not serving {tampered}" in log and "scorer.onnx" in log


RACE = """
import pathlib, sys, time
import registry.pipeline.train as pipeline
real = pipeline.save_model
barrier, me = pathlib.Path(sys.argv[1]), sys.argv[2]

def gated(*args, **kwargs):
    (barrier / me).touch()  # both trainings reach their save, then both save at once
    deadline = time.monotonic() + 60
    while len(list(barrier.iterdir())) < 2 and time.monotonic() < deadline:
        time.sleep(0.005)
    return real(*args, **kwargs)

pipeline.save_model = gated
sys.argv = ["genreg", "train", "gaussian", "--data", "moons", "--name", "race", "--quiet"]
from registry.cli import main
main()
"""


def test_two_trainings_saving_one_name_at_once_give_two_intact_versions(bentoml_home, tmp_path):
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    procs = [
        subprocess.Popen([sys.executable, "-c", RACE, str(barrier), who], cwd=ROOT, env=dict(os.environ))
        for who in ("a", "b")
    ]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    versions = [m for m in list_models() if m.name == "race"]
    assert len(versions) == 2 and versions[0].version != versions[1].version
    x = np.array([[0.5, 0.25], [-1.0, 0.0]], dtype=np.float32)
    scores = []
    for stored in versions:
        get_model(stored.tag).verify()  # every artifact matches its recorded sha256
        scores.append(score(LoadedModel(get_model(stored.tag)), x, "log_prob").scores)
    np.testing.assert_allclose(scores[0], scores[1])  # same data, same seed: same model
    assert get_model("race").tag in {v.tag for v in versions}


def _worker_pids(srv) -> list[int]:
    pids = []
    for pid in srv.workers():
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if b"worker" in cmd:
            pids.append(pid)
    return pids


def test_killed_worker_is_replaced_and_the_service_answers(fault_models, tmp_path):
    intact, _ = fault_models
    with (
        running_server(tmp_path / "server.log", workers=2, GENREG_MODELS=intact) as srv,
        httpx.Client(base_url=srv.base, timeout=10) as client,
    ):
        workers = _worker_pids(srv)
        assert len(workers) == 2, workers
        stop, outcomes = threading.Event(), []

        def load() -> None:  # keeps requests in flight while the worker dies
            with httpx.Client(base_url=srv.base, timeout=10) as c:
                while not stop.is_set():
                    try:
                        outcomes.append(post(c, "/sample", {"model": intact, "n": 64}).status_code)
                    except httpx.TransportError:
                        outcomes.append(0)

        threads = [threading.Thread(target=load) for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        os.kill(workers[0], signal.SIGKILL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            now = _worker_pids(srv)
            if len(now) == 2 and workers[0] not in now:
                break
            time.sleep(0.25)
        else:
            pytest.fail(f"worker not replaced: {workers} -> {_worker_pids(srv)}")
        # The replacement loads its models, then both workers answer every request again.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if all(post(client, "/sample", {"model": intact, "n": 2}).status_code == 200 for _ in range(20)):
                break
            time.sleep(0.5)
        else:
            pytest.fail("service did not answer again after the worker was replaced")
        stop.set()
        for t in threads:
            t.join(timeout=30)
        assert outcomes.count(200) > 0
        # Only requests that the dead worker held may fail: no 5xx answers, a few dropped at most.
        assert all(code in (200, 0) for code in outcomes), set(outcomes)
        assert outcomes.count(0) <= 8, outcomes.count(0)


def _in_flight(base: str, endpoint: str) -> float:
    """genreg's requests-in-progress gauge for ``endpoint``, summed over the workers."""
    total = 0.0
    for line in httpx.get(base + "/metrics", timeout=10).text.splitlines():
        if line.startswith("genreg_requests_in_progress{") and f'endpoint="{endpoint}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_sigterm_drains_requests_in_flight(fault_models, tmp_path):
    intact, _ = fault_models
    rng = np.random.default_rng(0)
    # A two-sample test with 2,000 permutations on 1,200 rows takes about a second.
    slow = {"model": intact, "x": rng.normal(size=(1200, 2)).tolist(), "permutations": 2000}
    # Three slow two-sample tests in flight at once: more than the default heavy-request slots.
    with running_server(tmp_path / "server.log", GENREG_MODELS=intact, GENREG_MAX_HEAVY="4") as srv:
        results: list[int | str] = []

        def call() -> None:
            try:
                with httpx.Client(base_url=srv.base, timeout=120) as c:
                    results.append(post(c, "/two_sample_test", slow).status_code)
            except httpx.HTTPError as exc:
                results.append(type(exc).__name__)

        threads = [threading.Thread(target=call) for _ in range(3)]
        for t in threads:
            t.start()
        # SIGTERM once the server itself counts the requests as in progress, however fast it is.
        deadline = time.monotonic() + 60
        while _in_flight(srv.base, "two_sample_test") < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(results) < 3, "requests finished before SIGTERM: make them slower"
        srv.proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(timeout=120)
        assert results == [200, 200, 200]
        assert srv.proc.wait(timeout=30) is not None
        with pytest.raises(httpx.TransportError):
            httpx.get(srv.base + "/livez", timeout=2)
