"""Sampling with a chosen step count, and the bound estimates a scorer supports, on every surface.

A private store holds five tiny models (built in about a second, no real training): the fixture
family `counted` (tests/fixture_plugins/counted_plugin.py) twice, with a sampler whose count
may be chosen (1..16, its own 4) and a bound supporting the average only or both estimates,
and once without a sampler; a fixed step loop (`stepper`, 3 steps) and a one-call sampler
(`box`). The real service serves
them with small limits (n <= 500, n x steps <= 4,096), so a count that overflows the limit is
cheap to ask for.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import FIXTURES
from servers import running_server

from registry.runtime.graphs import GraphSpec, StepLoop, loop_noise, run_loop, run_sampler
from registry.runtime.models import LoadedModel
from registry.runtime.scoring import draw_weight
from services.openapi import step_tiers

X = [[1.0, -2.0], [0.5, 0.0], [1.5, -4.0]]
VARIABLE, FIXED, ONE_CALL, SCORER = "counted-average", "stepper-walk", "box-blob", "counted-scorer"


def _spec(**loop) -> GraphSpec:
    return GraphSpec(
        role="sampler",
        file="s.onnx",
        x_input=None,
        noise=[{"name": "z", "dist": "normal", "dim": 2}],
        output="o",
        loop=StepLoop(state_dim=2, **loop),
    )


def test_a_loop_with_a_count_input_runs_any_count_in_its_range():
    loop = StepLoop(steps=4, state_dim=2, count_input="count", max_steps=16)
    assert [loop.count(None), loop.count(1), loop.count(4), loop.count(16)] == [4, 1, 4, 16]
    for bad in (0, 17):
        with pytest.raises(ValueError, match=r"^steps: .* outside 1\.\.16"):
            loop.count(bad)
    fixed = StepLoop(steps=3, state_dim=2)
    assert fixed.count(None) == fixed.count(3) == 3
    with pytest.raises(ValueError, match=r"^steps: this sampler runs exactly 3 steps"):
        fixed.count(2)
    with pytest.raises(ValueError, match="go together"):
        StepLoop(steps=3, state_dim=2, count_input="count")
    with pytest.raises(ValueError, match="exceeds max_steps"):
        StepLoop(steps=20, state_dim=2, count_input="count", max_steps=16)
    with pytest.raises(ValueError, match="distinct names"):
        _spec(steps=3, count_input="z", max_steps=4)  # the count input is no noise input


def test_run_loop_feeds_the_count_and_runs_that_many_steps():
    spec = _spec(steps=4, count_input="count", max_steps=16)
    for steps, count in ((None, 4), (1, 1), (7, 7)):
        seen = []

        def run(feeds, seen=seen):
            assert feeds["count"].dtype == np.int64 and feeds["count"].shape == (5, 1)
            seen.append((int(feeds["step"][0, 0]), int(feeds["count"][0, 0])))
            return feeds["state"] + 1

        state = run_loop(run, spec, 5, lambda t: {"z": np.zeros((5, 2), np.float32)}, steps)
        assert seen == [(t, count) for t in range(count)]
        np.testing.assert_array_equal(state, np.full((5, 2), count))
        noise = loop_noise(spec, 5, np.random.default_rng(0), steps=steps)
        assert noise["z"].shape == (count, 5, 2)
        # run_sampler (the parity check's loop) runs as many steps as the noise holds
        assert run_sampler(lambda f: f["state"] + f["count"], spec, 5, noise)[0, 0] == count * count
    # A fixed loop feeds no count (its graph has no such input) and refuses another count.
    fixed = _spec(steps=3)
    feeds = []
    run_loop(lambda f: feeds.append(set(f)) or f["state"], fixed, 2, lambda t: {"z": np.zeros((2, 2))})
    assert feeds == [{"state", "step", "z"}] * 3
    with pytest.raises(ValueError, match="steps"):
        run_loop(lambda f: f["state"], fixed, 2, lambda t: {}, 2)


@pytest.mark.parametrize(
    ("most_steps", "max_n", "budget"), [(16, 100, 400), (16, 2000, 262144), (1000, 4096, 262144), (60, 7, 50)]
)
def test_the_published_step_tiers_never_admit_a_refused_sample(most_steps, max_n, budget):
    """services.openapi's (steps, n) rectangles state the service's rule exactly:
    n <= max_n and n x draw_weight(steps) <= budget (steps weighed as k is)."""
    tiers = step_tiers(most_steps, max_n, budget)
    assert len(tiers) <= most_steps.bit_length() + 1
    for steps in range(1, most_steps + 1):
        for n in sorted(
            {1, 2, 7, 25, 26, 50, 80, 100, 101, 261, 262, 263, 2000, 4096} & set(range(1, max_n + 1))
        ):
            served = n * draw_weight(steps) <= budget
            published = any(low <= steps <= high and n <= most for low, high, most in tiers)
            assert published == served, (steps, n, tiers)


@contextmanager
def _store(home: Path) -> Iterator[None]:
    """This process's model store moved to ``home`` (BentoML caches its store: see
    registry.pipeline.fixtures.genreg_store), and put back after."""
    from bentoml._internal.configuration.containers import BentoMLContainer
    from bentoml._internal.models import ModelStore

    (home / "models").mkdir(parents=True, exist_ok=True)
    previous_home, previous_store = BentoMLContainer.bentoml_home.get(), BentoMLContainer.model_store.get()
    BentoMLContainer.bentoml_home.set(str(home))
    BentoMLContainer.model_store.set(ModelStore(str(home / "models")))
    try:
        yield
    finally:
        BentoMLContainer.bentoml_home.set(previous_home)
        BentoMLContainer.model_store.set(previous_store)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """The five models in a private store: {name: LoadedModel}, and the store's home."""
    sys.path.insert(0, str(FIXTURES))
    try:
        from box_plugin import BoxFamily
        from counted_plugin import CountedFamily
        from stepper_plugin import StepperFamily
    finally:
        sys.path.remove(str(FIXTURES))
    from registry.contract.family import TrainControl
    from registry.datasets import load_dataset
    from registry.pipeline.train import train_and_store

    home = tmp_path_factory.mktemp("steps-home")
    rng = np.random.default_rng(0)
    np.save(home / "blob.npy", rng.normal([1.0, -2.0], [0.5, 2.0], (400, 2)))
    np.save(home / "walk.npy", np.cumsum(rng.integers(0, 2, (400, 3)), axis=1) % 3)
    made = {}
    with _store(home):
        for family, data, name, options in (
            (CountedFamily, "blob.npy", VARIABLE, {}),
            (CountedFamily, "blob.npy", "counted-both", {"estimates": "both"}),
            (StepperFamily, "walk.npy", FIXED, {}),
            (BoxFamily, "blob.npy", ONE_CALL, {}),
            (CountedFamily, "blob.npy", SCORER, {"sampler": False}),
        ):
            fam = family()
            stored = train_and_store(
                fam,
                load_dataset(str(home / data)),
                fam.Config(**options),
                TrainControl(progress=False),
                name=name,
            )
            made[name] = LoadedModel(stored)
    return made, home


