"""The Open Inference Protocol (KServe V2) routes, driven with the official tritonclient.http client.

Every served fixture model (the suite's trained store) is scored and sampled over /v2 with JSON
and with binary tensors, and each answer is compared with /score's and /sample's for the same
seed. Malformed binary bodies, the protocol's error body and the shared limits and metrics are
checked with raw requests, where the client would refuse to send them.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

pytestmark = pytest.mark.slow
JSON = {"content-type": "application/json"}
FLOAT32 = {"rtol": float(np.finfo(np.float32).eps), "atol": 1e-6}


@pytest.fixture(scope="module")
def client(server):
    http, _ = server
    base = str(http.base_url).rstrip("/").removeprefix("http://")
    with triton.InferenceServerClient(base, network_timeout=60) as tc:
        yield tc


@pytest.fixture(scope="module")
def served(server):
    http, _ = server
    return {m["name"]: m for m in http.get("/models").json()["models"]}


def _post(http, path: str, body: dict):
    return http.post(path, content=json.dumps(body), headers=JSON)


def _rows(http, model: dict, n: int = 6) -> np.ndarray:
    """Rows in the model's data range: samples of a sampler, else a digits-like lattice."""
    if "sample" in model["capabilities"]:
        return np.array(_post(http, "/sample", {"model": model["name"], "n": n, "seed": 0}).json()["samples"])
    dim, levels = model["data"]["dim"], model["data"].get("levels") or 5
    return (np.arange(n * dim).reshape(n, dim) * 7 % levels).astype(np.float64)


def _score_v2(client, model: dict, x: np.ndarray, binary: bool, **params) -> triton.InferResult:
    tensor = triton.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x.astype(np.float32), binary_data=binary)
    # JSON both ways, or binary both ways (no outputs named: the client asks for binary ones).
    names = _outs(params, model["estimates"])
    outputs = None if binary else [triton.InferRequestedOutput(o, binary_data=False) for o in names]
    return client.infer(model["name"], [tensor], outputs=outputs, parameters=params)


def _outs(params: dict, estimates: list[str] = ()) -> list[str]:
    if params.get("kind") == "discriminator":
        return ["scores"]
    if params.get("kind") == "classify":  # Bayes' rule over a conditional model's classes
        return ["scores", "labels", "probabilities"]
    # elbo beside the importance-weighted bound (a bound's default where its scorer supports it)
    weighted = params.get("kind") == "bound" and "importance_weighted" in estimates
    return ["scores", "bits_per_dim", *(["elbo"] if params.get("k", 1) > 1 and weighted else [])]


def test_server_health_and_metadata(client):
    assert client.is_server_live() and client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta["name"] == "genreg" and "binary_tensor_data" in meta["extensions"]


def test_model_metadata_comes_from_the_stored_description(client, served):
    for name, model in served.items():
        meta = client.get_model_metadata(name)
        dim = model["data"]["dim"]
        assert meta["name"] == name and model["version"] in meta["versions"], meta
        inputs = {t["name"]: t for t in meta["inputs"]}
        outputs = {t["name"]: t for t in meta["outputs"]}
        if model["kinds"]:
            expected = {"x": {"name": "x", "datatype": "FP32", "shape": [-1, dim]}}
            if model["latent_dim"] is not None:  # decode's input
                expected["z"] = {"name": "z", "datatype": "FP32", "shape": [-1, model["latent_dim"]]}
            if model["classes"]:  # a conditional model's labels
                expected["y"] = {"name": "y", "datatype": "INT64", "shape": [-1]}
            assert inputs == expected
            assert outputs["scores"]["datatype"] == "FP64"
            assert ("elbo" in outputs) == ("importance_weighted" in model["estimates"])
            likelihood = bool({"log_prob", "bound"} & set(model["kinds"]))
            assert ("bits_per_dim" in outputs) == likelihood
        assert ("samples" in outputs) == ("sample" in model["capabilities"])
        if "samples" in outputs:
            assert outputs["samples"] == {"name": "samples", "datatype": "FP32", "shape": [-1, dim]}
        assert meta["parameters"]["kinds"] == ",".join(model["kinds"])
        assert client.get_model_metadata(name, model["version"])["name"] == name
        assert client.is_model_ready(name) and client.is_model_ready(name, model["version"])
    assert not client.is_model_ready("no-such-model")
    with pytest.raises(InferenceServerException) as err:
        client.get_model_metadata("no-such-model")
    assert err.value.status() == "404" and "no-such-model" in err.value.message()


