"""The OpenAPI document the service publishes at /docs.json, built from services.schemas.

BentoML would describe our endpoints by their Python signature: one untyped root object,
because validation is ours (services.schemas). Publishing the pydantic models themselves
makes the document describe the bodies the service really accepts and answers, which is
what clients, Swagger UI and the schema-driven fuzzer (tests/test_fuzz.py) rely on.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from registry.runtime.models import MAX_GUIDANCE
from registry.runtime.scoring import draw_weight
from services.cache import MODEL_CONTROL
from services.schemas import (
    MAX_DRAW_ROWS,
    MAX_DRAWS,
    MAX_N,
    MAX_ROWS,
    MAX_STEPS,
    MODEL_NAME,
    MODEL_REF,
    V2_PROTOCOL_PARAMETERS,
    DecodeRequest,
    DecodeResponse,
    EncodeRequest,
    EncodeResponse,
    ErrorBody,
    ModelsResponse,
    RepositoryAnswer,
    RepositoryEntry,
    RepositoryIndexRequest,
    RepositoryLoadRequest,
    SampleRequest,
    SampleResponse,
    ScoreRequest,
    ScoreResponse,
    TaskStatus,
    TaskSubmitted,
    TwoSampleRequest,
    TwoSampleResponse,
    V2DecodeParameters,
    V2EncodeParameters,
    V2Error,
    V2InferRequest,
    V2InferResponse,
    V2Live,
    V2ModelMetadata,
    V2ModelReady,
    V2Ready,
    V2SampleParameters,
    V2ScoreParameters,
    V2ServerMetadata,
)
from services.tasks import APIS as TASK_APIS

REF = "#/components/schemas/{model}"
POSTS: dict[str, tuple[type[BaseModel], type[BaseModel], str]] = {
    "/sample": (SampleRequest, SampleResponse, "Draw n samples (seeded)"),
    "/score": (ScoreRequest, ScoreResponse, "Score rows: nats per row, bits/dim, or P(real)"),
    "/two_sample_test": (TwoSampleRequest, TwoSampleResponse, "MMD or C2ST of real rows against samples"),
    "/encode": (EncodeRequest, EncodeResponse, "Encode rows to latents z (a VAE: q(z|x); a flow: f(x))"),
    "/decode": (
        DecodeRequest,
        DecodeResponse,
        "Decode latents z to rows (a VAE: E[x|z] or a draw; a flow: f^-1)",
    ),
}
# The APIs whose work may also run as a task (services.tasks), with BentoML's task paths.
TASKED = {f"/{api}" for api in TASK_APIS}
# The request bodies that name a model: the served names are listed in each.
REQUESTS = (SampleRequest, ScoreRequest, TwoSampleRequest, EncodeRequest, DecodeRequest)
ERRORS = {
    "400": "invalid body: the field and the problem are named",
    "404": "unknown model",
    "409": "the model's stored files failed their checksum (named) and it is not served",
    "413": "body over the size limit",
    "422": "the model lacks the capability; the message lists what it has",
    "429": (
        "busy (Retry-After says when to retry): the worker's requests in flight are at their cap, the "
        "heavy-request slots are taken, or the work is planned past the deadline (submit it as a task)"
    ),
    "503": "the service is starting or stopping",
    "504": "the answer did not start before the deadline (the work is stopped)",
}
# What every route of genreg's may answer, whatever it is: the worker's cap on requests in flight.
BUSY = {"429": "busy: the worker's requests in flight are at their cap; Retry-After says when to retry"}
TASK_ERRORS = {
    "400": "no task_id",
    "409": "(get, retry) the task is not finished, or was canceled; (get) a finished task's own 409",
    "404": "no such task: unknown, expired, another API's, or submitted with another token",
}


def client_schema() -> dict[str, Any]:
    """The service as BentoML's own clients read it (GET /schema.json): each API's route, its
    input (the request model: its properties are the client method's keyword arguments) and
    whether it has task paths. genreg's routes are not BentoML API methods, so BentoML's
    generated description would list none (its client then has no methods at all). Outputs are
    described without their properties: BentoML's client keeps only the listed keys of an
    object, and an answer must reach it whole, as over HTTP."""
    routes = [
        {
            "name": path.strip("/"),
            "route": path,
            "description": summary,
            "input": request.model_json_schema(),
            "output": {"type": "object", "title": response.__name__},
            "is_task": path in TASKED,
        }
        for path, (request, response, summary) in POSTS.items()
    ]
    routes.append(
        {
            "name": "models",
            "route": "/models",
            "description": "The served models",
            "input": {"type": "object", "properties": {}},
            "output": {"type": "object", "title": ModelsResponse.__name__},
            "is_task": False,
        }
    )
    return {
        "name": "genreg",
        "type": "service",
        "routes": routes,
        "description": "Generative models served by ONNX Runtime",
    }


V2_MODELS = [
    V2InferRequest,
    V2ScoreParameters,
    V2SampleParameters,
    V2EncodeParameters,
    V2DecodeParameters,
    V2Error,
    V2ServerMetadata,
    V2Live,
    V2Ready,
    V2ModelReady,
    V2ModelMetadata,
    V2InferResponse,
]
V2_NAME = r"^[a-z0-9][a-z0-9._-]*$"
V2_VERSION = r"^[a-z0-9]+$"
V2_ERRORS = {
    "400": "invalid request: the field or tensor and the problem are named",
    "404": "unknown model or version",
    "409": ERRORS["409"],
    "413": ERRORS["413"],
    "422": ERRORS["422"],
    "503": ERRORS["503"],
}


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": REF.format(model=model.__name__)}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _text(media: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {media: {"schema": {"type": "string"}}}}


def _repository(error: dict[str, str], denied: dict[str, Any]) -> dict[str, Any]:
    """The model repository extension of the Open Inference Protocol (load, unload, index)."""

    def body(model: type[BaseModel]) -> dict[str, Any]:
        return {"required": False, "content": {"application/json": {"schema": _ref(model)}}}

    name = {
        "name": "name",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "pattern": MODEL_NAME},
    }
    paths: dict[str, Any] = {
        "/v2/repository/index": {
            "post": {
                "summary": "Every stored version and its state here (READY, UNAVAILABLE with the reason, UNLOADED)",
                "operationId": "repository_index",
                "requestBody": body(RepositoryIndexRequest),
                "responses": {"200": _json({"type": "array", "items": _ref(RepositoryEntry)}, "the index")}
                | {"400": _json(error, ERRORS["400"]), "413": _json(error, ERRORS["413"])}
                | denied,
            }
        }
    }
    # Load and unload exist only where the service was started with GENREG_MODEL_CONTROL=1.
    actions = (
        ("load", "Serve the model's newest verified version (again)"),
        ("unload", "Stop serving the model until it is loaded again"),
    )
    for action, summary in actions if MODEL_CONTROL else ():
        paths[f"/v2/repository/models/{{name}}/{action}"] = {
            "post": {
                "summary": summary,
                "operationId": f"repository_{action}",
                "parameters": [name],
                "requestBody": body(RepositoryLoadRequest),
                "responses": {"200": _json(_ref(RepositoryAnswer), "done")}
                | {code: _json(error, ERRORS[code]) for code in ("400", "404", "409", "413")}
                | denied,
            }
        }
    return paths


def build(served: list[str], auth: bool, described: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The document; ``served`` names the models this instance serves, ``auth`` adds 401s, and
    ``described`` (Genreg.described: each stored version's width, levels, kinds, sampler)
    makes the request schemas exact (:func:`_exact`)."""
    models = [*REQUESTS, SampleResponse, ScoreResponse, EncodeResponse, DecodeResponse]
    models += [TwoSampleResponse, ModelsResponse, ErrorBody, *V2_MODELS, RepositoryIndexRequest]
    models += [RepositoryLoadRequest, RepositoryEntry, RepositoryAnswer, TaskSubmitted, TaskStatus]
    _, top = models_json_schema([(m, "validation") for m in models], ref_template=REF)
    components = top["$defs"]
    if served:
        # Listing the served names (beside the general pattern, which older versions match)
        # tells clients, and the fuzzer, which references will answer.
        for req in REQUESTS:
            prop = components[req.__name__]["properties"]["model"]
            prop.pop("pattern", None)
            prop.pop("type", None)
            prop["anyOf"] = [{"type": "string", "enum": served}, {"type": "string", "pattern": MODEL_REF}]
            prop["description"] = "name (newest version) or name:version"
    # A task's body is the synchronous call's, with the limits of a task's time (services.tasks).
    for request in (SampleRequest, ScoreRequest, TwoSampleRequest):
        components[f"Task{request.__name__}"] = dict(components[request.__name__])
    if described:
        _exact(components, described)
        _exact(components, described, task=True)
    error = _ref(ErrorBody)
    denied = {"401": _json(error, "missing or wrong bearer token")} if auth else {}
    paths: dict[str, Any] = {}
    for path, (request, response, summary) in POSTS.items():
        refused = {code: _json(error, why) for code, why in ERRORS.items()}
        paths[path] = {
            "post": {
                "summary": summary,
                "operationId": path.strip("/"),
                "requestBody": {"required": True, "content": {"application/json": {"schema": _ref(request)}}},
                "responses": {"200": _json(_ref(response), "the result")} | refused | denied,
            }
        }
        if path in TASKED:
            paths.update(_task_paths(path, request, response, summary, refused, denied))
    busy = {code: _json(error, why) for code, why in BUSY.items()}
    listing = {"200": _json(_ref(ModelsResponse), "the served models")} | busy | denied
    paths["/models"] = {
        "get": {"summary": "The served models", "operationId": "models_get", "responses": listing},
        "post": {
            "summary": "The served models (for clients that only POST); the body is ignored",
            "operationId": "models_post",
            "requestBody": {
                "required": False,
                "content": {"application/json": {"schema": {"type": "object"}}},
            },
            "responses": listing
            | {"400": _json(error, "the body is not a JSON object"), "413": _json(error, ERRORS["413"])},
        },
    }
    paths.update(_repository(error, denied | busy))
    for path, summary in (("/livez", "alive"), ("/readyz", "models loaded"), ("/healthz", "alive")):
        paths[path] = {
            "get": {
                "summary": summary,
                "operationId": path.strip("/"),
                "responses": {"200": _text("text/plain", summary), "503": _text("text/plain", "not ready")},
            }
        }
    paths["/metrics"] = {
        "get": {
            "summary": "Prometheus metrics",
            "operationId": "metrics",
            "responses": {"200": _text("text/plain", "exposition format")},
        }
    }
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "genreg",
            "version": "1",
            "description": "Generative models served by ONNX Runtime",
        },
        "paths": paths,
        "components": {"schemas": components},
    }
    paths.update(_v2_paths(components, served, denied))
    for path, item in paths.items():
        # Every route of genreg's passes the worker's cap on requests in flight (services.traffic),
        # health probes excepted; BentoML's own routes (/livez, /readyz, /healthz, /metrics) too.
        for operation in item.values():
            if path not in (
                "/v2/health/live",
                "/v2/health/ready",
                "/livez",
                "/readyz",
                "/healthz",
                "/metrics",
            ):
                operation["responses"].setdefault("429", _json(error, BUSY["429"]))
    if auth:
        doc["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        doc["security"] = [{"bearer": []}]
        for path in ("/livez", "/readyz", "/healthz", "/metrics", "/v2/health/live", "/v2/health/ready"):
            paths[path]["get"]["security"] = []
    return doc


def _task_paths(
    path: str,
    request: type[BaseModel],
    response: type[BaseModel],
    summary: str,
    refused: dict[str, Any],
    denied: dict[str, Any],
) -> dict[str, Any]:
    """BentoML's task paths of an API (services.tasks): submit, status, get, cancel, retry."""
    error = _ref(ErrorBody)
    name = path.strip("/")
    task_id = {
        "name": "task_id",
        "in": "query",
        "required": True,
        "schema": {"type": "string", "minLength": 1},
        "description": "the id submit answered",
    }
    lookup = {code: _json(error, why) for code, why in TASK_ERRORS.items()} | denied
    submitted = {"200": _json(_ref(TaskSubmitted), "the new task")}
    # A finished task's answer is the synchronous call's, its error status codes included.
    failed = {code: refused[code] for code in ("409", "422", "429", "503", "504")}
    submit_refused = {code: body for code, body in refused.items() if code != "504"}
    return {
        f"{path}/submit": {
            "post": {
                "summary": f"{summary}, as a task: every check now, the work later",
                "operationId": f"{name}_submit",
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref_name(f"Task{request.__name__}")}},
                },
                "responses": submitted | submit_refused | denied,
            }
        },
        f"{path}/status": {
            "get": {
                "summary": "The task's state, progress and times",
                "operationId": f"{name}_status",
                "parameters": [task_id],
                "responses": {"200": _json(_ref(TaskStatus), "the task")} | lookup,
            }
        },
        f"{path}/get": {
            "get": {
                "summary": f"The finished task's answer: the synchronous {path}'s, byte for byte",
                "operationId": f"{name}_get",
                "parameters": [task_id],
                "responses": {"200": _json(_ref(response), "the result")} | failed | lookup,
            }
        },
        f"{path}/cancel": {
            "put": {
                "summary": "Cancel the task: its worker stops at the next step",
                "operationId": f"{name}_cancel",
                "parameters": [task_id],
                "responses": {"200": _json(_ref(TaskStatus), "the task, as it is now")} | lookup,
            }
        },
        f"{path}/retry": {
            "post": {
                "summary": "Submit a finished task's body again, as a new task",
                "operationId": f"{name}_retry",
                "parameters": [task_id],
                "responses": submitted | submit_refused | lookup,
            }
        },
    }


