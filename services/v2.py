"""The Open Inference Protocol (KServe V2) over REST, beside genreg's own API.

Every served genreg model is a V2 model of the same name, and its stored versions are the V2
versions. Which operation an infer request runs is said by its inputs (docs/deploy.md, "Open
Inference Protocol", states the mapping in full):

- **score**: one input tensor named ``x``, rows of the model's width (FP32 or FP64; any
  integer type too); request parameters ``kind``, ``k``, ``seed`` and ``estimate`` as on
  /score. Outputs ``scores`` (FP64, nats per row, or P(real) for the discriminator),
  ``bits_per_dim`` (FP64, likelihood kinds) and, for k > 1 with the importance-weighted
  estimate, ``elbo`` (FP64: the plain average, beside ``scores``). The response's parameters
  give the kind, k and, for kind bound, the ``estimate`` that ``scores`` are.
- **encode**: one input ``x`` as for score, with the parameter ``operation`` = ``encode``;
  parameters ``seed`` and ``sample`` as on /encode. Outputs ``z`` (FP32), and what the model's
  encoder answers besides: ``mean`` and ``log_var`` (a VAE), ``dequantized`` (a flow on
  discrete data).
- **decode**: one input ``z`` (rows of the model's ``latent_dim``); parameters ``seed`` and
  ``sample`` as on /decode. Output ``x`` (FP32, rows in data units).
- **sample**: no inputs; parameters ``n``, ``seed``, ``temperature`` and ``steps`` as on
  /sample (``steps``: 1 to the model's ``max_steps`` where its sampler's count may be chosen,
  else its own count only). Output ``samples`` (FP32, n rows in data units); the response's
  parameters give n and, for a step sampler, the steps run.
- **conditional models**: the labels are an input tensor ``y`` (INT64, or any integer type;
  shape [n] or [n, 1]): beside ``x`` it scores log p(x|y) (/score's ``labels``); alone it samples
  one row of each label (/sample's ``labels``; n defaults to their count). Parameters ``label``
  (one class for all n samples) and ``guidance`` as on /sample. Score ``kind`` ``classify``
  answers ``scores`` (the posterior of the chosen class), ``labels`` (INT64) and
  ``probabilities`` (FP64, [rows, classes]); the response's parameter ``given`` says whether a
  log_prob or bound is of the labels or the marginal.

The model's metadata parameters state ``steps`` (a step sampler's own count), ``max_steps``
(where the count may be chosen), ``estimates`` (a bound scorer's, comma-separated) and
``latent_dim`` (a model that encodes and decodes).

Both run through the service's own ``score`` and ``sample`` (the same row check, limits and
metrics as /score and /sample, labelled protocol="v2"); errors are the protocol's
``{"error": "..."}`` with /score's and /sample's status codes, the message naming the field.
"""

from __future__ import annotations

import importlib.metadata
import re
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import numpy as np
from starlette.responses import Response

from registry.runtime import latent
from registry.runtime.images import image_shape
from registry.runtime.models import LoadedModel
from registry.runtime.scoring import Scores
from services.errors import NOT_RUNNING, ApiError, error_response, json_response
from services.jsonbody import json_object, may_hold_bools
from services.schemas import (
    MAX_ROWS,
    V2DecodeParameters,
    V2EncodeParameters,
    V2InferRequest,
    V2SampleParameters,
    V2ScoreParameters,
    conditioning,
    sampling,
    validate,
)
from services.tensors import HEADER, Output, TensorError, decode_inputs, encode_response, split_body

PROTOCOL = "v2"
PLATFORM = "genreg_onnxruntime"
EXTENSIONS = ["binary_tensor_data", "parameters"]
NAME = re.compile(r"[a-z0-9][a-z0-9._-]*")
VERSION = re.compile(r"[a-z0-9]+")
LIKELIHOODS = ("log_prob", "bound")


