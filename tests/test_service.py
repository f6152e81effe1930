"""End-to-end: the real BentoML server (2 workers) on a loopback port, over HTTP."""

from __future__ import annotations

import base64
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

from registry.datasets import load_dataset, load_digits
from registry.runtime.models import LoadedModel
from registry.runtime.scoring import score
from registry.runtime.store import get_model
from registry.runtime.two_sample import auc

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent


def post(client: httpx.Client, path: str, body) -> httpx.Response:
    return client.post(path, content=json.dumps(body), headers={"content-type": "application/json"})


def test_models_listing(server):
    client, _ = server
    for resp in (client.get("/models"), post(client, "/models", {})):
        assert resp.status_code == 200
        models = {m["name"]: m for m in resp.json()["models"]}
        assert {"flow-digits", "flow-8gaussians", "gaussian-digits", "categorical-digits"} <= set(models)
        flow = models["flow-digits"]
        assert flow["family"] == "flow" and flow["kinds"] == ["bound"] and "sample" in flow["capabilities"]
        assert flow["data"]["levels"] == 17 and "bits_per_dim" in flow["metrics"]["test"]
        assert flow["tag"] == get_model("flow-digits").tag


def test_sample_shape_range_and_seed(server):
    client, _ = server
    a = post(client, "/sample", {"model": "flow-digits", "n": 9, "seed": 5}).json()
    b = post(client, "/sample", {"model": "flow-digits", "n": 9, "seed": 5}).json()
    c = post(client, "/sample", {"model": "flow-digits", "n": 9, "seed": 6}).json()
    x = np.array(a["samples"])
    assert x.shape == (9, 64) and a["model"].startswith("flow-digits:")
    assert x.min() >= 0 and x.max() <= 16 and np.all(x == np.round(x))
    assert a == b and a != c
    png = post(client, "/sample", {"model": "flow-digits", "n": 16, "seed": 1, "format": "png"}).json()
    assert base64.b64decode(png["png"])[:4] == b"\x89PNG"
    toy = np.array(
        post(client, "/sample", {"model": "flow-8gaussians", "n": 500, "seed": 2}).json()["samples"]
    )
    assert toy.shape == (500, 2) and np.all(np.isfinite(toy))


def test_score_matches_in_process_onnx(server):
    client, _ = server
    rows = load_digits().test[:20]
    resp = post(client, "/score", {"model": "flow-digits", "x": rows.tolist(), "seed": 11}).json()
    local = score(LoadedModel(get_model("flow-digits")), rows, None, seed=11)
    kind, expected, bpd = local.kind, local.scores, local.bits_per_dim
    assert resp["kind"] == kind == "bound"
    np.testing.assert_allclose(resp["scores"], expected, rtol=0, atol=1e-9)
    np.testing.assert_allclose(resp["bits_per_dim"], bpd, rtol=0, atol=1e-9)
    again = post(client, "/score", {"model": "flow-digits", "x": rows.tolist(), "seed": 11}).json()
    assert again == resp
    cat = post(client, "/score", {"model": "categorical-digits", "x": rows.tolist()}).json()
    assert cat["kind"] == "log_prob"


def test_toy_log_prob_is_the_flow_density(server):
    """Served log_prob equals the in-process density and integrates to one over a grid."""
    client, _ = server
    g = np.linspace(-7, 7, 220)
    xx, yy = np.meshgrid(g, g)
    pts = np.stack([xx.ravel(), yy.ravel()], 1)
    scores = []
    for i in range(0, len(pts), 5000):
        resp = post(
            client,
            "/score",
            {"model": "flow-8gaussians", "x": pts[i : i + 5000].tolist(), "kind": "log_prob"},
        )
        assert resp.status_code == 200, resp.text
        scores.extend(resp.json()["scores"])
    scores = np.array(scores)
    local = score(LoadedModel(get_model("flow-8gaussians")), pts.astype(np.float32), "log_prob").scores
    np.testing.assert_allclose(scores, local, atol=1e-9)
    assert np.exp(scores).sum() * (g[1] - g[0]) ** 2 == pytest.approx(1.0, abs=0.03)


