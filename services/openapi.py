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
    MODEL_NAME,
    MODEL_REF,
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
    TwoSampleRequest,
    TwoSampleResponse,
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
    for action, summary in (
        ("load", "Serve the model's newest verified version (again)"),
        ("unload", "Stop serving the model until it is loaded again"),
    ):
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


def build(served: list[str], auth: bool) -> dict[str, Any]:
    """The document; ``served`` names the models this instance serves, ``auth`` adds 401s."""
    models = [SampleRequest, ScoreRequest, TwoSampleRequest, SampleResponse, ScoreResponse]
    models += [TwoSampleResponse, ModelsResponse, ErrorBody, RepositoryIndexRequest, RepositoryLoadRequest]
    models += [RepositoryEntry, RepositoryAnswer]
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
    paths.update(_repository(error, denied))
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
    if auth:
        doc["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        doc["security"] = [{"bearer": []}]
        for path in ("/livez", "/readyz", "/healthz", "/metrics"):
            paths[path]["get"]["security"] = []
    return doc