def _ref_name(name: str) -> dict[str, str]:
    return {"$ref": REF.format(model=name)}


def _not_null(prop: dict[str, Any]) -> dict[str, Any]:
    options = [o for o in prop.get("anyOf", []) if o != {"type": "null"}]
    if len(options) != 1:
        return prop
    return {**{k: v for k, v in prop.items() if k not in ("anyOf", "default")}, **options[0]}


def _v2_infer_body(components: dict[str, Any]) -> dict[str, Any]:
    """The infer request as genreg maps it: score (one input, x), sample (no inputs), encode
    (x, with parameters.operation encode) or decode (one input, z).

    Built from V2InferRequest with the operation's parameters (the fields of /score and /sample);
    what it cannot say (the data agreeing with the shape, rows as wide as the model) the server
    answers with a 400 naming the tensor.
    """
    base = components["V2InferRequest"]
    tensor = components["V2InputTensor"]
    tensor["properties"]["name"] = {"type": "string", "enum": ["x", "y", "z"]}
    # Each operation's inputs, by name: x (score, encode), z (decode), and a conditional model's
    # labels y (score, sample).
    for name in ("x", "y", "z"):
        named = {**tensor, "properties": {**tensor["properties"], "name": {"const": name}}}
        components[f"V2InputTensor.{name}"] = named
    protocol = {name: {"type": "boolean"} for name in V2_PROTOCOL_PARAMETERS}

    def operation(title: str, params: str, input_name: str | None, labelled: bool = False) -> dict[str, Any]:
        schema = {**base, "title": title, "properties": dict(base["properties"])}
        # The protocol's parameters take no null: an optional one is left out instead.
        own = {key: _not_null(prop) for key, prop in components[params]["properties"].items()}
        schema["properties"]["parameters"] = {
            "type": "object",
            "properties": {**own, **protocol},
            "additionalProperties": False,
        }
        required = components[params].get("required", [])
        if required:  # encode's operation parameter: the request names it
            schema["required"] = sorted({*base.get("required", []), "parameters"})
            schema["properties"]["parameters"]["required"] = required
        y = {"$ref": REF.format(model="V2InputTensor.y")}
        inputs: dict[str, Any] = {"maxItems": 1, "items": y} if labelled else {"maxItems": 0}
        if input_name is not None:
            item: dict[str, Any] = {"$ref": REF.format(model=f"V2InputTensor.{input_name}")}
            inputs = {"minItems": 1, "maxItems": 1, "items": item}
            if labelled:
                inputs = {"minItems": 1, "maxItems": 2, "items": {"anyOf": [item, y]}}
        schema["properties"]["inputs"] = {**base["properties"]["inputs"], **inputs}
        return schema

    return {
        "anyOf": [
            operation("sample", "V2SampleParameters", None, labelled=True),
            operation("score", "V2ScoreParameters", "x", labelled=True),
            operation("encode", "V2EncodeParameters", "x"),
            operation("decode", "V2DecodeParameters", "z"),
        ]
    }


