"""Schema-driven fuzzing of the live service: its own OpenAPI document, generated requests.

Used by tests/test_fuzz.py (a short run in the suite) and benchmarks/fuzz.py (the long one).
Every generated request must be answered within the timeout, never with a 5xx, with the
status codes and response bodies the document declares; requests that break the schema
(negative mode) must be refused with a 4xx.
"""

from __future__ import annotations

from collections import Counter

import httpx
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as seed_fn
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
]
TIMEOUT_S = 30  # "no hang": a request not answered by then fails the run


def fuzz(base: str, per_operation: int, headers: dict[str, str] | None = None, seed: int = 0) -> Counter:
    """Runs ``per_operation`` generated requests (half valid, half not) on every operation.

    Returns the number of answered requests per operation and status; raises on the first failed check
    (Hypothesis shrinks it to a minimal failing request first). Seed 0 is derandomized, so
    the suite sends the same requests every run.
    """
    schema = schemathesis.openapi.from_url(base.rstrip("/") + "/docs.json", headers=headers or {})
    models = httpx.get(base.rstrip("/") + "/models", headers=headers or {}, timeout=TIMEOUT_S).json()[
        "models"
    ]
    served = [m["name"] for m in models]
    versions = {m["name"]: m["version"] for m in models}
    sent: Counter = Counter()
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            examples = max(1, per_operation // 2)
            if mode is GenerationMode.POSITIVE and operation.label.endswith("/infer"):
                # V2 infer is four operations in one body (sample, score, encode, decode): three
                # times the valid requests, so each is drawn (a sample: about one in nine).
                examples *= 3
            _run(operation, mode, base, examples, headers, seed, sent, served, versions)
    return sent


def _run(
    operation, mode, base: str, examples: int, headers, seed: int, sent: Counter, served, versions
) -> None:
    # Names the generator invents are almost never served, so every request would stop at
    # 404; half the valid bodies (and V2 paths) name a served model instead (still valid) to
    # reach validation against the model and the model itself. Invalid ones are left as made.
    names = st.sampled_from([None, *served]) if served and mode is GenerationMode.POSITIVE else st.none()

    @given(case=operation.as_strategy(generation_mode=mode), name=names)
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=seed == 0,
        phases=[Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
    )
    def one(case, name) -> None:
        if name and isinstance(case.body, dict) and "model" in case.body:
            case.body["model"] = name
        if name and case.path_parameters and "name" in case.path_parameters:
            case.path_parameters["name"] = name
            if "version" in case.path_parameters:
                case.path_parameters["version"] = versions[name]
        response = case.call_and_validate(base_url=base, headers=headers, checks=CHECKS, timeout=TIMEOUT_S)
        sent[f"{operation.label} {response.status_code}"] += 1

    if seed:
        one = seed_fn(seed)(one)
    try:
        one()
    except Unsatisfiable:
        # Nothing to negate (a GET without parameters): every request to it is valid.
        assert mode is GenerationMode.NEGATIVE, operation.label