@pytest.fixture(scope="module")
def client(store, tmp_path_factory):
    _, home = store
    log = tmp_path_factory.mktemp("steps-server") / "server.log"
    # The gallery's density panel asks for 500 samples and scores a 64 x 64 grid; rows beyond the
    # draw-row limit are refused whatever the kind.
    env = {"BENTOML_HOME": str(home), "GENREG_MAX_N": "500", "GENREG_MAX_ROWS": "5000"}
    with running_server(log, GENREG_MAX_DRAW_ROWS="4096", **env) as srv, httpx.Client(base_url=srv.base) as c:
        yield c
    assert "Traceback" not in log.read_text()


def post(client: httpx.Client, path: str, body: dict) -> httpx.Response:
    return client.post(path, content=json.dumps(body), headers={"content-type": "application/json"})


def _refused(resp: httpx.Response, status: int, field: str) -> str:
    assert resp.status_code == status and resp.json()["field"] == field, resp.text
    assert resp.json()["error"].startswith(field) or field in resp.json()["error"], resp.text
    return resp.json()["error"]


def test_models_state_steps_and_estimates(client):
    models = {m["name"]: m for m in client.get("/models").json()["models"]}
    got = {name: (m["steps"], m["max_steps"], m["estimates"]) for name, m in models.items()}
    assert got == {
        VARIABLE: (4, 16, ["average"]),
        "counted-both": (4, 16, ["average", "importance_weighted"]),
        FIXED: (3, None, []),
        ONE_CALL: (1, None, []),
        SCORER: (None, None, ["average"]),
    }


