"""Pydantic request and response models of the HTTP API.

BentoML validates its own input models before our code runs and logs every failure as an
ERROR traceback, so the API accepts a permissive body and validates it here with these
strict models; errors become 4xx answers that name the field. The same models are published
as the service's OpenAPI document (services.openapi), so what is documented is what is checked.
"""

from __future__ import annotations

import os
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    create_model,
    model_validator,
)

from registry.runtime.budget import REQUEST_MEMORY, RESERVE
from registry.runtime.graphs import Estimate
from registry.runtime.models import MAX_GUIDANCE
from registry.runtime.rows import parse_rows
from registry.runtime.store import StoredModel
from services.errors import ApiError

MAX_N = int(os.environ.get("GENREG_MAX_N", "4096"))
MAX_ROWS = int(os.environ.get("GENREG_MAX_ROWS", "4096"))
MAX_TWO_SAMPLE = int(os.environ.get("GENREG_MAX_TWO_SAMPLE", "2000"))
MAX_DRAWS = int(os.environ.get("GENREG_MAX_DRAWS", "1000"))
# The most permutations of an MMD null (its memory is bounded however many: they run in chunks).
MAX_PERMUTATIONS = 2000
MAX_DRAW_ROWS = int(os.environ.get("GENREG_MAX_DRAW_ROWS", "262144"))  # rows x k, n x steps per request
# The most sampling steps a request may ask of a sampler whose count may be chosen.
MAX_STEPS = int(os.environ.get("GENREG_MAX_STEPS", "1000"))
MODEL_REF = r"^[a-z0-9][a-z0-9._-]*(:[a-z0-9]+)?$"
MAX_BODY_BYTES = int(os.environ.get("GENREG_MAX_BODY_BYTES", str(64 * 1024 * 1024)))
# Parsing a JSON body into Python lists, then arrays, takes up to 14 bytes a body byte (measured:
# rows of "0.0", a float object and a list slot for 4 bytes of text; benchmarks/RESULTS.md), 16
# with the body itself: a JSON body may be as large as lets its parse fit one request's memory
# budget (30 MiB at the default 512 MiB). Binary tensors (V2) are read in place, up to
# GENREG_MAX_BODY_BYTES.
JSON_PARSE_FACTOR = 16
MAX_JSON_BYTES = min(MAX_BODY_BYTES, max(1 << 20, (REQUEST_MEMORY - RESERVE) // JSON_PARSE_FACTOR))
# A body's bytes besides its rows (the model, the other fields), counted generously.
BODY_OVERHEAD = 4096


def row_json_bytes(dim: int, levels: int | None) -> int:
    """One row's JSON bytes as json.dumps writes it at the data's widest values: a level as a
    float ("255.0, ": samples come back as floats), any other value as a float32's longest
    repr ("-1.1754943508222875e-38, "), and the row's brackets and separator."""
    per = len(str(levels - 1)) + 4 if levels else 26
    return dim * per + 4


def body_rows(dim: int, levels: int | None) -> int:
    """The most rows of this width a JSON body carries within MAX_JSON_BYTES, however wide its
    values: what the document publishes and the routes take, so that no published body is
    refused for its size (a 3,072-value row of levels takes up to 21.5 KB: 1,462 fit in
    30 MiB, where GENREG_MAX_ROWS is 4,096)."""
    return max(1, (MAX_JSON_BYTES - BODY_OVERHEAD) // row_json_bytes(dim, levels))


def Rows(min_rows: int, max_rows: int, description: str) -> Any:
    """``x`` fields: parsed by :func:`registry.runtime.rows.parse_rows`, documented as a JSON array
    of number rows. The validation context's ``may_hold_bools`` (from the raw body) lets the
    parser skip its walk for JSON booleans when the body holds none."""
    schema = {
        "type": "array",
        "items": {"type": "array", "items": {"type": "number"}, "minItems": 1},
        "minItems": min_rows,
        "maxItems": max_rows,
        "description": description,
    }

    def parse(value: Any, info: ValidationInfo) -> np.ndarray:
        bools = (info.context or {}).get("may_hold_bools", True)
        return parse_rows(value, min_rows, max_rows, may_hold_bools=bools)

    return Annotated[np.ndarray, PlainValidator(parse), WithJsonSchema(schema)]


def _integral(value: Any) -> Any:
    # JSON Schema's "integer" is any number with no fraction, 2.0 included; strict pydantic
    # would refuse it. Strings and booleans still are refused.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


Int = Annotated[int, BeforeValidator(_integral)]


def sampling(stored: StoredModel) -> dict[str, Any]:
    """What /sample's ``steps`` and /score's ``estimate`` may be for a stored model, from its
    graph descriptions: the sampler's own count (1: one graph call; None: no sampler), the most
    steps where the count may be chosen (the loop's, capped at this service's GENREG_MAX_STEPS,
    which /sample checks first), and the bound scorer's estimates. /models, the OpenAPI
    document and the V2 metadata all state these."""
    sampler, bound = stored.graph("sampler"), stored.graph("scorer", "bound")
    loop = sampler.loop if sampler is not None else None
    most = min(loop.max_steps, MAX_STEPS) if loop is not None and loop.max_steps is not None else None
    return {
        "steps": None if sampler is None else loop.steps if loop is not None else 1,
        "max_steps": most,
        "estimates": list(bound.estimates) if bound is not None else [],
    }


def conditioning(stored: StoredModel) -> dict[str, Any]:
    """What a conditional model's labels may be (classes, their names, p(y)) and whether its
    sampler takes a guidance scale; nulls and False for an unconditional model. /models, the
    OpenAPI document and the V2 metadata state these."""
    data, sampler = stored.data, stored.graph("sampler")
    classes = data.get("classes")
    guided = sampler is not None and sampler.condition is not None and sampler.condition.guidance is not None
    return {
        "classes": classes,
        "class_names": data.get("class_names") if classes else None,
        "class_prior": data.get("class_prior") if classes else None,
        "guidance": guided,
    }


def Bounded(**bounds: int) -> Any:
    """An Int with bounds, for Optionals and list items: written before the validator, or pydantic
    publishes them as raw ge/lt keys that JSON Schema ignores (the document lost the bound)."""
    return Annotated[int, Field(**bounds), BeforeValidator(_integral)]


Seed = Bounded(ge=0, lt=2**63)
# A class label: the model's own range (0..classes-1, GET /models `classes`) is checked against
# the model and published per model in the OpenAPI document; this is the framework's bound.
Label = Bounded(ge=0, lt=2**31)


class _Strict(BaseModel):
    # strict: the published schema says integer or number, so "5" or true is refused, not coerced.
    model_config = ConfigDict(extra="forbid", strict=True, arbitrary_types_allowed=True)


class SampleRequest(_Strict):
    model: str = Field(pattern=MODEL_REF, description="name (newest version) or name:version")
    n: Int = Field(1, ge=1, le=MAX_N, description=f"number of samples, at most {MAX_N}")
    seed: Seed | None = Field(None, description="same seed, same samples")
    temperature: float = Field(
        1.0, ge=0.0, le=10.0, description="scales the normal and Gumbel noise: 0 takes the most likely draw"
    )
    format: Literal["json", "png"] = Field("json", description="png: a base64 PNG grid (image data)")
    steps: Bounded(ge=1, le=MAX_STEPS) | None = Field(
        None,
        description=(
            f"sampling steps (default: the model's own count, GET /models `steps`): 1 to the model's "
            f"`max_steps` (at most {MAX_STEPS}) where its sampler's count may be chosen; a fixed loop "
            f"takes only its own count, a one-call sampler only 1; n x steps (steps counted as the next "
            f"power of two) at most {MAX_DRAW_ROWS}"
        ),
    )
    label: Label | None = Field(
        None, description="a conditional model: the class of every sample (0 to the model's classes - 1)"
    )
    labels: list[Label] | None = Field(
        None,
        max_length=MAX_N,
        description=(
            "a conditional model: one class per sample (n of them); without label or labels a "
            "conditional model draws each sample's class from p(y), its training frequencies"
        ),
    )
    guidance: float | None = Field(
        None,
        ge=0.0,
        le=MAX_GUIDANCE,
        description=(
            "classifier-free guidance scale of a guided sampler (GET /models `guidance`): 0 the "
            "unconditional model, 1 (default) the conditional one, above 1 guided towards the class"
        ),
    )

    @model_validator(mode="before")
    @classmethod
    def _n_from_labels(cls, data: Any) -> Any:
        # One sample per label where n is not given (as V2's y): {"labels": [0, 1, 2]} draws three.
        if (
            isinstance(data, dict)
            and "n" not in data
            and isinstance(data.get("labels"), list)
            and data["labels"]
        ):
            return {**data, "n": len(data["labels"])}
        return data


class ScoreRequest(_Strict):
    model: str = Field(pattern=MODEL_REF)
    x: Rows(1, MAX_ROWS, f"rows to score, at most {MAX_ROWS}, each as wide as the model's data")
    kind: Literal["log_prob", "bound", "classify", "discriminator"] | None = Field(
        None,
        description=(
            "the score: log_prob (exact), bound (a lower bound), classify (a conditional model's "
            "posterior p(y|x) by Bayes' rule), discriminator (P(real)); default the model's first kind"
        ),
    )
    labels: list[Label] | None = Field(
        None,
        max_length=MAX_ROWS,
        description=(
            "a conditional model: each row's class, for log p(x|y); without it a conditional model "
            "scores the marginal log sum_y p(x|y) p(y) (exact from log_prob; from bounds, a lower bound)"
        ),
    )
    seed: Seed | None = Field(0, description="seed of the scorer's noise")
    k: Int = Field(1, ge=1, le=MAX_DRAWS, description="noise draws per row for kind=bound")
    estimate: Estimate | None = Field(
        None,
        description=(
            "kind=bound: how the k draws per row are summarised: average (mean log w, always a bound) "
            "or importance_weighted (log mean w, a tighter bound where the draws are log importance "
            "weights); one of the model's `estimates` (GET /models), default the tightest of them"
        ),
    )


class EncodeRequest(_Strict):
    model: str = Field(pattern=MODEL_REF)
    x: Rows(1, MAX_ROWS, f"rows to encode, at most {MAX_ROWS}, each as wide as the model's data")
    seed: Seed | None = Field(
        0, description="seed of the encoder's noise: z's draw (sample), a flow's dequantisation noise"
    )
    sample: bool | None = Field(
        None,
        description=(
            "true: z drawn from q(z|x) (a VAE); default: the posterior mean (a VAE), or the exact "
            "z = f(x) (a flow, which refuses true)"
        ),
    )


class DecodeRequest(_Strict):
    model: str = Field(pattern=MODEL_REF)
    z: Rows(1, MAX_ROWS, f"latents to decode, at most {MAX_ROWS}, each as wide as the model's latent_dim")
    seed: Seed | None = Field(0, description="seed of the decoder's draw (sample)")
    sample: bool | None = Field(
        None,
        description=(
            "true: x drawn from p(x|z) (where the model's decode_sample is true); default: E[x|z] (a "
            "VAE), or the exact inverse f^-1(z) (a flow: on discrete data the dequantized row)"
        ),
    )


class TwoSampleRequest(_Strict):
    model: str = Field(pattern=MODEL_REF)
    x: Rows(10, MAX_TWO_SAMPLE, "real rows")
    test: Literal["mmd", "c2st"] = "mmd"
    n_model: Bounded(ge=10, le=MAX_TWO_SAMPLE) | None = Field(
        None, description="model samples (default: len(x))"
    )
    seed: Int = Field(0, ge=0, lt=2**63)
    permutations: Int = Field(200, ge=0, le=MAX_PERMUTATIONS, description="MMD permutation null size")


# Responses. A result that is not finite (log 0 far outside a model's support, an overflow at
# temperature 10) is written as null: JSON has no infinities, and a 500 would hide the rest.
Number = float | None


class SampleResponse(BaseModel):
    model: str = Field(description="name:version that answered")
    steps: int | None = Field(None, description="the sampling steps run (step samplers)")
    samples: list[list[Number]] | None = Field(None, description="n rows in data units (format json)")
    png: str | None = Field(None, description="base64 PNG grid (format png)")


class ScoreResponse(BaseModel):
    model: str
    kind: Literal["log_prob", "bound", "classify", "discriminator"]
    scores: list[Number] = Field(
        description="nats per row; P(real) for discriminator; classify: the posterior of each row's class"
    )
    given: Literal["labels", "marginal"] | None = Field(
        None,
        description=(
            "a conditional model's log_prob or bound: of each row's given label, log p(x|y), or the "
            "marginal log sum_y p(x|y) p(y) (no labels sent)"
        ),
    )
    labels: list[int] | None = Field(None, description="classify: each row's most probable class")
    probabilities: list[list[Number]] | None = Field(
        None, description="classify: each row's posterior p(y|x) over the classes 0..classes-1"
    )
    source: Literal["log_prob", "bound"] | None = Field(
        None,
        description=(
            "classify: what the posterior is computed from; from a bound it is the posterior of the "
            "bounds, not of exact likelihoods"
        ),
    )
    bits_per_dim: list[Number] | None = None
    k: int | None = None
    estimate: Estimate | None = Field(
        None, description="kind=bound: which estimate `scores` are (the k draws' average or log mean exp)"
    )
    elbo: list[Number] | None = Field(
        None,
        description=(
            "with k > 1 and estimate importance_weighted: the plain average over draws (a conditional "
            "model's marginal: the log-sum-exp over classes of each class's average, weighted by p(y))"
        ),
    )
    # Over the rows: mean score and its standard error (nats, and bits/dim for likelihoods);
    # a standard error needs two rows or more.
    mean: Number | None = None
    stderr: Number | None = None
    mean_bits_per_dim: Number | None = None
    stderr_bits_per_dim: Number | None = None
    elbo_mean: Number | None = None
    elbo_stderr: Number | None = None
    elbo_mean_bits_per_dim: Number | None = None
    elbo_stderr_bits_per_dim: Number | None = None


class EncodeResponse(BaseModel):
    model: str
    z: list[list[Number]] = Field(description="the latent of each row (latent_dim values)")
    mean: list[list[Number]] | None = Field(None, description="q(z|x)'s mean (a VAE)")
    log_var: list[list[Number]] | None = Field(None, description="q(z|x)'s log-variance (a VAE)")
    dequantized: list[list[Number]] | None = Field(
        None, description="x + u, the dequantised row z is the latent of (a flow on discrete data)"
    )


class DecodeResponse(BaseModel):
    model: str
    x: list[list[Number]] = Field(description="rows in data units (a flow on discrete data: x + u; floor it)")


class TwoSampleResponse(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str
    test: Literal["mmd", "c2st"]
    statistic: Number
    p_value: Number
    n_x: int
    n_y: int


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
    # Capabilities as data: what /sample's steps and /score's estimate may be for this model.
    steps: int | None = Field(
        None, description="the sampler's own step count (1: one graph call); null: no sampler"
    )
    max_steps: int | None = Field(
        None, description="the most steps /sample may ask for, where the count may be chosen; else null"
    )
    estimates: list[Estimate] = Field(
        [], description="the estimates /score's kind=bound may ask for (empty: no bound)"
    )
    image_shape: list[int] | None = Field(
        None,
        description=(
            "rows are images of this [height, width, channels] (channels last: a pixel's channels "
            "are next to each other); null: the rows are not images"
        ),
    )
    sample_rows: int | None = Field(
        None,
        description=(
            "the most graph rows one /sample may take (n x steps, steps counted as the next power of "
            "two): GENREG_MAX_DRAW_ROWS, or fewer where the sampler's measured rate would not run them "
            "in half the deadline"
        ),
    )
    score_rows: dict[str, int] = Field(
        {}, description="per score kind, the most graph rows one /score may take (rows x k, as above)"
    )
    task_sample_rows: int | None = Field(
        None,
        description="as sample_rows, for a task (POST /sample/submit): judged by the task's time limit",
    )
    task_score_rows: dict[str, int] = Field({}, description="as score_rows, for a task (POST /score/submit)")
    body_rows: int | None = Field(
        None,
        description=(
            "the most rows of x a JSON body may carry for this model: GENREG_MAX_ROWS, or fewer where "
            "rows this wide, at their widest JSON, would pass the JSON body limit (V2's binary tensors "
            "are not bound by it)"
        ),
    )
    latent_rows: dict[str, int] = Field(
        {},
        description=(
            "per operation (encode, decode), the most rows one request may take: GENREG_MAX_ROWS, or "
            "fewer where their JSON would not fit a body, where the graph's measured rate would not "
            "run them in half the deadline, or where they would not fit the request memory budget"
        ),
    )
    sample_n: int | None = Field(
        None,
        description=(
            "the most samples one /sample may draw, whatever its steps: GENREG_MAX_N, or fewer where "
            "the state, noise and answer they hold would not fit the request memory budget"
        ),
    )
    two_sample_rows: int | None = Field(
        None,
        description=(
            "the most rows of x, and of n_model, one /two_sample_test may take, whichever test: "
            "GENREG_MAX_TWO_SAMPLE, or fewer where the rows, the samples and the test's matrices "
            "would not fit the request memory budget"
        ),
    )
    latent_dim: int | None = Field(
        None, description="the width of the latents /encode answers and /decode takes; null: neither"
    )
    latent: Literal["gaussian", "exact"] | None = Field(
        None,
        description="gaussian: z from q(z|x) (a VAE: mean, or a draw); exact: z = f(x), invertible (a flow)",
    )
    decode_sample: bool = Field(False, description="whether /decode may draw (sample true)")
    classes: int | None = Field(
        None,
        description="a conditional model: its number of classes (labels 0..classes-1); null: unconditional",
    )
    class_names: list[str] | None = Field(None, description="the classes' names, in label order")
    class_prior: list[float] | None = Field(
        None, description="p(y): each class's frequency in the training split (the marginal's weights)"
    )
    guidance: bool = Field(False, description="whether /sample takes a classifier-free guidance scale")


class ModelsResponse(BaseModel):
    models: list[ModelInfo]


class TaskSubmitted(BaseModel):
    task_id: str = Field(description="the task's id: pass it as ?task_id= to status, get, cancel and retry")
    status: Literal["pending"] = Field(description="a new task waits for its worker")


class TaskProgress(BaseModel):
    unit: Literal["steps", "draws", "rows"] = Field(
        description="steps of a step sampler (a two-sample test's sampling), draws of a bound's k-draw score, else rows"
    )
    done: int = Field(description="how many are done")
    total: int = Field(description="how many there are")


class TaskStatus(BaseModel):
    """BentoML's task status, with when it finished, its progress and why it failed."""

    task_id: str
    status: Literal["pending", "in_progress", "completed", "failed", "canceled"] = Field(
        description="BentoML's task states (its clients parse these)"
    )
    created_at: str = Field(description="submitted (ISO 8601, UTC)")
    executed_at: str | None = Field(description="started")
    completed_at: str | None = Field(description="finished, failed or canceled")
    progress: TaskProgress
    error: str | None = Field(description="why it failed (failed only)")


class ErrorBody(BaseModel):
    error: str = Field(description="what is wrong, naming the field")
    field: str | None = Field(description="the request field at fault (body: the body as a whole)")


# --- Open Inference Protocol (KServe V2) ---------------------------------------------------------
# The protocol's request body (its JSON part; binary tensor data follows it, see services.tensors)
# and genreg's operations as request parameters. The parameters reuse the fields of /score and
# /sample themselves (same bounds, same defaults), so the two protocols cannot drift apart.

# Every datatype the protocol names; which of them a tensor may carry is services.tensors' call.
V2_DATATYPES = (
    "BOOL",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "FP16",
    "FP32",
    "FP64",
    "BF16",
    "BYTES",
)
# The ones genreg's models take (rows of numbers); BOOL, BF16 and BYTES are refused by name.
V2_NUMBERS = tuple(t for t in V2_DATATYPES if t not in ("BOOL", "BF16", "BYTES"))
# Request parameters the protocol itself defines (the rest are genreg's operation parameters).
V2_PROTOCOL_PARAMETERS = ("binary_data_output",)


class V2TensorParameters(_Strict):
    binary_data_size: Int | None = Field(
        None, ge=0, description="bytes of this tensor in the binary part of the body (binary extension)"
    )


class V2InputTensor(_Strict):
    name: str = Field(min_length=1, max_length=256)
    shape: list[Bounded(ge=0, lt=2**63)] = Field(max_length=16)
    # A plain string here: an unknown datatype is refused by services.tensors with the tensor's name.
    datatype: Annotated[str, WithJsonSchema({"type": "string", "enum": list(V2_NUMBERS)})]
    parameters: V2TensorParameters | None = None
    data: Annotated[Any, WithJsonSchema({"type": "array", "description": "flat or nested, row-major"})] = None


class V2OutputParameters(_Strict):
    binary_data: bool | None = Field(None, description="this output as binary data after the JSON")


class V2RequestedOutput(_Strict):
    name: str = Field(min_length=1, max_length=256)
    parameters: V2OutputParameters | None = None


class V2InferRequest(_Strict):
    id: str | None = Field(None, max_length=256, description="echoed in the response")
    parameters: dict[str, bool | Int | float | str] | None = Field(
        None, description="binary_data_output, and the operation's parameters"
    )
    inputs: list[V2InputTensor] = Field(max_length=16)
    outputs: list[V2RequestedOutput] | None = Field(None, max_length=16)


def _fields(model: type[BaseModel], *names: str) -> dict[str, Any]:
    return {name: (model.model_fields[name].annotation, model.model_fields[name]) for name in names}


# The V2 parameters of each operation: the very fields of ScoreRequest and SampleRequest.
V2ScoreParameters = create_model(
    "V2ScoreParameters", __base__=_Strict, **_fields(ScoreRequest, "kind", "seed", "k", "estimate")
)
V2EncodeParameters = create_model(
    "V2EncodeParameters",
    __base__=_Strict,
    operation=(Literal["encode"], Field(description="encode the rows of input x (without it, x is scored)")),
    **_fields(EncodeRequest, "seed", "sample"),
)
V2DecodeParameters = create_model(
    "V2DecodeParameters",
    __base__=_Strict,
    operation=(Literal["decode"] | None, Field(None, description="input z is always decoded")),
    **_fields(DecodeRequest, "seed", "sample"),
)
V2SampleParameters = create_model(
    "V2SampleParameters",
    __base__=_Strict,
    **_fields(SampleRequest, "n", "seed", "temperature", "steps", "label", "guidance"),
)


# V2 responses (published in the OpenAPI document; the fuzzer checks answers against them).
class V2Error(BaseModel):
    error: str = Field(description="what is wrong, naming the field or tensor")


class V2ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class V2Live(BaseModel):
    live: bool


class V2Ready(BaseModel):
    ready: bool


class V2ModelReady(BaseModel):
    name: str
    ready: bool


class V2TensorMetadata(BaseModel):
    name: str
    datatype: Literal["FP32", "FP64", "INT64"]
    shape: list[int] = Field(description="-1: any number of rows")


class V2ModelMetadata(BaseModel):
    name: str
    versions: list[str] = Field(description="stored versions, newest first")
    platform: str
    inputs: list[V2TensorMetadata] = Field(
        description="x (score), z (decode), y (a conditional model's labels); none to sample"
    )
    outputs: list[V2TensorMetadata]
    parameters: dict[str, str | int] = Field(
        description="family, kinds, operations; steps (step samplers) and max_steps (a count that may be "
        "chosen); estimates (bound scorers, comma-separated)"
    )


class V2OutputTensor(BaseModel):
    name: str = Field(description="scores, bits_per_dim, elbo (score) or samples (sample)")
    datatype: Literal["FP32", "FP64"]
    shape: list[int]
    data: list[Number] | None = Field(None, description="row-major; null for a non-finite value")
    parameters: dict[str, int] | None = Field(None, description="binary_data_size of a binary output")


class V2InferResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    parameters: dict[str, str | int] = Field(
        description="kind, k and (kind bound) estimate (score); n and the steps run (step samplers; sample)"
    )
    outputs: list[V2OutputTensor]


def validate(
    model: type[BaseModel], body: dict[str, Any], may_hold_bools: bool = True, prefix: str = ""
) -> Any:
    """``body`` as ``model``, or ApiError 400 naming the first field at fault (led by ``prefix``)."""
    try:
        return model.model_validate(body, context={"may_hold_bools": may_hold_bools})
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        field = ".".join(str(p) for p in (prefix, *first["loc"]) if p != "") or "body"
        top = str(first["loc"][0]) if first["loc"] else "body"
        message = "unknown field" if first["type"] == "extra_forbidden" else first["msg"]
        message = message.removeprefix("Value error, ")
        # The reason is a metric label: only names the schema defines, never a client's
        # invented field name (each would be a new time series, without bound).
        reason = f"invalid_{top}" if top in model.model_fields else "unknown_field"
        if first["type"] != "extra_forbidden" and top not in model.model_fields:
            reason = "invalid_body"
        raise ApiError(400, prefix or top, f"{field}: {message}", reason) from None


# The Open Inference Protocol's model repository extension (the live registry's control).
MODEL_NAME = r"^[a-z0-9][a-z0-9._-]*$"


class RepositoryIndexRequest(_Strict):
    ready: bool | None = Field(None, description="true: only the versions being served")


class RepositoryLoadRequest(_Strict):
    parameters: dict[str, Any] | None = Field(None, description="accepted for the protocol; none are used")


class RepositoryEntry(BaseModel):
    name: str
    version: str
    state: Literal["READY", "UNAVAILABLE", "UNLOADED"]
    reason: str = Field(
        "", description="why a version is not served (e.g. the artifact whose checksum failed)"
    )


class RepositoryAnswer(BaseModel):
    model: str = Field(description="the name, and for a load the name:version now served")
    state: Literal["READY", "UNLOADED"]