def _server_version() -> str:
    try:
        return importlib.metadata.version("genreg")
    except importlib.metadata.PackageNotFoundError:  # a Bento ships the source, not the dist
        return "unknown"


class Route(NamedTuple):
    """A V2 path: its endpoint (the metric label), the one method it takes, and the model named."""

    endpoint: str
    method: str
    name: str | None = None
    version: str | None = None


def route(path: str) -> Route | None:
    """The V2 route a path (trailing slash stripped) names, or None."""
    fixed = {"/v2": "server_metadata", "/v2/health/live": "server_live", "/v2/health/ready": "server_ready"}
    if path in fixed:
        return Route(fixed[path], "GET")
    if not path.startswith("/v2/models/"):
        return None
    name, *rest = path.removeprefix("/v2/models/").split("/")
    version = None
    if len(rest) >= 2 and rest[0] == "versions":
        version, rest = rest[1], rest[2:]
    tail = {(): ("model_metadata", "GET"), ("ready",): ("model_ready", "GET"), ("infer",): ("infer", "POST")}
    found = tail.get(tuple(rest))
    return None if found is None else Route(*found, name, version)


def endpoint_of(path: str) -> str | None:
    """The metric label of a V2 path (None for any other path): what auth counts a refusal under."""
    found = route(path)
    return None if found is None else found.endpoint


class V2Api(Protocol):
    """What the V2 routes need of the service instance."""

    def ready(self) -> bool: ...

    def resolve(self, ref: str) -> LoadedModel: ...

    def versions(self, name: str) -> list[str]: ...

    async def score(
        self,
        loaded: LoadedModel,
        x: Any,
        kind: str | None,
        *,
        k: int,
        seed: int | None,
        estimate: str | None = ...,
        protocol: str = ...,
        labels: Any = ...,
        labels_field: str = ...,
    ) -> Scores: ...

    async def sample(
        self,
        loaded: LoadedModel,
        n: int,
        *,
        seed: int | None,
        temperature: float,
        steps: int | None = ...,
        protocol: str = ...,
        then: Callable[[np.ndarray, int], Any] | None = ...,
        label: int | None = ...,
        labels: Any = ...,
        guidance: float | None = ...,
        labels_field: str = ...,
    ) -> Any: ...

    async def encode(
        self, loaded: LoadedModel, x: Any, *, seed: int | None, sample: bool | None, protocol: str = ...
    ) -> latent.Encoded: ...

    async def decode(
        self, loaded: LoadedModel, z: Any, *, seed: int | None, sample: bool | None, protocol: str = ...
    ) -> np.ndarray: ...


def method_not_allowed(found: Route, method: str, path: str) -> Response:
    err = ApiError(405, "method", f"{method} {path} is not allowed; use {found.method}", "method_not_allowed")
    return error_response(found.endpoint, err, PROTOCOL, headers={"allow": found.method})


def refuse(endpoint: str, err: ApiError) -> Response:
    return error_response(endpoint, err, PROTOCOL)


async def answer(found: Route, headers: dict[bytes, bytes], body: bytes, service: V2Api | None) -> Response:
    """The answer to one V2 request (its method already checked), errors as the protocol's body."""
    try:
        if found.endpoint == "server_live":
            return json_response({"live": True})
        if service is None:
            raise NOT_RUNNING
        if found.endpoint == "server_ready":
            if not service.ready():
                raise ApiError(503, None, "not ready: the models are still loading", "unavailable")
            return json_response({"ready": True})
        if found.endpoint == "server_metadata":
            return json_response({"name": "genreg", "version": _server_version(), "extensions": EXTENSIONS})
        loaded = _model(service, found)
        if found.endpoint == "model_ready":
            return json_response({"name": loaded.stored.name, "ready": True})
        if found.endpoint == "model_metadata":
            return json_response(metadata(loaded, service.versions(loaded.stored.name)))
        return await _infer(service, loaded, headers, body)
    except ApiError as err:
        return refuse(found.endpoint, err)