def test_sample_with_a_chosen_step_count(client):
    def sample(**extra):
        resp = post(client, "/sample", {"model": VARIABLE, "n": 6, "seed": 3, **extra})
        assert resp.status_code == 200, resp.text
        return resp.json()

    own = sample()
    assert own["steps"] == 4 and sample(steps=4) == own and sample() == own
    one, most = sample(steps=1), sample(steps=16)
    assert (one["steps"], most["steps"]) == (1, 16) and sample(steps=16) == most
    runs = [np.array(r["samples"]) for r in (one, own, most)]
    assert all(x.shape == (6, 2) for x in runs)
    assert not np.allclose(runs[0], runs[1]) and not np.allclose(runs[1], runs[2])
    # n x steps within the limit (4,096 here): 500 samples take the own 4 steps, not 16
    assert post(client, "/sample", {"model": VARIABLE, "n": 500, "steps": 4}).status_code == 200
    message = _refused(post(client, "/sample", {"model": VARIABLE, "n": 500, "steps": 16}), 400, "steps")
    assert "500 samples x 16 sampling steps = 8000 rows exceeds 4096" in message
    # the fixed loop and the one-call sampler take their own count
    assert post(client, "/sample", {"model": FIXED, "n": 2, "steps": 3}).json()["steps"] == 3
    one_call = post(client, "/sample", {"model": ONE_CALL, "n": 2, "steps": 1})
    assert one_call.status_code == 200 and len(one_call.json()["samples"]) == 2, one_call.text
    assert "steps" not in one_call.json()


@pytest.mark.parametrize(
    ("model", "steps", "says"),
    [
        (VARIABLE, 0, "greater than or equal to 1"),
        (VARIABLE, 17, "outside 1..16"),
        (VARIABLE, 1001, "less than or equal to 1000"),
        (FIXED, 2, "exactly 3 steps"),
        (ONE_CALL, 2, "one graph call"),
    ],
)
def test_a_count_the_sampler_cannot_run_is_400_naming_steps(client, model, steps, says):
    message = _refused(post(client, "/sample", {"model": model, "n": 2, "steps": steps}), 400, "steps")
    assert says in message


def test_steps_for_a_model_that_cannot_sample_is_422_naming_the_model(client):
    for steps in (None, 1, 2):
        resp = post(client, "/sample", {"model": SCORER, "n": 2, "steps": steps})
        assert resp.status_code == 422 and resp.json()["field"] == "model", resp.text
        assert "cannot sample" in resp.json()["error"]
        v2 = _infer(client, SCORER, {"inputs": [], "parameters": {} if steps is None else {"steps": steps}})
        assert v2.status_code == 422 and "cannot sample" in v2.json()["error"], v2.text


def test_score_serves_only_the_estimates_the_bound_supports(client, store):
    models, _ = store
    body = {"model": VARIABLE, "x": X, "kind": "bound", "k": 8, "seed": 2}
    message = _refused(post(client, "/score", {**body, "estimate": "importance_weighted"}), 422, "estimate")
    assert "supports the estimate(s) average" in message
    for extra in ({}, {"estimate": "average"}):
        out = post(client, "/score", {**body, **extra}).json()
        assert out["estimate"] == "average" and "elbo" not in out and out["k"] == 8
        draws = models[VARIABLE].log_weights(np.array(X), seed=2, k=8)
        np.testing.assert_allclose(out["scores"], draws.mean(1), rtol=1e-12)
    # Draws that are log importance weights: both, the tighter by default (with the average beside).
    both = {**body, "model": "counted-both"}
    tight = post(client, "/score", both).json()
    assert (
        tight["estimate"] == "importance_weighted"
        and post(client, "/score", {**both, "estimate": "importance_weighted"}).json() == tight
    )
    plain = post(client, "/score", {**both, "estimate": "average"}).json()
    assert plain["estimate"] == "average" and "elbo" not in plain
    np.testing.assert_allclose(plain["scores"], tight["elbo"], rtol=1e-12)
    assert all(s > e for s, e in zip(tight["scores"], plain["scores"], strict=True))
    # estimate is a bound's: not an exact score's, and one of the two
    _refused(
        post(client, "/score", {"model": "counted-both", "x": X, "estimate": "average"}), 400, "estimate"
    )
    _refused(post(client, "/score", {**both, "estimate": "median"}), 400, "estimate")
    assert "estimate" not in post(client, "/score", {"model": "counted-both", "x": X}).json()