BAD = [
    ("/sample", {"model": "nope", "n": 1}, 404, "model"),
    ("/score", {"model": "nope", "x": [[0, 0]]}, 404, "model"),
    ("/sample", {"model": "flow-digits", "n": 0}, 400, "n"),
    ("/sample", {"model": "flow-digits", "n": 2001}, 400, "n"),
    ("/sample", {"model": "flow-digits", "n": "many"}, 400, "n"),
    ("/sample", {"model": "flow-digits", "temperature": -1}, 400, "temperature"),
    ("/sample", {"model": "flow-8gaussians", "format": "png"}, 400, "format"),
    ("/sample", {"n": 3}, 400, "model"),
    ("/sample", {"model": "flow-digits", "colour": 1}, 400, "colour"),
    ("/score", {"model": "flow-digits", "x": [[0] * 63]}, 400, "x"),
    ("/score", {"model": "flow-digits", "x": [[17] * 64]}, 400, "x"),
    ("/score", {"model": "flow-digits", "x": [[-1] * 64]}, 400, "x"),
    ("/score", {"model": "flow-digits", "x": [[0.5] * 64]}, 400, "x"),
    ("/score", {"model": "flow-8gaussians", "x": [[float("nan"), 0]]}, 400, "x"),
    ("/score", {"model": "flow-8gaussians", "x": [[float("inf"), 0]]}, 400, "x"),
    ("/score", {"model": "flow-8gaussians", "x": [[0, 0], [1]]}, 400, "x"),
    ("/score", {"model": "flow-8gaussians", "x": []}, 400, "x"),
    ("/score", {"model": "flow-8gaussians", "x": [[0, 0]] * 5001}, 400, "x"),
    ("/score", {"model": "flow-8gaussians", "x": [["a", 0]]}, 400, "x"),
    ("/score", {"model": "flow-8gaussians", "x": [[0, 0]], "kind": "bound"}, 422, "kind"),
    ("/score", {"model": "flow-digits", "x": [[0] * 64], "kind": "discriminator"}, 422, "kind"),
    ("/score", {"model": "flow-digits", "x": [[0] * 64], "kind": "likelihood"}, 400, "kind"),
    ("/score", "not an object", 400, "body"),
]


@pytest.mark.parametrize(("path", "body", "status", "field"), BAD)
def test_bad_input_gets_4xx_naming_the_field(server, path, body, status, field):
    client, _ = server
    resp = post(client, path, body)
    assert resp.status_code == status, resp.text
    err = resp.json()
    # The message names the field as a word ("n" inside "Input should be..." does not count).
    assert err["field"] == field and re.search(rf"\b{re.escape(field)}\b", err["error"]), err


def test_wrong_method_on_an_api_path_is_405_naming_the_method(server):
    client, _ = server
    for path in ("/score", "/sample", "/two_sample_test"):
        resp = client.get(path)
        assert resp.status_code == 405, (path, resp.text)
        assert resp.json()["field"] == "method" and "use POST" in resp.json()["error"]
    assert client.delete("/models").status_code == 405
    assert client.get("/models").status_code == 200


def test_invalid_json_and_missing_capability_messages(server):
    client, log_path = server
    resp = client.post("/score", content=b"{not json", headers={"content-type": "application/json"})
    assert resp.status_code == 400 and resp.json()["field"] == "body"
    resp = post(client, "/score", {"model": "flow-8gaussians", "x": [[0, 0]], "kind": "bound"})
    assert "it has: log_prob" in resp.json()["error"]
    log = log_path.read_text()
    assert "Traceback" not in log and "[ERROR]" not in log