def _model(service: V2Api, found: Route) -> LoadedModel:
    name, version = found.name or "", found.version
    if not NAME.fullmatch(name) or (version is not None and not VERSION.fullmatch(version)):
        shown = name if version is None else f"{name}, version {version}"
        raise ApiError(
            404, "model", f"model: no model {shown[:100]!r} is served; see GET /models", "unknown_model"
        )
    return service.resolve(name if version is None else f"{name}:{version}")


def metadata(loaded: LoadedModel, versions: list[str]) -> dict[str, Any]:
    """The model's V2 metadata, derived from its stored description (data width, kinds, sampler)."""
    dim, kinds, limits = loaded.dim, loaded.kinds, sampling(loaded.stored)
    inputs, outputs = [], []
    if kinds:
        inputs.append({"name": "x", "datatype": "FP32", "shape": [-1, dim]})
        outputs.append({"name": "scores", "datatype": "FP64", "shape": [-1]})
        if any(kind in LIKELIHOODS for kind in kinds):
            outputs.append({"name": "bits_per_dim", "datatype": "FP64", "shape": [-1]})
        if "importance_weighted" in limits["estimates"]:  # elbo beside the importance-weighted bound
            outputs.append({"name": "elbo", "datatype": "FP64", "shape": [-1]})
    sampler = loaded.stored.graph("sampler")
    parameters: dict[str, Any] = {"family": loaded.stored.family, "kinds": ",".join(kinds)}
    if sampler is not None:
        outputs.append({"name": "samples", "datatype": "FP32", "shape": [-1, dim]})
        parameters["operations"] = "score: input x; sample: no inputs" if kinds else "sample: no inputs"
        if sampler.loop is not None:
            parameters["steps"] = limits["steps"]
            if limits["max_steps"] is not None:
                parameters["max_steps"] = limits["max_steps"]
    else:
        parameters["operations"] = "score: input x"
    width = latent.latent_dim(loaded.stored)
    if width is not None:
        if not kinds:
            inputs.append({"name": "x", "datatype": "FP32", "shape": [-1, dim]})
        inputs.append({"name": "z", "datatype": "FP32", "shape": [-1, width]})
        outputs.append({"name": "z", "datatype": "FP32", "shape": [-1, width]})
        encoder = latent.encoder(loaded.stored)
        if encoder.kind == "gaussian":
            outputs += [{"name": n, "datatype": "FP32", "shape": [-1, width]} for n in ("mean", "log_var")]
        elif any(p.name == "dequantized" for p in encoder.parts):
            outputs.append({"name": "dequantized", "datatype": "FP32", "shape": [-1, dim]})
        outputs.append({"name": "x", "datatype": "FP32", "shape": [-1, dim]})
        parameters["operations"] += "; encode: input x, parameter operation=encode; decode: input z"
        parameters["latent_dim"] = width
    if "bound" in kinds:
        parameters["estimates"] = ",".join(limits["estimates"])
    cond = conditioning(loaded.stored)
    if cond["classes"]:
        inputs.append({"name": "y", "datatype": "INT64", "shape": [-1]})
        if "classify" in kinds:
            outputs.append({"name": "labels", "datatype": "INT64", "shape": [-1]})
            outputs.append({"name": "probabilities", "datatype": "FP64", "shape": [-1, cond["classes"]]})
        parameters["classes"] = cond["classes"]
        parameters["class_names"] = ",".join(cond["class_names"] or [])
        parameters["operations"] += "; labels: input y (INT64, one per row or sample)"
        if cond["guidance"]:
            parameters["guidance"] = "true"
    shape = image_shape(loaded.stored.data.get("image_shape"))
    if shape is not None:  # rows are images: height, width, channels (channels last)
        parameters["image_shape"] = ",".join(map(str, shape))
    return {
        "name": loaded.stored.name,
        "versions": versions,
        "platform": PLATFORM,
        "inputs": inputs,
        "outputs": outputs,
        "parameters": parameters,
    }


