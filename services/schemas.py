"""Pydantic request and response models of the HTTP API.

BentoML validates its own input models before our code runs and logs every failure as an
ERROR traceback, so the API accepts a permissive body (:class:`RawBody`) and validates it
here with these strict models; errors become 4xx answers that name the field.
"""

from __future__ import annotations

import os
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_N = int(os.environ.get("GENREG_MAX_N", "4096"))
MAX_ROWS = int(os.environ.get("GENREG_MAX_ROWS", "4096"))
MAX_TWO_SAMPLE = int(os.environ.get("GENREG_MAX_TWO_SAMPLE", "2000"))
MAX_DRAWS = int(os.environ.get("GENREG_MAX_DRAWS", "1000"))
MAX_DRAW_ROWS = int(os.environ.get("GENREG_MAX_DRAW_ROWS", "262144"))  # rows x k per request
MODEL_REF = r"^[a-z0-9][a-z0-9._-]*(:[a-z0-9]+)?$"


def rectangular(rows: list[list[float]]) -> list[list[float]]:
    """Refuse ragged rows, naming the first one whose length differs from row 0."""
    width = len(rows[0])
    for i, row in enumerate(rows):
        if len(row) != width:
            raise ValueError(f"row {i} has {len(row)} values, row 0 has {width}")
    return rows


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=False)


class SampleRequest(_Strict):
    model: str = Field(pattern=MODEL_REF, description="name (newest version) or name:version")
    n: int = Field(1, ge=1, le=MAX_N, description=f"number of samples, at most {MAX_N}")
    seed: int | None = Field(None, ge=0, lt=2**63, description="same seed, same samples")
    temperature: float = Field(1.0, ge=0.0, le=10.0, description="scales the normal noise")
    format: Literal["json", "png"] = Field("json", description="png: a base64 PNG grid (image data)")


class ScoreRequest(_Strict):
    model: str = Field(pattern=MODEL_REF)
    x: list[list[float]] = Field(min_length=1, max_length=MAX_ROWS, description=f"rows, at most {MAX_ROWS}")
    kind: Literal["log_prob", "bound", "discriminator"] | None = None
    seed: int | None = Field(0, ge=0, lt=2**63, description="seed of the scorer's noise")
    k: int = Field(1, ge=1, le=MAX_DRAWS, description="noise draws per row for kind=bound")

    @field_validator("x")
    @classmethod
    def _rectangular(cls, rows: list[list[float]]) -> list[list[float]]:
        return rectangular(rows)


class TwoSampleRequest(_Strict):
    model: str = Field(pattern=MODEL_REF)
    x: list[list[float]] = Field(min_length=10, max_length=MAX_TWO_SAMPLE, description="real rows")
    test: Literal["mmd", "c2st"] = "mmd"
    n_model: int | None = Field(None, ge=10, le=MAX_TWO_SAMPLE, description="model samples (default: len(x))")
    seed: int = Field(0, ge=0, lt=2**63)
    permutations: int = Field(200, ge=0, le=2000, description="MMD permutation null size")

    @field_validator("x")
    @classmethod
    def _rectangular(cls, rows: list[list[float]]) -> list[list[float]]:
        return rectangular(rows)


class SampleResponse(BaseModel):
    model: str
    samples: list[list[float]] | None = None
    png: str | None = None


class ScoreResponse(BaseModel):
    model: str
    kind: str
    scores: list[float]
    bits_per_dim: list[float] | None = None
    k: int | None = None
    elbo: list[float] | None = None  # with k > 1: the plain average over draws
    # Over the rows: mean score and its standard error (nats, and bits/dim for likelihoods).
    mean: float | None = None
    stderr: float | None = None
    mean_bits_per_dim: float | None = None
    stderr_bits_per_dim: float | None = None
    elbo_mean: float | None = None
    elbo_stderr: float | None = None
    elbo_mean_bits_per_dim: float | None = None
    elbo_stderr_bits_per_dim: float | None = None


class ModelInfo(BaseModel):
    name: str
    version: str
    tag: str
    family: str
    capabilities: list[str]
    kinds: list[str]
    data: dict[str, Any]
    metrics: dict[str, Any]
    created: str | None = None
    provider: str | None = None  # ONNX Runtime execution provider in use (session.get_providers())


class ErrorBody(BaseModel):
    error: str
    field: str | None = None
    detail: list[dict[str, Any]] | None = None