def _metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
        if all(got.get(k) == v for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_metrics_count_rows_and_errors_across_workers(server):
    client, _ = server
    before = client.get("/metrics").text
    for seed in range(6):
        post(client, "/sample", {"model": "gaussian-digits", "n": 7, "seed": seed})
    for _ in range(3):
        post(client, "/score", {"model": "gaussian-digits", "x": [[1] * 64] * 4})
    post(client, "/score", {"model": "gaussian-digits", "x": [[99] * 64]})
    after = client.get("/metrics").text
    delta = lambda name, **kw: _metric(after, name, **kw) - _metric(before, name, **kw)  # noqa: E731
    assert delta("genreg_rows_total", model="gaussian-digits", kind="sample") == 42
    assert delta("genreg_rows_total", model="gaussian-digits", kind="bound") == 12
    assert delta("genreg_errors_total", endpoint="score", reason="invalid_x") == 1
    assert delta("genreg_inference_seconds_count", model="gaussian-digits", graph="sampler") == 6
    assert _metric(after, "genreg_model_load_seconds", model="flow-digits") > 0
    # genreg's routes are counted by genreg (services.traffic), by status code, across workers.
    assert delta("genreg_requests_total", endpoint="sample", protocol="genreg", code="200") == 6
    assert delta("genreg_requests_total", endpoint="score", protocol="genreg", code="200") == 3
    assert delta("genreg_requests_total", endpoint="score", protocol="genreg", code="400") == 1
    assert delta("genreg_request_duration_seconds_count", endpoint="score", protocol="genreg") == 4
    assert delta("genreg_request_duration_seconds_sum", endpoint="score", protocol="genreg") > 0


def test_models_and_metrics_report_the_execution_provider(server):
    client, _ = server
    models = {m["name"]: m for m in client.get("/models").json()["models"]}
    metrics = client.get("/metrics").text
    for name in ("flow-digits", "gaussian-digits", "vae-digits"):
        # What ONNX Runtime says the sessions run on, not what was asked for.
        expected = LoadedModel(get_model(name)).provider
        assert models[name]["provider"] == expected
        version = models[name]["version"]
        assert _metric(metrics, "genreg_model_info", model=name, version=version, provider=expected) == 1
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        assert {m["provider"] for m in models.values()} == {"CPUExecutionProvider"}


def test_service_never_imports_torch():
    code = "import services.service, sys; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_bits_per_dim_units(server):
    client, _ = server
    rows = load_digits().test[:5]
    resp = post(client, "/score", {"model": "categorical-digits", "x": rows.tolist()}).json()
    for nats, bpd in zip(resp["scores"], resp["bits_per_dim"], strict=True):
        assert bpd == pytest.approx(-nats / (64 * math.log(2)))


def test_vae_sample_and_importance_weighted_score(server):
    client, _ = server
    x = np.array(post(client, "/sample", {"model": "vae-digits", "n": 6, "seed": 1}).json()["samples"])
    assert x.shape == (6, 64) and x.min() >= 0 and x.max() <= 16 and np.all(x == np.round(x))
    rows = load_digits().test[:12].tolist()
    one = post(client, "/score", {"model": "vae-digits", "x": rows, "kind": "bound", "seed": 4}).json()
    assert one["k"] == 1 and "elbo" not in one
    many = post(
        client, "/score", {"model": "vae-digits", "x": rows, "kind": "bound", "seed": 4, "k": 16}
    ).json()
    assert many["k"] == 16 and len(many["elbo"]) == 12
    assert all(s >= e - 1e-9 for s, e in zip(many["scores"], many["elbo"], strict=True))
    log_w = LoadedModel(get_model("vae-digits")).log_weights(np.array(rows), seed=4, k=16)
    np.testing.assert_allclose(many["elbo"], log_w.mean(1), atol=1e-9)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"model": "vae-digits", "x": [[0] * 64], "k": 0}, "k"),
        ({"model": "vae-digits", "x": [[0] * 64], "k": 1001}, "k"),
        ({"model": "flow-8gaussians", "x": [[0, 0]], "k": 4}, "k"),
        ({"model": "vae-digits", "x": [[0] * 64] * 300, "k": 1000}, "k"),
    ],
)
def test_bad_draw_counts(server, body, field):
    client, _ = server
    resp = post(client, "/score", body)
    assert resp.status_code == 400 and resp.json()["field"] == field, resp.text