async def _infer(service: V2Api, loaded: LoadedModel, headers: dict[bytes, bytes], body: bytes) -> Response:
    length = headers.get(HEADER.encode())
    try:
        head, binary = split_body(body, None if length is None else length.decode("latin-1"))
    except TensorError as exc:
        raise ApiError(400, exc.field, exc.message, "invalid_binary") from None
    parsed = json_object(head)
    if parsed is None:
        raise ApiError(400, "body", "body: the inference request must be a JSON object", "invalid_json")
    bools = may_hold_bools(head)
    req = validate(V2InferRequest, parsed, bools)
    params = dict(req.parameters or {})
    binary_default = params.pop("binary_data_output", False)
    if not isinstance(binary_default, bool):
        raise ApiError(
            400, "parameters", "parameters.binary_data_output: must be a boolean", "invalid_parameters"
        )
    try:
        tensors = decode_inputs(req.inputs, binary, may_hold_bools=bools)
    except TensorError as exc:
        raise ApiError(400, exc.field, exc.message, "invalid_tensor") from None
    if "z" in tensors or params.get("operation") == "encode":
        outputs, out_params = await _latent(service, loaded, tensors, params, bools)
    elif set(tensors) - {"y"}:
        outputs, out_params = await _score(service, loaded, tensors, params, bools)
    else:
        outputs, out_params = await _sample(service, loaded, tensors, params, bools)
    produced = {out.name: out for out in outputs}
    binary_names = {out.name for out in outputs} if binary_default else set()
    if req.outputs:
        chosen = []
        for asked in req.outputs:
            if asked.name not in produced:
                raise ApiError(
                    400,
                    "outputs",
                    f"outputs: {asked.name[:100]!r} is not an output of this request; it gives "
                    f"{', '.join(produced)}",
                    "invalid_outputs",
                )
            chosen.append(produced[asked.name])
            wants = asked.parameters.binary_data if asked.parameters else None
            if wants is not None:
                (binary_names.add if wants else binary_names.discard)(asked.name)
        outputs = chosen
    head_out: dict[str, Any] = {"model_name": loaded.stored.name, "model_version": loaded.stored.version}
    if req.id is not None:
        head_out["id"] = req.id
    head_out["parameters"] = out_params
    content, header_length = encode_response(head_out, outputs, binary_names)
    if header_length is None:
        return Response(content, media_type="application/json")
    return Response(
        content,
        media_type="application/octet-stream",
        headers={"inference-header-content-length": str(header_length)},
    )


async def _score(
    service: V2Api, loaded: LoadedModel, tensors: dict[str, np.ndarray], params: dict[str, Any], bools: bool
) -> tuple[list[Output], dict[str, Any]]:
    _only(tensors, "x", "scoring takes the input 'x' (rows) and, for a conditional model, 'y' (labels)", "y")
    opts = validate(V2ScoreParameters, params, bools, prefix="parameters")
    x = _rows(tensors, "x")
    result = await service.score(
        loaded,
        x,
        opts.kind,
        k=opts.k,
        seed=opts.seed,
        estimate=opts.estimate,
        protocol=PROTOCOL,
        labels=_labels(tensors),
        labels_field="y",
    )
    outputs = [Output("scores", np.asarray(result.scores, dtype=np.float64))]
    if result.probabilities is not None and result.labels is not None:
        outputs.append(Output("labels", np.asarray(result.labels, dtype=np.int64)))
        outputs.append(Output("probabilities", np.asarray(result.probabilities, dtype=np.float64)))
    if result.bits_per_dim is not None:
        outputs.append(Output("bits_per_dim", np.asarray(result.bits_per_dim, dtype=np.float64)))
    if result.elbo is not None:
        outputs.append(Output("elbo", np.asarray(result.elbo, dtype=np.float64)))
    out_params: dict[str, Any] = {"kind": result.kind, "k": result.k}
    if result.estimate is not None:
        out_params["estimate"] = result.estimate
    for key in ("given", "source"):
        if getattr(result, key) is not None:
            out_params[key] = getattr(result, key)
    return outputs, out_params