def _infer(client, model: str, body: dict) -> httpx.Response:
    return post(client, f"/v2/models/{model}/infer", body)


def test_v2_steps_and_estimates(client):
    meta = client.get(f"/v2/models/{VARIABLE}").json()
    stated = {key: meta["parameters"].get(key) for key in ("steps", "max_steps", "estimates")}
    assert stated == {"steps": 4, "max_steps": 16, "estimates": "average"}
    assert "elbo" not in {o["name"] for o in meta["outputs"]}  # the average-only bound gives none
    both = client.get("/v2/models/counted-both").json()
    assert both["parameters"]["estimates"] == "average,importance_weighted"
    assert "elbo" in {o["name"] for o in both["outputs"]}
    fixed = client.get(f"/v2/models/{FIXED}").json()["parameters"]
    assert fixed["steps"] == 3 and "max_steps" not in fixed and "estimates" not in fixed

    for steps in (1, 16):
        v2 = _infer(
            client, VARIABLE, {"inputs": [], "parameters": {"n": 3, "seed": 9, "steps": steps}}
        ).json()
        ref = post(client, "/sample", {"model": VARIABLE, "n": 3, "seed": 9, "steps": steps}).json()
        assert v2["parameters"] == {"n": 3, "steps": steps}
        np.testing.assert_array_equal(np.reshape(v2["outputs"][0]["data"], (3, 2)), ref["samples"])
    for model, steps in ((VARIABLE, 17), (FIXED, 2), (ONE_CALL, 2), (VARIABLE, 0)):
        resp = _infer(client, model, {"inputs": [], "parameters": {"steps": steps}})
        assert resp.status_code == 400 and "steps" in resp.json()["error"], resp.text

    x = {"name": "x", "shape": [3, 2], "datatype": "FP64", "data": np.ravel(X).tolist()}
    score = {"kind": "bound", "k": 4, "seed": 1}
    refused = _infer(
        client, VARIABLE, {"inputs": [x], "parameters": {**score, "estimate": "importance_weighted"}}
    )
    assert refused.status_code == 422 and "estimate" in refused.json()["error"]
    for model, estimate, outputs in (
        (VARIABLE, "average", ["scores", "bits_per_dim"]),
        ("counted-both", "importance_weighted", ["scores", "bits_per_dim", "elbo"]),
    ):
        v2 = _infer(client, model, {"inputs": [x], "parameters": score}).json()
        assert v2["parameters"] == {"kind": "bound", "k": 4, "estimate": estimate}
        assert [o["name"] for o in v2["outputs"]] == outputs
    plain = _infer(
        client, "counted-both", {"inputs": [x], "parameters": {**score, "estimate": "average"}}
    ).json()
    assert plain["parameters"]["estimate"] == "average" and [o["name"] for o in plain["outputs"]] == [
        "scores",
        "bits_per_dim",
    ]


def test_the_document_states_each_models_steps_and_estimates(client):
    schemas = client.get("/docs.json").json()["components"]["schemas"]

    def branches(request: str, model: str) -> list[dict]:
        union = [schemas[ref["$ref"].rsplit("/", 1)[1]] for ref in schemas[request]["anyOf"]]
        return [b["properties"] for b in union if model in b["properties"]["model"].get("enum", [])]

    own = [(b["steps"], b["n"]["maximum"]) for b in branches("SampleRequest", VARIABLE)]
    assert own[0] == ({"enum": [4, None]}, 500)
    chosen = [
        (b["steps"]["minimum"], b["steps"]["maximum"], b["n"]["maximum"])
        for b in branches("SampleRequest", VARIABLE)[1:]
    ]
    assert chosen == step_tiers(16, 500, 4096) and chosen[0] == (1, 8, 500) and chosen[-1] == (9, 16, 256)
    assert [b["steps"] for b in branches("SampleRequest", FIXED)] == [{"enum": [3, None]}]
    assert [b["steps"] for b in branches("SampleRequest", ONE_CALL)] == [{"enum": [1, None]}]
    score = branches("ScoreRequest", VARIABLE)
    estimates = {b["kind"].get("const", "log_prob"): b["estimate"] for b in score}
    assert estimates == {"log_prob": {"type": "null"}, "bound": {"enum": ["average", None]}}
    # rows x k within the draw-row limit (4,096 here, under GENREG_MAX_ROWS) for every kind
    assert max(b["x"]["maxItems"] for b in score) == 4096
    too_many = post(client, "/score", {"model": VARIABLE, "x": [[0.0, 0.0]] * 4097})
    assert too_many.status_code == 400, too_many.text


