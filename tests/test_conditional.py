"""Conditional models: p(x|y), the marginal, the Bayes classifier, and their serving.

The categorical baseline per class is the exact reference case: its p(x|y) is a table, so
normalisation and the mixture can be checked by enumeration. The shared server serves one
trained on the digits' classes (tests/fixture_models.py: categorical-digits-cond).
"""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import tritonclient.http as triton

from plugins.baselines.categorical import CategoricalFamily
from registry.contract.dataset import Dataset
from registry.contract.family import TrainControl
from registry.datasets import load_digits
from registry.pipeline.train import train_and_store
from registry.runtime.models import LoadedModel
from registry.runtime.scoring import log_sum_exp, score

HEADERS = {"content-type": "application/json"}
COND = "categorical-digits-cond"


def post(client, path: str, body: dict):
    return client.post(path, content=json.dumps(body), headers=HEADERS)


@pytest.fixture(scope="module")
def tiny(bentoml_home):
    """A per-class categorical on 3 values of 3 levels, 2 classes (27 configurations)."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    # class 0 leans to low levels, class 1 to high ones
    x = np.clip(rng.integers(0, 3, (300, 3)) + y[:, None] - rng.integers(0, 2, (300, 3)), 0, 2).astype(
        np.float32
    )
    data = Dataset(
        "tiny",
        x[:200],
        x[200:250],
        x[250:],
        levels=3,
        labels={"train": y[:200], "validation": y[200:250], "test": y[250:]},
        class_names=("low", "high"),
    )
    family = CategoricalFamily()
    stored = train_and_store(
        family, data, family.Config(), TrainControl(progress=False), name="cat-tiny-cond"
    )
    return data, LoadedModel(stored, providers=["CPUExecutionProvider"])


def test_per_class_model_is_normalised_and_its_marginal_is_the_mixture(tiny):
    data, loaded = tiny
    grid = np.array(list(itertools.product(range(3), repeat=3)), dtype=np.float32)
    per_class = np.stack(
        [score(loaded, grid, "log_prob", labels=np.full(len(grid), c)).scores for c in range(2)], 1
    )
    # exp(log p(x|y)) sums to 1 over every configuration, for each y (through ONNX Runtime)
    np.testing.assert_allclose(np.exp(per_class).sum(0), 1.0, atol=1e-5)
    prior = data.class_prior()
    np.testing.assert_allclose(prior, loaded.stored.data["class_prior"])
    marginal = score(loaded, grid, "log_prob")
    assert marginal.given == "marginal"
    mixture = np.log(np.exp(per_class) @ prior)
    np.testing.assert_allclose(marginal.scores, mixture, atol=1e-5)
    assert abs(np.exp(marginal.scores).sum() - 1.0) < 1e-5
    # Bayes' rule: the posterior is p(x|y) p(y) / p(x)
    posterior = score(loaded, grid, "classify")
    np.testing.assert_allclose(
        posterior.probabilities, np.exp(per_class + np.log(prior) - mixture[:, None]), atol=1e-6
    )
    np.testing.assert_array_equal(posterior.labels, posterior.probabilities.argmax(1))
    assert posterior.source == "log_prob"
    assert loaded.stored.data["class_names"] == ["low", "high"]


def test_labels_steer_samples_and_seeds_fix_them(tiny):
    _, loaded = tiny
    low = loaded.sample(2000, seed=3, labels=np.zeros(2000, dtype=np.int64))
    high = loaded.sample(2000, seed=3, labels=np.ones(2000, dtype=np.int64))
    assert low.mean() < high.mean() - 0.3
    np.testing.assert_array_equal(low, loaded.sample(2000, seed=3, labels=np.zeros(2000, dtype=np.int64)))
    # without labels: the classes drawn from p(y) with the seed, the same noise
    mixed = loaded.sample(2000, seed=3)
    np.testing.assert_array_equal(mixed, loaded.sample(2000, seed=3))
    assert low.mean() < mixed.mean() < high.mean()


def test_the_stored_evaluation_has_conditional_bits_and_accuracy(trained):
    test = trained["categorical-digits-cond"].metrics["test"]
    cond = test["conditional"]
    assert cond["classes"] == 10 and cond["classify"]["source"] == "log_prob"
    # naive Bayes on digits: about 0.9 accurate; knowing the class makes x cheaper to code
    assert cond["classify"]["accuracy"] > 0.8
    assert cond["bits_per_dim"] < test["bits_per_dim"]
    # the marginal is within log K of the conditional: p(x) >= p(x|y) p(y) >= p(x|y) min p(y)
    assert (
        test["nats"]
        >= cond["nats"] + np.log(min(trained["categorical-digits-cond"].data["class_prior"])) - 1e-6
    )


@pytest.fixture(scope="module")
def http(server):
    return server[0]


@pytest.mark.slow
def test_models_state_the_classes(http):
    models = {m["name"]: m for m in http.get("/models").json()["models"]}
    cond = models[COND]
    assert cond["classes"] == 10 and cond["class_names"] == [str(i) for i in range(10)]
    assert abs(sum(cond["class_prior"]) - 1) < 1e-9 and cond["guidance"] is False
    assert cond["kinds"] == ["log_prob", "classify"]
    assert models["categorical-digits"]["classes"] is None
    doc = http.get("/docs.json").json()["components"]["schemas"]
    labels = doc[f"ScoreRequest.{COND}.log_prob"]["properties"]["labels"]["anyOf"][0]
    assert labels["items"] == {"type": "integer", "minimum": 0, "maximum": 9}
    assert doc[f"SampleRequest.{COND}"]["properties"]["guidance"] == {"type": "null"}


@pytest.mark.slow
def test_sample_and_score_with_labels_over_http(http):
    digits = load_digits(conditional=True)
    x, y = digits.test[:40], digits.labels["test"][:40]
    sevens = post(http, "/sample", {"model": COND, "n": 8, "label": 7, "seed": 5}).json()["samples"]
    per_row = post(http, "/sample", {"model": COND, "n": 8, "labels": [7] * 8, "seed": 5}).json()["samples"]
    assert sevens == per_row
    ones = post(http, "/sample", {"model": COND, "n": 8, "label": 1, "seed": 5}).json()["samples"]
    assert ones != sevens
    given = post(http, "/score", {"model": COND, "x": x.tolist(), "labels": y.tolist()}).json()
    assert given["given"] == "labels" and given["kind"] == "log_prob"
    marginal = post(http, "/score", {"model": COND, "x": x.tolist()}).json()
    assert marginal["given"] == "marginal"
    classified = post(http, "/score", {"model": COND, "x": x.tolist(), "kind": "classify"}).json()
    probabilities = np.array(classified["probabilities"])
    np.testing.assert_allclose(probabilities.sum(1), 1.0, atol=1e-9)
    assert classified["labels"] == probabilities.argmax(1).tolist() and classified["source"] == "log_prob"
    assert np.mean(np.array(classified["labels"]) == y) > 0.8
    # the marginal is the prior-weighted sum of the per-label likelihoods, row by row
    per_label = np.stack(
        [
            post(http, "/score", {"model": COND, "x": x.tolist(), "labels": [c] * len(x)}).json()["scores"]
            for c in range(10)
        ],
        1,
    )
    prior = np.log(next(m for m in http.get("/models").json()["models"] if m["name"] == COND)["class_prior"])
    np.testing.assert_allclose(marginal["scores"], log_sum_exp(per_label + prior), rtol=1e-6)
    np.testing.assert_allclose(given["scores"], per_label[np.arange(len(y)), y], rtol=1e-6)


BAD = [
    ("/sample", {"model": COND, "n": 2, "label": 10}, "label"),
    ("/sample", {"model": COND, "n": 2, "label": -1}, "label"),
    ("/sample", {"model": COND, "n": 2, "labels": [1]}, "labels"),
    ("/sample", {"model": COND, "n": 2, "labels": [1, 12]}, "labels"),
    ("/sample", {"model": COND, "n": 2, "label": 1, "labels": [1, 1]}, "labels"),
    ("/sample", {"model": COND, "n": 2, "label": "3"}, "label"),
    ("/sample", {"model": COND, "n": 2, "guidance": 2.0}, "guidance"),
    ("/sample", {"model": "categorical-digits", "n": 2, "label": 1}, "label"),
    ("/score", {"model": COND, "x": [[0] * 64], "labels": [10]}, "labels"),
    ("/score", {"model": COND, "x": [[0] * 64], "labels": [1, 2]}, "labels"),
    ("/score", {"model": COND, "x": [[0] * 64], "labels": [1.5]}, "labels"),
    ("/score", {"model": COND, "x": [[0] * 64], "kind": "classify", "labels": [1]}, "labels"),
    ("/score", {"model": "categorical-digits", "x": [[0] * 64], "labels": [1]}, "labels"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("path", "body", "field"), BAD)
def test_bad_labels_are_400s_naming_the_field(http, path, body, field):
    r = post(http, path, body)
    assert r.status_code == 400, r.text
    assert r.json()["field"] == field and field in r.json()["error"]


@pytest.mark.slow
def test_a_bound_family_classifies_from_its_bound_with_k_draws(http):
    """A conditional VAE: the marginal and the classifier come from log importance weights; k
    draws and the estimate apply (and are published) as for its bound."""
    digits = load_digits(conditional=True)
    x = digits.test[:30].tolist()
    name = "vae-digits-cond"
    info = next(m for m in http.get("/models").json()["models"] if m["name"] == name)
    assert info["kinds"] == ["bound", "classify"] and info["latent_dim"] is None
    doc = http.get("/docs.json").json()["components"]["schemas"]
    tiers = [key for key in doc if key.startswith(f"ScoreRequest.{name}.classify")]
    assert len(tiers) > 1 and any(doc[t]["properties"]["k"]["maximum"] > 1 for t in tiers)
    one = post(http, "/score", {"model": name, "x": x, "kind": "classify", "seed": 3}).json()
    many = post(http, "/score", {"model": name, "x": x, "kind": "classify", "k": 8, "seed": 3}).json()
    assert one["source"] == many["source"] == "bound" and many["k"] == 8
    assert many["estimate"] == "importance_weighted"
    assert np.mean(np.array(many["labels"]) == digits.labels["test"][:30]) > 0.6
    marginal = post(http, "/score", {"model": name, "x": x, "k": 8, "seed": 3}).json()
    given = post(http, "/score", {"model": name, "x": x, "k": 8, "seed": 3, "labels": many["labels"]}).json()
    assert marginal["given"] == "marginal" and given["given"] == "labels"
    # the marginal is at least the most probable class's joint term
    prior = np.log(info["class_prior"])[np.array(many["labels"])]
    assert np.all(np.array(marginal["scores"]) >= np.array(given["scores"]) + prior - 1e-6)
    # labels alone set n
    drawn = post(http, "/sample", {"model": name, "labels": [0, 1, 2], "seed": 1}).json()["samples"]
    assert len(drawn) == 3


@pytest.mark.slow
def test_classify_on_an_unconditional_model_is_a_422_listing_its_kinds(http):
    r = post(http, "/score", {"model": "categorical-digits", "x": [[0] * 64], "kind": "classify"})
    assert r.status_code == 422 and "log_prob" in r.json()["error"]


@pytest.mark.slow
def test_v2_labels_are_input_y(server):
    base = str(server[0].base_url).rstrip("/").removeprefix("http://")
    with triton.InferenceServerClient(base, network_timeout=60) as client:
        _v2_labels(client, server[0])


def _v2_labels(client, http) -> None:
    meta = client.get_model_metadata(COND)
    assert {"name": "y", "datatype": "INT64", "shape": ["-1"]} in [
        {**i, "shape": [str(s) for s in i["shape"]]} for i in meta["inputs"]
    ] and meta["parameters"]["classes"] == 10
    digits = load_digits(conditional=True)
    x, y = digits.test[:16].astype(np.float32), digits.labels["test"][:16].astype(np.int64)
    inputs = [triton.InferInput("x", list(x.shape), "FP32"), triton.InferInput("y", [len(y)], "INT64")]
    inputs[0].set_data_from_numpy(x, binary_data=True)
    inputs[1].set_data_from_numpy(y, binary_data=True)
    result = client.infer(COND, inputs)
    over_http = post(http, "/score", {"model": COND, "x": x.tolist(), "labels": y.tolist()}).json()
    np.testing.assert_allclose(result.as_numpy("scores"), over_http["scores"], rtol=1e-9)
    only = [triton.InferInput("x", list(x.shape), "FP32")]
    only[0].set_data_from_numpy(x, binary_data=True)
    classified = client.infer(COND, only, parameters={"kind": "classify"})
    assert classified.as_numpy("probabilities").shape == (16, 10)
    # y alone samples one row per label
    labels = triton.InferInput("y", [4], "INT64")
    labels.set_data_from_numpy(np.array([0, 1, 2, 3], dtype=np.int64))
    samples = client.infer(COND, [labels], parameters={"seed": 2}).as_numpy("samples")
    per_label = post(http, "/sample", {"model": COND, "n": 4, "labels": [0, 1, 2, 3], "seed": 2}).json()
    np.testing.assert_array_equal(samples, np.array(per_label["samples"], dtype=np.float32))
    # classify finds the labels itself: y beside x is refused, naming y
    y_too = [triton.InferInput("x", list(x.shape), "FP32"), triton.InferInput("y", [len(y)], "INT64")]
    y_too[0].set_data_from_numpy(x)
    y_too[1].set_data_from_numpy(y)
    with pytest.raises(Exception, match="y: kind 'classify' answers"):
        client.infer(COND, y_too, parameters={"kind": "classify"})
    with pytest.raises(Exception, match="y: label 10"):
        bad = triton.InferInput("y", [1], "INT64")
        bad.set_data_from_numpy(np.array([10], dtype=np.int64))
        client.infer(COND, [bad])