def _labels(tensors: dict[str, np.ndarray]) -> np.ndarray | None:
    """Input ``y`` as a column of labels (shape [n] or [n, 1]); the operation's own path checks
    them against the model, naming y."""
    y = tensors.get("y")
    if y is not None and y.ndim == 2 and y.shape[1] == 1:
        return y[:, 0]
    return y


def _only(tensors: dict[str, np.ndarray], name: str | None, takes: str, *also: str) -> None:
    """400 naming inputs for any input but ``name`` and ``also`` (``takes`` says what the
    operation takes)."""
    unknown = sorted(set(tensors) - {name, *also})
    if unknown:
        raise ApiError(
            400, "inputs", f"inputs: unknown input {unknown[0][:100]!r}; {takes}", "invalid_inputs"
        )


def _rows(tensors: dict[str, np.ndarray], name: str) -> np.ndarray:
    """Input ``name``, within the row limit of /score, /encode and /decode (their request
    models'); the rows' values are checked by the operation's own path."""
    rows = tensors[name]
    if rows.ndim == 2 and not 1 <= rows.shape[0] <= MAX_ROWS:
        raise ApiError(
            400, name, f"{name}: must have 1 to {MAX_ROWS} rows, got {rows.shape[0]}", f"invalid_{name}"
        )
    return rows


async def _latent(
    service: V2Api, loaded: LoadedModel, tensors: dict[str, np.ndarray], params: dict[str, Any], bools: bool
) -> tuple[list[Output], dict[str, Any]]:
    """encode (input x, operation=encode) or decode (input z): /encode's and /decode's path."""
    operation = "decode" if "z" in tensors else "encode"
    name = "z" if operation == "decode" else "x"
    _only(tensors, name, f"{operation} takes one input, {name!r}")
    schema = V2DecodeParameters if operation == "decode" else V2EncodeParameters
    opts = validate(schema, params, bools, prefix="parameters")
    rows = _rows(tensors, name)
    out_params: dict[str, Any] = {"operation": operation}
    if operation == "decode":
        x = await service.decode(loaded, rows, seed=opts.seed, sample=opts.sample, protocol=PROTOCOL)
        return [Output("x", np.asarray(x, dtype=np.float32))], out_params
    encoded = await service.encode(loaded, rows, seed=opts.seed, sample=opts.sample, protocol=PROTOCOL)
    answer = encoded.as_dict()
    names = [n for n in ("z", "mean", "log_var", "dequantized") if n in answer]
    return [Output(n, np.asarray(answer[n], dtype=np.float32)) for n in names], out_params


async def _sample(
    service: V2Api, loaded: LoadedModel, tensors: dict[str, np.ndarray], params: dict[str, Any], bools: bool
) -> tuple[list[Output], dict[str, Any]]:
    if "y" in tensors and "n" not in params:
        params = {**params, "n": int(tensors["y"].shape[0]) if tensors["y"].ndim else 1}
    opts = validate(V2SampleParameters, params, bools, prefix="parameters")
    # The answer holds the steps run (the sampler's own count where none was asked for).
    samples, steps = await service.sample(
        loaded,
        opts.n,
        seed=opts.seed,
        temperature=opts.temperature,
        steps=opts.steps,
        protocol=PROTOCOL,
        then=lambda x, count: (x, count),
        label=opts.label,
        labels=_labels(tensors),
        guidance=opts.guidance,
        labels_field="y",
    )
    out_params: dict[str, Any] = {"n": opts.n}
    sampler = loaded.stored.graph("sampler")
    if sampler is not None and sampler.loop is not None:
        out_params["steps"] = steps
    return [Output("samples", np.asarray(samples, dtype=np.float32))], out_params