def _v2_paths(components: dict[str, Any], served: list[str], denied: dict[str, Any]) -> dict[str, Any]:
    """The Open Inference Protocol's REST routes (services.v2)."""
    error = _ref(V2Error)
    name_schema: dict[str, Any] = {"type": "string", "pattern": V2_NAME}
    if served:
        name_schema = {"anyOf": [{"type": "string", "enum": served}, name_schema]}
    name = {"name": "name", "in": "path", "required": True, "schema": name_schema}
    version = {
        "name": "version",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "pattern": V2_VERSION},
    }
    refused = {code: _json(error, why) for code, why in V2_ERRORS.items()}
    paths: dict[str, Any] = {
        "/v2": {
            "get": {
                "summary": "V2 server metadata",
                "operationId": "v2_server_metadata",
                "responses": {"200": _json(_ref(V2ServerMetadata), "name, version, extensions")} | denied,
            }
        },
        "/v2/health/live": {
            "get": {
                "summary": "V2 server live",
                "operationId": "v2_server_live",
                "responses": {"200": _json(_ref(V2Live), "alive")},
            }
        },
        "/v2/health/ready": {
            "get": {
                "summary": "V2 server ready",
                "operationId": "v2_server_ready",
                "responses": {
                    "200": _json(_ref(V2Ready), "models loaded"),
                    "503": _json(error, "starting or stopping"),
                },
            }
        },
    }
    infer_body = _v2_infer_body(components)
    for suffix, params in (("", [name]), ("/versions/{version}", [name, version])):
        base = "/v2/models/{name}" + suffix
        tag = "_version" if suffix else ""
        lookup = {code: refused[code] for code in ("404", "409", "503")} | denied
        paths[base] = {
            "get": {
                "summary": "V2 model metadata: inputs and outputs from the stored description",
                "operationId": f"v2_model_metadata{tag}",
                "parameters": params,
                "responses": {"200": _json(_ref(V2ModelMetadata), "the model's metadata")} | lookup,
            }
        }
        paths[base + "/ready"] = {
            "get": {
                "summary": "V2 model ready",
                "operationId": f"v2_model_ready{tag}",
                "parameters": params,
                "responses": {"200": _json(_ref(V2ModelReady), "ready")} | lookup,
            }
        }
        header = {
            "name": "Inference-Header-Content-Length",
            "in": "header",
            "required": False,
            "schema": {"type": "integer", "minimum": 1},
            "description": "binary extension: the JSON header's length; binary tensors follow it",
        }
        binary = {
            "type": "string",
            "format": "binary",
            "description": "the JSON request, then each binary input's bytes in order",
        }
        ok = {
            "description": "the outputs",
            "content": {
                "application/json": {"schema": _ref(V2InferResponse)},
                "application/octet-stream": {
                    "schema": {
                        "type": "string",
                        "format": "binary",
                        "description": "JSON header, then binary outputs",
                    }
                },
            },
        }
        paths[base + "/infer"] = {
            "post": {
                "summary": "V2 infer: score (input x) or sample (no inputs), JSON or binary tensors",
                "operationId": f"v2_infer{tag}",
                "parameters": [*params, header],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": infer_body},
                        "application/octet-stream": {"schema": binary},
                    },
                },
                "responses": {"200": ok} | refused | denied,
            }
        }
    return paths


