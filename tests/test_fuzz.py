"""API fuzzing against the real server: schema-driven (every endpoint) and model-aware.

The schema-driven run sends generated requests, valid and invalid, to every operation of the
OpenAPI document the server publishes (tests/fuzzing.py). Most valid-by-schema /score bodies
miss a model's width, so a second, model-aware run draws bodies that each served model
accepts and checks the answers' shapes. The long run (2,000+ requests) is benchmarks/fuzz.py.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fuzzing import fuzz
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from registry.runtime.models import LoadedModel
from registry.runtime.scoring import draw_weight, score
from registry.runtime.store import get_model
from services.openapi import draw_tiers
from services.schemas import ScoreResponse

pytestmark = pytest.mark.slow
HEADERS = {"content-type": "application/json"}


# What the schema-driven runs are pointed at: one model for each shape of branch the document
# publishes (continuous rows and a newer version with a critic; image rows at 17 levels with a
# bound, k tiers and a chosen step count; a bound with both estimates; a bound with the average
# only and steps 1..16; a fixed step loop; a discriminator-only model; conditional models: labels,
# classify from an exact likelihood and from a bound, with k and estimate). Their work grows with
# every served model: schemathesis's coverage phase enumerates each branch's boundaries (about
# 2,000 requests to each of /sample, /score and /two_sample_test with all 14 shared models).
FUZZED = (
    "flow-8gaussians,diffusion-digits,vae-digits,counted-blob,ar-small,gan-8gaussians,"
    "categorical-digits-cond,vae-digits-cond"
)
FUZZ_BODY_BYTES = 150 * 1024


@pytest.fixture(scope="module")
def fuzz_server(trained, tmp_path_factory):
    """The shared server's deadline, serving FUZZED with smaller caps on rows, n and two-sample
    rows (the document publishes them, so the boundary cases are smaller: schemathesis took 55 s
    where the shared server's caps, 5,000 / 2,000 / 400, took 105); its tasks (a queue of one)
    are held to the synchronous deadline, so the tasks the fuzzers submit stay as cheap as their
    calls."""
    import httpx
    from servers import running_server

    log_path = tmp_path_factory.mktemp("fuzz") / "server.log"
    env = {
        "GENREG_MAX_ROWS": "512",
        "GENREG_MAX_N": "256",
        "GENREG_MAX_TWO_SAMPLE": "100",
        "BENTOML_CONFIG_OPTIONS": "services.genreg.traffic.timeout=10",
        "GENREG_TASK_SECONDS": "10",
        "GENREG_TASK_QUEUE": "1",
        "GENREG_MODELS": FUZZED,
        # Small enough that the JSON body, not GENREG_MAX_ROWS, bounds the digits models' rows
        # (body_rows): the fuzzers then check that bound as they check the others.
        "GENREG_MAX_BODY_BYTES": str(FUZZ_BODY_BYTES),
    }
    with (
        # one worker: the runs send one request at a time
        running_server(log_path, workers=1, **env) as srv,
        httpx.Client(base_url=srv.base, timeout=30) as client,
    ):
        yield client, log_path


def test_schema_driven_fuzz_of_every_endpoint(fuzz_server):
    client, log_path = fuzz_server
    sent = fuzz(str(client.base_url), per_operation=30)
    operations = {key.rsplit(" ", 1)[0] for key in sent}
    assert operations == {
        "POST /sample",
        "POST /score",
        "POST /two_sample_test",
        "POST /encode",
        "POST /decode",
        "POST /models",
        "GET /models",
        "GET /livez",
        "GET /readyz",
        "GET /healthz",
        "GET /metrics",
        "GET /v2",
        "POST /v2/repository/index",
        "GET /v2/health/live",
        "GET /v2/health/ready",
        "GET /v2/models/{name}",
        "GET /v2/models/{name}/ready",
        "POST /v2/models/{name}/infer",
        "GET /v2/models/{name}/versions/{version}",
        "GET /v2/models/{name}/versions/{version}/ready",
        "POST /v2/models/{name}/versions/{version}/infer",
    } | {
        f"{method} /{api}/{action}"
        for api in ("sample", "score", "two_sample_test")
        for method, action in (
            ("POST", "submit"),
            ("GET", "status"),
            ("GET", "get"),
            ("PUT", "cancel"),
            ("POST", "retry"),
        )
    }
    # the V2 routes reach served models, not only 404s for invented names
    assert sent["POST /v2/models/{name}/infer 200"] and sent["GET /v2/models/{name} 200"], sent
    assert sum(sent.values()) >= 500
    assert not any(key.endswith((" 500", " 502", " 503")) for key in sent), sent
    assert "Traceback" not in log_path.read_text()


def test_schemathesis_every_check_every_phase(fuzz_server, tmp_path):
    """The published contract is exact: schemathesis's own runner, all of its checks (schema-valid
    requests accepted, invalid ones refused, Allow headers that match the routes, response
    schemas, no 5xx) over its examples, coverage, fuzzing and stateful phases.

    tests/schemathesis.toml states the one exception (V2 infer: see there)."""
    client, log_path = fuzz_server
    cmd = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "--config-file",
        str(Path(__file__).with_name("schemathesis.toml")),
        "run",
        f"{str(client.base_url).rstrip('/')}/docs.json",
        # 2 examples per operation and phase: every check still runs on every operation, and
        # the run takes under two minutes where 8 took three (the suite's 10-minute budget).
        "--max-examples",
        "2",
        "--seed",
        "1",
        "--request-timeout",
        "120",
        "--no-color",
        "--report",
        "junit",
        "--report-dir",
        str(tmp_path),
    ]
    # The labelled operations' acceptance check (tests/schemathesis_hooks.py: see there).
    env = dict(os.environ, SCHEMATHESIS_HOOKS="schemathesis_hooks")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).parent), env.get("PYTHONPATH")]))
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=1200, cwd=tmp_path, env=env)
    summary = done.stdout[-6000:]
    assert done.returncode == 0, summary
    found = re.search(r"(\d+) generated, (\d+) passed", done.stdout)
    assert found and found.group(1) == found.group(2) and int(found.group(1)) > 100, summary
    assert "Traceback" not in log_path.read_text()


@pytest.mark.parametrize(
    ("max_rows", "max_draws", "budget"), [(4096, 1000, 262144), (5000, 1000, 262144), (100, 7, 50)]
)
def test_the_published_draw_tiers_are_the_servers_rule(max_rows, max_draws, budget):
    """The rectangles the document publishes for /score's (rows, k) cover exactly the pairs that
    registry.runtime.scoring.score takes (rows x k, k weighed as the next power of two)."""
    tiers = draw_tiers(max_rows, max_draws, budget)
    for rows in sorted(
        {1, 2, 3, 50, 99, 100, 255, 256, 257, 512, 2048, 4096, 5000} & set(range(1, max_rows + 1))
    ):
        for k in sorted(
            {1, 2, 3, 4, 5, 7, 8, 9, 63, 64, 65, 100, 128, 129, 999, 1000} & set(range(1, max_draws + 1))
        ):
            served = rows * draw_weight(k) <= budget
            published = any(k <= most_k and rows <= most_rows for most_k, most_rows in tiers)
            assert served == published, (rows, k, tiers)


def _rows(data: dict, draw_values):
    dim, levels = int(data["dim"]), data.get("levels")
    if levels:
        values = st.integers(0, levels - 1).map(float)
    else:  # wide enough to overflow a flow's float32 arithmetic: answered, as null
        values = st.floats(-3e38, 3e38) | st.floats(-10, 10)
    return draw_values(st.lists(st.lists(values, min_size=dim, max_size=dim), min_size=1, max_size=40))


@pytest.fixture(scope="module")
def served(server):
    client, _ = server
    return client.get("/models").json()["models"]


def test_model_aware_score_fuzz(server, served):
    client, _ = server

    @given(data=st.data())
    @settings(
        max_examples=150,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    def one(data) -> None:
        model = data.draw(st.sampled_from(served))
        x = _rows(model["data"], data.draw)
        body = {"model": model["name"], "x": x, "seed": data.draw(st.integers(0, 2**63 - 1))}
        kind = data.draw(st.sampled_from([None, "log_prob", "bound", "discriminator"]))
        if kind:
            body["kind"] = kind
        if kind == "bound" and data.draw(st.booleans()):
            body["k"] = data.draw(st.integers(1, 20))
        resp = client.post("/score", content=json.dumps(body), headers=HEADERS)
        effective = kind or model["kinds"][0]
        if effective not in model["kinds"]:
            assert resp.status_code == 422 and resp.json()["field"] == "kind", resp.text
            return
        assert resp.status_code == 200, resp.text
        out = ScoreResponse.model_validate(resp.json())
        assert out.kind == effective and len(out.scores) == len(x)
        finite = [s for s in out.scores if s is not None]
        if effective == "discriminator":
            assert all(0 <= p <= 1 for p in finite)
        elif model["data"].get("levels"):
            assert len(finite) == len(x)  # discrete rows in range always score

    one()


def test_model_aware_sample_fuzz(server, served):
    client, _ = server
    samplers = [m for m in served if "sample" in m["capabilities"]]

    @given(data=st.data())
    @settings(
        max_examples=60,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    def one(data) -> None:
        model = data.draw(st.sampled_from(samplers))
        body = {
            "model": model["name"],
            "n": data.draw(st.integers(1, 50)),
            "seed": data.draw(st.integers(0, 2**63 - 1) | st.none()),
            "temperature": data.draw(st.floats(0, 10)),
        }
        resp = client.post("/sample", content=json.dumps(body), headers=HEADERS)
        assert resp.status_code == 200, resp.text
        samples = resp.json()["samples"]
        assert len(samples) == body["n"] and all(len(r) == model["data"]["dim"] for r in samples)
        levels = model["data"].get("levels")
        if levels:
            x = np.array(samples, dtype=float)
            assert np.all((x >= 0) & (x <= levels - 1) & (x == np.round(x)))

    one()


# Requests the fuzzers found answered wrongly, fixed, and kept (each was a 500 or a coercion).
REGRESSIONS = [
    # log_prob of a point far outside the data: -inf, which JSON cannot carry; now null
    ("/score", {"model": "flow-8gaussians", "x": [[1e30, 0.0]], "kind": "log_prob"}, 200, None),
    # beyond float32 the value became inf inside the model; now a 400 naming x
    ("/score", {"model": "flow-8gaussians", "x": [[1e300, 0.0]], "kind": "log_prob"}, 400, "x"),
    # squared distances overflowed: the MMD statistic was NaN (a 500); now a 400 naming x
    ("/two_sample_test", {"model": "gaussian-digits", "x": [[1e200] * 64] * 10}, 400, "x"),
    # JSON booleans and numeric strings are not numbers (they were read as 1.0 and 1.5)
    ("/score", {"model": "flow-8gaussians", "x": [[True, 0.5]]}, 400, "x"),
    ("/score", {"model": "flow-8gaussians", "x": [["1.5", 0.5]]}, 400, "x"),
    ("/sample", {"model": "flow-digits", "n": "3"}, 400, "n"),
    ("/sample", {"model": "flow-digits", "n": True}, 400, "n"),
    # an integral float is a JSON Schema integer
    ("/sample", {"model": "flow-digits", "n": 2.0}, 200, None),
    # integers beyond int64 are still numbers
    ("/score", {"model": "flow-8gaussians", "x": [[10**30, 0]]}, 200, None),
    # a model not served is 404 whatever else the body holds (schemathesis: a schema-valid body
    # naming an unknown model got 400 for ragged rows, which no JSON Schema can forbid)
    ("/two_sample_test", {"model": "nope", "x": [[0.0, 0.0]] + [[0.0]] * 9}, 404, "model"),
    ("/score", {"model": "nope", "x": [[0, 0], [0]], "k": 0}, 404, "model"),
]


def test_k_weighs_as_the_next_power_of_two_against_the_published_limit(server):
    """rows x k = 1000 (as 1024) at the model's published bound limit: one row more is a 400
    naming k (a regression the fuzzers found, at the draw cap; the limit is now per model)."""
    client, _ = server
    limit = {m["name"]: m for m in client.get("/models").json()["models"]}["vae-digits"]["score_rows"][
        "bound"
    ]
    rows = limit // 1024
    for n, status in ((rows + 1, 400), (rows, 200)):
        body = {"model": "vae-digits", "x": [[0] * 64] * n, "kind": "bound", "k": 1000}
        resp = client.post("/score", content=json.dumps(body), headers=HEADERS)
        assert resp.status_code == status, resp.text
        if status == 400:
            assert resp.json()["field"] == "k" and f"exceeds {limit}" in resp.json()["error"]


@pytest.mark.parametrize(("path", "body", "status", "field"), REGRESSIONS)
def test_fuzz_regressions(server, path, body, status, field):
    client, _ = server
    resp = client.post(path, content=json.dumps(body), headers=HEADERS)
    assert resp.status_code == status, resp.text
    if field:
        assert resp.json()["field"] == field
    if path == "/score" and status == 200 and body["model"] == "flow-8gaussians":
        # The in-process score of the same row: a point this far out has log p = -inf, which
        # the answer carries as null (not a finite stand-in, not a 500).
        x = np.array(body["x"], dtype=np.float64).astype(np.float32)
        local = score(LoadedModel(get_model(body["model"])), x, body.get("kind")).scores
        assert np.all(np.isneginf(local)), local
        assert resp.json()["scores"] == [None] * len(x)
    if path == "/sample" and status == 200:
        assert len(resp.json()["samples"]) == body["n"]


def test_invented_field_names_never_become_metric_labels(server):
    """Fuzzed bodies with made-up fields once gave genreg_errors_total one series per name."""
    client, _ = server
    odd = 'we}i"rd\n name'
    resp = client.post("/sample", content=json.dumps({"model": "flow-digits", odd: 1}), headers=HEADERS)
    assert resp.status_code == 400 and resp.json()["field"] == odd
    metrics = client.get("/metrics")
    assert metrics.status_code == 200
    reasons = {
        line.split('reason="')[1].split('"')[0]
        for line in metrics.text.splitlines()
        if line.startswith("genreg_errors_total{")
    }
    assert "unknown_field" in reasons and not any("we}i" in r for r in reasons)
    assert reasons <= {
        "unknown_field",
        "invalid_body",
        "invalid_json",
        "too_large",
        "unauthorized",
        "unknown_model",
        "store_error",
        "missing_capability",
        "method_not_allowed",
        "invalid_binary",
        "invalid_tensor",
        "unavailable",
        "model_control_off",
    } | {
        f"invalid_{f}"
        for f in (
            "model",
            "n",
            "seed",
            "temperature",
            "format",
            "x",
            "kind",
            "k",
            "ready",
            "parameters",
            "test",
            "n_model",
            "permutations",
            # the V2 infer request's fields and parameters
            "id",
            "inputs",
            "outputs",
            "parameters",
            "steps",
            "estimate",
        )
    }


def test_a_wide_model_s_rows_are_bounded_by_the_json_body(fuzz_server):
    """The published rows of x (GET /models body_rows, the document's maxItems) are those whose
    widest JSON fits the body limit: one row more is a 400 naming x, never a 413 for a body the
    document allows; at most that many rows, written at their widest, fit."""
    client, _ = fuzz_server
    models = {m["name"]: m for m in client.get("/models").json()["models"]}
    cap = models["vae-digits"]["body_rows"]
    assert cap == (FUZZ_BODY_BYTES - 4096) // (64 * len("16.0, ") + 4) < 512  # below GENREG_MAX_ROWS
    doc = client.get("/docs.json").json()["components"]["schemas"]
    branches = [v for k, v in doc.items() if k.startswith("ScoreRequest.vae-digits.")]
    assert branches and max(b["properties"]["x"]["maxItems"] for b in branches) == cap
    assert doc["EncodeRequest.vae-digits"]["properties"]["x"]["maxItems"] == cap
    widest = json.dumps({"model": "vae-digits", "x": [[16.0] * 64] * cap, "kind": "bound", "seed": 0})
    assert len(widest) <= FUZZ_BODY_BYTES
    assert client.post("/score", content=widest, headers=HEADERS).status_code == 200
    for path in ("/score", "/encode"):
        over = client.post(
            path, content=json.dumps({"model": "vae-digits", "x": [[1] * 64] * (cap + 1)}), headers=HEADERS
        )
        assert (
            over.status_code == 400 and over.json()["field"] == "x" and "body_rows" in over.json()["error"]
        ), over.text