def test_cli_sample_steps_and_score_estimate(store, tmp_path):
    from typer.testing import CliRunner

    from registry.cli import app

    _, home = store
    rows = tmp_path / "rows.npy"
    np.save(rows, np.array(X))
    runner = CliRunner()
    with _store(home):
        one = runner.invoke(app, ["sample", VARIABLE, "-n", "3", "--seed", "1", "--steps", "1"])
        most = runner.invoke(app, ["sample", VARIABLE, "-n", "3", "--seed", "1", "--steps", "16"])
        assert one.exit_code == most.exit_code == 0 and one.stdout != most.stdout
        over = runner.invoke(app, ["sample", VARIABLE, "--steps", "17"])
        assert over.exit_code == 2 and "--steps: 17 is outside 1..16" in over.output
        fixed = runner.invoke(app, ["sample", FIXED, "--steps", "2"])
        assert fixed.exit_code == 2 and "--steps: this sampler runs exactly 3 steps" in fixed.output
        score = ["score", VARIABLE, "--file", str(rows), "--kind", "bound", "-k", "8"]
        refused = runner.invoke(app, [*score, "--estimate", "importance_weighted"])
        assert refused.exit_code == 2 and "--estimate: " in refused.output
        average = runner.invoke(app, score)
        assert average.exit_code == 0 and "mean average bound (k=8)" in average.output
        tight = runner.invoke(app, [*score[:1], "counted-both", *score[2:]])
        assert (
            "mean importance-weighted bound (k=8)" in tight.output
            and "mean average bound (k=8)" in tight.output
        )


@pytest.mark.skipif(
    not (shutil.which("chromium") and shutil.which("chromedriver")),
    reason="headless Chromium unavailable (see tests/test_gallery.py)",
)
def test_the_gallery_offers_steps_where_the_count_may_be_chosen(client, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from test_gallery import wait_for

    os.environ.setdefault("SE_OFFLINE", "true")
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium'}")
    driver = webdriver.Chrome(service=Service(executable_path=shutil.which("chromedriver")), options=options)
    try:
        driver.get(str(client.base_url).rstrip("/") + "/")
        # Every /sample body the page sends, recorded.
        driver.execute_script(
            "window.sent = []; const f = window.fetch;"
            "window.fetch = (p, o) => { if (p === '/sample') window.sent.push(JSON.parse(o.body)); return f(p, o); };"
        )

        def open_model(name: str) -> list[dict]:
            driver.execute_script("window.sent = []")
            wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, f"tr[data-model='{name}'] button"))
            driver.find_element(By.CSS_SELECTOR, f"tr[data-model='{name}'] button").click()
            wait_for(lambda: driver.find_element(By.ID, "density").get_attribute("data-drawn") == "yes")
            return driver.execute_script("return window.sent")

        label, steps = driver.find_element(By.ID, "steps-label"), driver.find_element(By.ID, "steps")
        assert all("steps" not in body for body in open_model(ONE_CALL)) and not label.is_displayed()
        sent = open_model(VARIABLE)
        assert label.is_displayed() and steps.get_attribute("max") == "16"
        assert sent and all(body["steps"] == 4 for body in sent)
        driver.execute_script("window.sent = []; arguments[0].value = '1'", steps)
        driver.execute_script("arguments[0].dispatchEvent(new Event('change'))", steps)
        wait_for(lambda: driver.execute_script("return window.sent.length"), what="a new sample")
        assert [body["steps"] for body in driver.execute_script("return window.sent")] == [1]
    finally:
        driver.quit()