# --- exact request schemas ---------------------------------------------------------------------
# A schema-valid request must be answered (2xx, or 404/409 for a model not served or broken),
# and any other refused with 4xx: the fuzzer checks both ways (positive_data_acceptance,
# negative_data_rejection). The pydantic models cannot know a model's width, levels or kinds,
# so with the store known each body becomes "one of": a branch per stored version with its own
# limits, and one for names that are not served (always 404).
F32_MAX = 3.4028234663852886e38  # np.finfo(np.float32).max: the row check's bound


def _refs(d: dict[str, Any]) -> list[str]:
    return [d["name"], f"{d['name']}:latest", d["tag"]] if d["newest"] else [d["tag"]]


def _rows(d: dict[str, Any], low: int, high: int) -> dict[str, Any]:
    """Rows as registry.runtime.rows.check_rows takes them for this model's data."""
    if d["levels"]:
        value: dict[str, Any] = {"type": "integer", "minimum": 0, "maximum": d["levels"] - 1}
    else:
        value = {"type": "number", "minimum": -F32_MAX, "maximum": F32_MAX}
    row = {"type": "array", "items": value, "minItems": d["dim"], "maxItems": d["dim"]}
    return {"type": "array", "items": row, "minItems": low, "maxItems": high}


def _label(d: dict[str, Any]) -> dict[str, Any]:
    return {"type": "integer", "minimum": 0, "maximum": d["classes"] - 1}