def test_scoring_matches_score_for_every_model_and_kind(server, client, served):
    http, _ = server
    compared = 0
    for name, model in served.items():
        x = _rows(http, model)
        for kind in model["kinds"]:
            for k in (1, 4) if kind == "bound" else (1,):
                ref = _post(http, "/score", {"model": name, "x": x.tolist(), "kind": kind, "k": k, "seed": 5})
                ref = ref.json()
                for binary in (False, True):
                    got = _score_v2(client, model, x, binary, kind=kind, k=k, seed=5)
                    reply = got.get_response()
                    # a bound's estimate (a classification's from a bound too), a conditional
                    # model's marginal, or the source of a classification
                    stated = {"kind": kind, "k": k} | {
                        key: ref[key] for key in ("estimate", "given", "source") if ref.get(key) is not None
                    }
                    assert reply["model_name"] == name and reply["parameters"] == stated
                    for output in _outs({"kind": kind, "k": k}, model["estimates"]):
                        key = "bits_per_dim" if output == "bits_per_dim" else output
                        np.testing.assert_allclose(got.as_numpy(output), ref[key], **FLOAT32)
                    compared += 1
    # every model with a kind, JSON and binary: a silent skip would leave this short
    assert compared >= 2 * sum(len(m["kinds"]) for m in served.values())


def test_sampling_matches_sample_for_every_sampler(server, client, served):
    http, _ = server
    samplers = [m for m in served.values() if "sample" in m["capabilities"]]
    assert len(samplers) >= 6
    for model in samplers:
        name = model["name"]
        body = {"model": name, "n": 5, "seed": 7, "temperature": 0.8}
        ref = np.array(_post(http, "/sample", body).json()["samples"], dtype=np.float32)
        meta = client.get_model_metadata(name)
        params = {"n": 5, "seed": 7, "temperature": 0.8}
        if "steps" in meta["parameters"]:
            params["steps"] = meta["parameters"]["steps"]
        for binary in (False, True):
            outputs = [triton.InferRequestedOutput("samples", binary_data=binary)]
            got = client.infer(name, [], outputs=outputs, parameters=params).as_numpy("samples")
            assert got.dtype == np.float32 and got.shape == (5, model["data"]["dim"])
            np.testing.assert_array_equal(got, ref)


def test_versions_in_the_path_and_the_request_id(server, client, served):
    http, _ = server
    model = served["flow-8gaussians"]
    x = np.array([[0.0, 2.8], [1.0, -1.0]], dtype=np.float32)
    tensor = triton.InferInput("x", [2, 2], "FP32")
    tensor.set_data_from_numpy(x)
    got = client.infer("flow-8gaussians", [tensor], model_version=model["version"], request_id="r-1")
    assert got.get_response()["id"] == "r-1" and got.get_response()["model_version"] == model["version"]
    ref = _post(http, "/score", {"model": model["tag"], "x": x.tolist()}).json()
    np.testing.assert_allclose(got.as_numpy("scores"), ref["scores"], **FLOAT32)


def _infer(http, name: str, head: dict, binary: bytes = b"", header_length: int | str | None = None):
    text = json.dumps(head).encode()
    headers = {"inference-header-content-length": str(len(text) if header_length is None else header_length)}
    return http.post(f"/v2/models/{name}/infer", content=text + binary, headers=headers if binary else JSON)


def _binary_x(rows: int, dim: int, datatype: str = "FP32", size: int | None = None) -> tuple[dict, bytes]:
    data = np.zeros((rows, dim), dtype=np.float32).tobytes()
    tensor = {
        "name": "x",
        "shape": [rows, dim],
        "datatype": datatype,
        "parameters": {"binary_data_size": size or len(data)},
    }
    return {"inputs": [tensor]}, data


def _error(resp, status: int, *names: str) -> str:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"}, body  # the protocol's error body
    for name in names:
        assert name in body["error"], body
    return body["error"]


def test_malformed_binary_bodies_get_400_naming_the_tensor(server):
    http, log = server
    head, data = _binary_x(2, 2)
    # the header's length runs past the end of the body
    text = json.dumps(head).encode()
    _error(
        _infer(http, "flow-8gaussians", head, data, header_length=len(text) + len(data) + 1),
        400,
        "Inference-Header-Content-Length",
    )
    _error(
        _infer(http, "flow-8gaussians", head, data, header_length="ten"),
        400,
        "Inference-Header-Content-Length",
    )
    # a size that disagrees with shape x datatype
    bad, _ = _binary_x(2, 2, size=12)
    _error(_infer(http, "flow-8gaussians", bad, data[:12]), 400, "x:", "binary_data_size 12", "16 bytes")
    # the tensor's bytes run past the end of the body
    _error(_infer(http, "flow-8gaussians", head, data[:8]), 400, "x:", "past the end")
    # bytes left over after every input
    _error(_infer(http, "flow-8gaussians", head, data + b"\0" * 4), 400, "inputs:", "add up to 16")
    # an unknown datatype, and protocol types the models cannot take
    for datatype, words in (
        ("FP99", "unknown datatype"),
        ("BYTES", "not supported"),
        ("BF16", "not supported"),
        ("BOOL", "not supported"),
    ):
        bad, _ = _binary_x(2, 2, datatype=datatype)
        _error(_infer(http, "flow-8gaussians", bad, data), 400, "x:", words)
    # JSON data that disagrees with its shape, or is not numbers
    x = {"name": "x", "shape": [2, 2], "datatype": "FP32"}
    _error(
        _infer(http, "flow-8gaussians", {"inputs": [{**x, "data": [1, 2, 3]}]}),
        400,
        "x:",
        "3 values",
        "needs 4",
    )
    _error(_infer(http, "flow-8gaussians", {"inputs": [{**x, "data": [1, 2, True, 4]}]}), 400, "x:")
    _error(_infer(http, "flow-8gaussians", {"inputs": [{**x, "data": ["1", 2, 3, 4]}]}), 400, "x:")
    _error(
        _infer(http, "flow-8gaussians", {"inputs": [{**x, "datatype": "INT32", "data": [1.5, 2, 3, 4]}]}),
        400,
        "x:",
    )
    assert "Traceback" not in log.read_text()


