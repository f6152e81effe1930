"""The OpenAPI document the service publishes at /docs.json, built from services.schemas.

BentoML would describe our endpoints by their Python signature: one untyped root object,
because validation is ours (services.schemas). Publishing the pydantic models themselves
makes the document describe the bodies the service really accepts and answers, which is
what clients, Swagger UI and the schema-driven fuzzer (tests/test_fuzz.py) rely on.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from services.schemas import (
    MODEL_REF,
    V2_PROTOCOL_PARAMETERS,
    ErrorBody,
    ModelsResponse,
    SampleRequest,
    SampleResponse,
    ScoreRequest,
    ScoreResponse,
    TwoSampleRequest,
    TwoSampleResponse,
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

REF = "#/components/schemas/{model}"
POSTS: dict[str, tuple[type[BaseModel], type[BaseModel], str]] = {
    "/sample": (SampleRequest, SampleResponse, "Draw n samples (seeded)"),
    "/score": (ScoreRequest, ScoreResponse, "Score rows: nats per row, bits/dim, or P(real)"),
    "/two_sample_test": (TwoSampleRequest, TwoSampleResponse, "MMD or C2ST of real rows against samples"),
}
ERRORS = {
    "400": "invalid body: the field and the problem are named",
    "404": "unknown model",
    "409": "the model's stored files failed their checksum (named) and it is not served",
    "413": "body over the size limit",
    "422": "the model lacks the capability; the message lists what it has",
    "503": "the service is starting or stopping",
}


V2_MODELS = [
    V2InferRequest,
    V2ScoreParameters,
    V2SampleParameters,
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


def build(served: list[str], auth: bool) -> dict[str, Any]:
    """The document; ``served`` names the models this instance serves, ``auth`` adds 401s."""
    models = [SampleRequest, ScoreRequest, TwoSampleRequest, SampleResponse, ScoreResponse]
    models += [TwoSampleResponse, ModelsResponse, ErrorBody, *V2_MODELS]
    _, top = models_json_schema([(m, "validation") for m in models], ref_template=REF)
    components = top["$defs"]
    if served:
        # Listing the served names (beside the general pattern, which older versions match)
        # tells clients, and the fuzzer, which references will answer.
        for req in (SampleRequest, ScoreRequest, TwoSampleRequest):
            prop = components[req.__name__]["properties"]["model"]
            prop.pop("pattern", None)
            prop.pop("type", None)
            prop["anyOf"] = [{"type": "string", "enum": served}, {"type": "string", "pattern": MODEL_REF}]
            prop["description"] = "name (newest version) or name:version"
    error = _ref(ErrorBody)
    denied = {"401": _json(error, "missing or wrong bearer token")} if auth else {}
    paths: dict[str, Any] = {}
    for path, (request, response, summary) in POSTS.items():
        paths[path] = {
            "post": {
                "summary": summary,
                "operationId": path.strip("/"),
                "requestBody": {"required": True, "content": {"application/json": {"schema": _ref(request)}}},
                "responses": {"200": _json(_ref(response), "the result")}
                | {code: _json(error, why) for code, why in ERRORS.items()}
                | denied,
            }
        }
    listing = {"200": _json(_ref(ModelsResponse), "the served models")} | denied
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
    if auth:
        doc["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        doc["security"] = [{"bearer": []}]
        for path in ("/livez", "/readyz", "/healthz", "/metrics", "/v2/health/live", "/v2/health/ready"):
            paths[path]["get"]["security"] = []
    return doc


def _not_null(prop: dict[str, Any]) -> dict[str, Any]:
    options = [o for o in prop.get("anyOf", []) if o != {"type": "null"}]
    if len(options) != 1:
        return prop
    return {**{k: v for k, v in prop.items() if k not in ("anyOf", "default")}, **options[0]}


def _v2_infer_body(components: dict[str, Any]) -> dict[str, Any]:
    """The infer request as genreg maps it: score (one input, x) or sample (no inputs).

    Built from V2InferRequest with the operation's parameters (the fields of /score and /sample);
    what it cannot say (the data agreeing with the shape, rows as wide as the model) the server
    answers with a 400 naming the tensor.
    """
    base = components["V2InferRequest"]
    components["V2InputTensor"]["properties"]["name"] = {"type": "string", "enum": ["x"]}
    protocol = {name: {"type": "boolean"} for name in V2_PROTOCOL_PARAMETERS}

    def operation(title: str, params: str, inputs: dict[str, Any]) -> dict[str, Any]:
        schema = {**base, "title": title, "properties": dict(base["properties"])}
        # The protocol's parameters take no null: an optional one is left out instead.
        own = {key: _not_null(prop) for key, prop in components[params]["properties"].items()}
        schema["properties"]["parameters"] = {
            "type": "object",
            "properties": {**own, **protocol},
            "additionalProperties": False,
        }
        schema["properties"]["inputs"] = {**base["properties"]["inputs"], **inputs}
        return schema

    return {
        "anyOf": [
            operation("score", "V2ScoreParameters", {"minItems": 1, "maxItems": 1}),
            operation("sample", "V2SampleParameters", {"maxItems": 0}),
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