def _labels(d: dict[str, Any], kind: str, most: int, required: bool) -> dict[str, Any]:
    """/score's labels for this model and kind: a conditional model's log_prob or bound takes
    one per row (or none: the marginal), its discriminator needs them, a classification and an
    unconditional model take none. One per row is the rule JSON Schema cannot state (x's count):
    a different count is a 400 naming labels."""
    if not d.get("classes") or kind == "classify" or (kind == "discriminator" and not required):
        return {"type": "null"}
    given = {"type": "array", "items": _label(d), "minItems": 1, "maxItems": min(most, MAX_ROWS)}
    return given if required else {"anyOf": [given, {"type": "null"}]}


def _sample_conditions(d: dict[str, Any], most_n: int) -> list[tuple[str, dict[str, Any], list[str]]]:
    """/sample's label, labels and guidance for this model, as (branch suffix, properties,
    required): null for an unconditional model; for a conditional one, either ``label`` (or
    neither: classes drawn from p(y)) or ``labels``, never both (a 400 naming labels)."""
    null = {"type": "null"}
    if not d.get("classes"):
        return [("", {"label": null, "labels": null, "guidance": null}, [])]
    labels = {"type": "array", "items": _label(d), "minItems": 1, "maxItems": most_n}
    guidance = (
        {"type": ["number", "null"], "minimum": 0.0, "maximum": MAX_GUIDANCE} if d.get("guidance") else null
    )
    return [
        ("", {"label": {"anyOf": [_label(d), null]}, "labels": null, "guidance": guidance}, []),
        (".labels", {"label": null, "labels": labels, "guidance": guidance}, ["labels"]),
    ]