def test_errors_follow_the_rules_of_score_and_sample(server):
    http, _ = server
    x = {"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [0, 0, 0]}
    ok = {"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [0, 0]}
    _error(_infer(http, "no-such-model", {"inputs": [ok]}), 404, "no-such-model")
    _error(_infer(http, "flow-8gaussians", {"inputs": [x]}), 400, "x:", "2 values")  # the row check
    digit = {"name": "x", "shape": [1, 64], "datatype": "FP32", "data": [17] * 64}
    _error(_infer(http, "flow-digits", {"inputs": [digit]}), 400, "x:", "0..16")
    _error(
        _infer(http, "flow-8gaussians", {"inputs": [ok], "parameters": {"kind": "bound"}}),
        422,
        "it has: log_prob",
    )
    _error(_infer(http, "flow-8gaussians", {"inputs": [ok], "parameters": {"k": 4}}), 400, "k")
    _error(_infer(http, "flow-8gaussians", {"inputs": [ok], "parameters": {"k": 0}}), 400, "parameters.k")
    _error(
        _infer(http, "flow-8gaussians", {"inputs": [ok], "parameters": {"n": 3}}),
        400,
        "parameters.n",
        "unknown",
    )
    _error(_infer(http, "flow-8gaussians", {"inputs": [{**ok, "name": "w"}]}), 400, "inputs:", "'w'")
    # y is a conditional model's labels: an unconditional model says it takes none
    _error(_infer(http, "flow-8gaussians", {"inputs": [{**ok, "name": "y"}]}), 400, "y:", "not conditional")
    _error(
        _infer(http, "flow-8gaussians", {"inputs": [ok], "outputs": [{"name": "samples"}]}), 400, "outputs:"
    )
    _error(_infer(http, "flow-8gaussians", {"inputs": [], "parameters": {"n": 10**6}}), 400, "parameters.n")
    _error(
        _infer(http, "flow-8gaussians", {"inputs": [], "parameters": {"temperature": -1}}), 400, "temperature"
    )
    _error(_infer(http, "flow-8gaussians", {"inputs": [], "parameters": {"steps": 3}}), 400, "steps")
    _error(_infer(http, "flow-8gaussians", {"inputs": "x"}), 400, "inputs")
    _error(http.post("/v2/models/flow-8gaussians/infer", content=b"{not json"), 400, "body")
    _error(http.post("/v2/models/flow-8gaussians/infer", content=b"[]"), 400, "body")
    # x larger than /score allows (the server runs with GENREG_MAX_ROWS=5000)
    big = {"name": "x", "shape": [5001, 2], "datatype": "FP32", "data": [0.0] * 10002}
    _error(_infer(http, "flow-8gaussians", {"inputs": [big]}), 400, "x:", "5000")
    wrong = http.get("/v2/models/flow-8gaussians/infer")
    _error(wrong, 405, "POST")
    assert wrong.headers["allow"] == "POST"
    assert http.post("/v2/health/live").headers["allow"] == "GET"


def _metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{"):
            got = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
            if all(got.get(k) == v for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
    return total


def test_metrics_label_the_protocol(server, client):
    http, _ = server
    before = http.get("/metrics").text
    client.infer("gaussian-digits", [], parameters={"n": 9, "seed": 1})
    x = triton.InferInput("x", [3, 64], "FP32")
    x.set_data_from_numpy(np.ones((3, 64), dtype=np.float32))
    client.infer("gaussian-digits", [x])
    _infer(
        http,
        "gaussian-digits",
        {"inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP32", "data": [99] * 64}]},
    )
    after = http.get("/metrics").text

    def delta(name: str, **kw: str) -> float:
        return _metric(after, name, **kw) - _metric(before, name, **kw)

    assert delta("genreg_rows_total", model="gaussian-digits", kind="sample", protocol="v2") == 9
    assert delta("genreg_rows_total", model="gaussian-digits", kind="bound", protocol="v2") == 3
    assert delta("genreg_rows_total", model="gaussian-digits", protocol="genreg") == 0
    assert delta("genreg_errors_total", endpoint="infer", reason="invalid_x", protocol="v2") == 1