def test_gan_and_critic_endpoints(server):
    client, _ = server
    x = np.array(post(client, "/sample", {"model": "gan-8gaussians", "n": 200, "seed": 0}).json()["samples"])
    assert x.shape == (200, 2)
    resp = post(client, "/score", {"model": "gan-8gaussians", "x": x.tolist()}).json()
    assert resp["kind"] == "discriminator"
    # At the test budget the generator is still told from data (tests/test_likelihood_free.py),
    # and the served discriminator does so: P(real) ranks held-out rows above the samples (AUC
    # ~0.96 measured; 0.8 is over 5 of its standard errors at 200 + 200 rows).
    real = load_dataset("8gaussians").test[:200].tolist()
    p_real = post(client, "/score", {"model": "gan-8gaussians", "x": real}).json()["scores"]
    assert auc(np.r_[p_real, resp["scores"]], np.r_[np.ones(200), np.zeros(200)]) > 0.8
    bad = post(client, "/score", {"model": "gan-8gaussians", "x": [[0, 0]], "kind": "log_prob"})
    assert bad.status_code == 422 and "it has: discriminator" in bad.json()["error"]
    # The flow's critic (its newest version) answers, and is the stored graph: sigmoid(logit).
    pts = [[0, 2.8], [9, 9]]
    flow = post(client, "/score", {"model": "flow-8gaussians", "x": pts, "kind": "discriminator"})
    assert flow.status_code == 200, flow.text
    logits = LoadedModel(get_model("flow-8gaussians")).logits(np.array(pts))
    np.testing.assert_allclose(flow.json()["scores"], 1 / (1 + np.exp(-logits)), atol=1e-9)
    # A critic of a poor model (independent pixels) tells digits from its samples: P(real) is
    # high on held-out digits, low on samples, and ranks nearly every digit above every sample.
    real = load_digits().test[:200].tolist()
    fake = post(client, "/sample", {"model": "gaussian-digits-critic", "n": 200, "seed": 3}).json()["samples"]
    p_real, p_fake = (
        np.array(
            post(
                client, "/score", {"model": "gaussian-digits-critic", "x": x, "kind": "discriminator"}
            ).json()["scores"]
        )
        for x in (real, fake)
    )
    labels = np.r_[np.ones(200), np.zeros(200)]
    assert auc(np.r_[p_real, p_fake], labels) > 0.95
    assert p_real.mean() > 0.7 and p_fake.mean() < 0.3, (p_real.mean(), p_fake.mean())


def test_two_sample_endpoint(server):
    client, _ = server
    real = load_digits().test[:200].tolist()
    mmd = post(
        client, "/two_sample_test", {"model": "gaussian-digits", "x": real, "test": "mmd", "seed": 1}
    ).json()
    assert mmd["test"] == "mmd" and mmd["n_x"] == 200 and mmd["n_y"] == 200
    # A diagonal Gaussian's samples are not digits: no permutation of the 200 comes near.
    assert mmd["p_value"] == 1 / (mmd["permutations"] + 1)
    c2 = post(
        client, "/two_sample_test", {"model": "gaussian-digits", "x": real, "test": "c2st", "n_model": 300}
    ).json()
    # 200 test rows: a classifier that cannot tell would need 6 sd of luck to reach 0.7.
    assert c2["n_x"] == c2["n_y"] == 200 and c2["accuracy"] > 0.7 and c2["p_value"] < 1e-6, c2
    again = post(
        client, "/two_sample_test", {"model": "gaussian-digits", "x": real, "test": "mmd", "seed": 1}
    ).json()
    assert again == mmd
    small = post(client, "/two_sample_test", {"model": "gaussian-digits", "x": real[:5]})
    assert small.status_code == 400 and small.json()["field"] == "x"


def test_two_sample_endpoint_does_not_reject_a_model_against_its_own_samples(server):
    """x drawn from the model itself (seed 1000 + i), the endpoint's samples with seed i: each
    test at level 0.05 may reject 1 in 20; in 20 requests each it may do so at most `allowed`
    times (more happens once in 1,000 sessions for a level-0.05 test)."""
    from scipy.stats import binom

    client, _ = server
    runs = 20
    allowed = binom.isf(1e-3, runs, 0.05)
    for test in ("mmd", "c2st"):
        rejections = 0
        for i in range(runs):
            own = post(client, "/sample", {"model": "gaussian-digits", "n": 200, "seed": 1000 + i}).json()
            body = {"model": "gaussian-digits", "x": own["samples"], "test": test, "seed": i}
            resp = post(client, "/two_sample_test", body)
            assert resp.status_code == 200, resp.text
            rejections += resp.json()["p_value"] <= 0.05
        assert rejections <= allowed, (test, rejections, allowed)


def test_a_second_server_on_the_same_store_leaves_the_first_ones_metrics(server, tmp_path):
    """BentoML empties its multiprocess metrics folder when a server starts; each genreg server
    has its own, so starting another one on the store must not wipe this one's counters."""
    from servers import running_server

    client, _ = server
    post(client, "/sample", {"model": "gaussian-digits", "n": 3, "seed": 0})
    before = _metric(client.get("/metrics").text, "genreg_rows_total", model="gaussian-digits", kind="sample")
    assert before >= 3
    with running_server(tmp_path / "second.log", GENREG_MODELS="gaussian-digits") as second:
        assert httpx.get(f"{second.base}/models", timeout=30).status_code == 200
        after = _metric(
            client.get("/metrics").text, "genreg_rows_total", model="gaussian-digits", kind="sample"
        )
    assert after == before