def _object(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": required, "additionalProperties": False}


def draw_tiers(
    max_rows: int = MAX_ROWS, max_draws: int = MAX_DRAWS, budget: int = MAX_DRAW_ROWS
) -> list[tuple[int, int]]:
    """(most k, most rows) rectangles whose union is what /score takes: rows <= max_rows,
    k <= max_draws and rows x draw_weight(k) <= budget (registry.runtime.scoring)."""
    tiers: list[tuple[int, int]] = []
    weight = 1
    while True:
        top = min(max_draws, weight)  # the largest k that weighs this much: k in (weight / 2, weight]
        rows = min(max_rows, budget // draw_weight(top))
        if rows < 1:
            break
        if tiers and tiers[-1][1] == rows:
            tiers[-1] = (top, rows)
        else:
            tiers.append((top, rows))
        if top == max_draws:
            break
        weight *= 2
    return tiers


def step_tiers(
    most_steps: int, max_n: int = MAX_N, budget: int = MAX_DRAW_ROWS
) -> list[tuple[int, int, int]]:
    """(fewest steps, most steps, most n) rectangles for a sampler whose count may be chosen,
    1..most_steps: /sample takes n <= max_n with n x draw_weight(steps) <= budget
    (services.service), so the counts fall in groups 1, 2, 3-4, 5-8, ... that share a bound on
    n, and the rectangles state the rule exactly (neighbours with one bound are merged)."""
    groups = [(1, 1)]
    top = 2
    while top // 2 < most_steps:
        groups.append((top // 2 + 1, min(top, most_steps)))
        top *= 2
    tiers: list[tuple[int, int, int]] = []
    for low, high in groups:
        bound = min(max_n, budget // draw_weight(high))
        if bound < 1:
            break
        if tiers and tiers[-1][2] == bound:
            tiers[-1] = (tiers[-1][0], high, bound)
        else:
            tiers.append((low, high, bound))
    return tiers


def _exact(components: dict[str, Any], described: list[dict[str, Any]], task: bool = False) -> None:
    """Each request schema as a union of exact branches (``task``: a task's, TaskSampleRequest and
    so on, by the limits of a task's time)."""
    prefix, limits = ("Task", "task_") if task else ("", "")
    seed = components[f"{prefix}ScoreRequest"]["properties"]["seed"]
    sample_props = components[f"{prefix}SampleRequest"]["properties"]
    two = components[f"{prefix}TwoSampleRequest"]["properties"]
    score: list[tuple[str, dict[str, Any]]] = []
    sample: list[tuple[str, dict[str, Any]]] = []
    two_sample: list[tuple[str, dict[str, Any]]] = []
    encode: list[tuple[str, dict[str, Any]]] = []
    decode: list[tuple[str, dict[str, Any]]] = []
    for d in described:
        model = {"type": "string", "enum": _refs(d)}
        key = d["name"] if d["newest"] else d["tag"].replace(":", ".")
        if not task and d["latent_dim"] is not None:
            # A gaussian encoder may draw z; an exact one, and a decoder without a draw, may not.
            draws = {"type": ["boolean", "null"]} if d["latent"] == "gaussian" else {"enum": [False, None]}
            decode_draws = {"type": ["boolean", "null"]} if d["decode_sample"] else {"enum": [False, None]}
            most = d["latent_rows"]  # each operation's measured-rate limit
            x = _rows(d, 1, min(MAX_ROWS, d["body_rows"], most["encode"]))
            props = {"model": model, "x": x, "seed": seed, "sample": draws}
            encode.append((key, _object(props, ["model", "x"])))
            latents = _rows({"levels": None, "dim": d["latent_dim"]}, 1, min(MAX_ROWS, most["decode"]))
            props = {"model": model, "z": latents, "seed": seed, "sample": decode_draws}
            decode.append((key, _object(props, ["model", "z"])))
        for kind in d["kinds"]:
            default = kind == d["kinds"][0]
            kind_schema = {"enum": [kind, None]} if default else {"const": kind}
            required = ["model", "x"] if default else ["model", "x", "kind"]
            labelled = kind == "discriminator" and d.get("conditional_discriminator")
            if labelled:
                required = [*required, "labels"]
            # rows x k within the draw budget for every kind (k = 1 but for a bound, and for a
            # classification computed from one)
            drawn = kind == "bound" or (kind == "classify" and "log_prob" not in d["kinds"])
            limit = d.get(f"{limits}score_rows", {}).get(kind, MAX_DRAW_ROWS)  # this model's (measured) limit
            tiers = draw_tiers(budget=limit) if drawn else [(1, min(MAX_ROWS, limit))]
            for most_k, most_rows in tiers:
                props = {
                    "model": model,
                    "x": _rows(d, 1, min(most_rows, d["body_rows"])),
                    "kind": kind_schema,
                    "seed": seed,
                    "k": {"type": "integer", "minimum": 1, "maximum": most_k},
                    # a bound's estimates; none for another kind (400 naming estimate)
                    "estimate": {"enum": [*d["estimates"], None]} if drawn else {"type": "null"},
                    "labels": _labels(d, kind, most_rows, labelled),
                }
                tier = f".k{most_k}" if len(tiers) > 1 else ""
                score.append((f"{key}.{kind}{tier}", _object(props, required)))
        if not d["sampler"]:
            continue  # 422 for every request: no branch
        # The sampler's own count (steps left out, or that count): n x its steps within the
        # draw-row limit. A count it cannot run is refused (400 naming steps).
        sample_rows = d.get(f"{limits}sample_rows", MAX_DRAW_ROWS)
        max_n = d["sample_n"]  # the samples one request may hold (at most GENREG_MAX_N)
        most_n = min(max_n, sample_rows // draw_weight(d["steps"]))
        props = dict(sample_props)
        props.update(
            model=model,
            n={**sample_props["n"], "maximum": most_n},
            format={**sample_props["format"], "enum": ["json", "png"] if d["image"] else ["json"]},
            steps={"enum": [*([d["steps"]] if d["steps"] <= MAX_STEPS else []), None]},
        )
        for suffix, given, need in _sample_conditions(d, most_n):
            sample.append((key + suffix, _object({**props, **given}, ["model", *need])))
        if d["max_steps"] is not None:
            # A count that may be chosen: n x steps within the limit, as rectangles.
            for low, high, most in step_tiers(d["max_steps"], max_n, sample_rows):  # capped at MAX_STEPS
                chosen = {"type": "integer", "minimum": low, "maximum": high}
                tier = dict(props, n={**sample_props["n"], "maximum": most}, steps=chosen)
                for suffix, given, need in _sample_conditions(d, most):
                    branch = _object({**tier, **given}, ["model", "steps", *need])
                    sample.append((f"{key}.steps{low}-{high}{suffix}", branch))
        # Without n_model, the real rows set how many samples are drawn (x steps).
        # x and n_model each within two_sample_rows: the test's memory at its largest.
        most_two = d["two_sample_rows"]  # at most GENREG_MAX_TWO_SAMPLE
        most_x = min(most_two, max_n, sample_rows // draw_weight(d["steps"]))
        n_model = {"type": "integer", "minimum": 10, "maximum": most_x}
        props = dict(two)
        props.update(model=model, x=_rows(d, 10, min(most_two, d["body_rows"])), n_model=n_model)
        # A branch whose limit is under a test's 10 rows is left out: no such request is taken.
        if min(most_x, most_two, d["body_rows"]) >= 10:
            two_sample.append((f"{key}.n_model", _object(props, ["model", "x", "n_model"])))
        props = dict(props, x=_rows(d, 10, min(most_x, d["body_rows"])), n_model={"type": "null"})
        if min(most_x, d["body_rows"]) >= 10:
            two_sample.append((f"{key}.rows", _object(props, ["model", "x"])))
    # Names served here, with any version: not the fallback's (their versions have branches).
    names = sorted({d["name"] for d in described})
    served = {"pattern": "^(" + "|".join(re.escape(n) for n in names) + ")(:.*)?$"}
    unions = [
        (f"{prefix}ScoreRequest", score),
        (f"{prefix}SampleRequest", sample),
        (f"{prefix}TwoSampleRequest", two_sample),
    ]
    if not task:  # encode and decode are never tasks
        unions += [("EncodeRequest", encode), ("DecodeRequest", decode)]
    for name, branches in unions:
        fallback = dict(components[name])
        fallback["properties"] = dict(fallback["properties"])
        fallback["properties"]["model"] = {
            "type": "string",
            "pattern": MODEL_REF,
            "not": served,
            "description": "a name not served here: 404",
        }
        # Each branch is a component of its own, referenced from the union: generators expand
        # references lazily, where the same union written inline is intersected branch by
        # branch (schemathesis gave up on /score at about 80 inline branches, a store of ~35
        # models, "does not support this part of it"). Names say model, kind and tier.
        refs = []
        for suffix, branch in [*branches, ("unserved", fallback)]:
            # A name with dots may spell another model's name.version: numbered apart then.
            ref, again = f"{name}.{suffix}", 1
            while ref in components:
                ref, again = f"{name}.{suffix}.{again}", again + 1
            components[ref] = branch
            refs.append({"$ref": REF.format(model=ref)})
        components[name] = {
            "anyOf": refs,
            "description": components[name].get("description", ""),
        }
