"""schemathesis hooks for tests/test_fuzz.py's run of its own runner (loaded by SCHEMATHESIS_HOOKS).

One rule of /sample and /score cannot be stated in JSON Schema: a conditional model's ``labels``
hold one class per row of ``x`` (per sample, n), and no keyword relates two arrays' lengths.
tests/schemathesis.toml turns schemathesis's "schema-valid requests are accepted" off for those
two operations (and their task submissions), and this check runs it in its place, with that one
refusal allowed: a 400 naming labels that says the counts differ. Every other refusal of a
schema-valid request still fails the run.
"""

from __future__ import annotations

import schemathesis
from schemathesis.specs.openapi.checks import positive_data_acceptance

LABELLED = ("/sample", "/score", "/sample/submit", "/score/submit")


def _count_mismatch(response) -> bool:
    if response.status_code != 400:
        return False
    try:
        body = response.json()
    except ValueError:
        return False
    return body.get("field") == "labels" and "give one label per row" in body.get("error", "")


@schemathesis.check
def positive_data_acceptance_but_label_counts(ctx, response, case) -> bool | None:
    """schemathesis's positive data acceptance on the labelled operations, less label counts."""
    if case.operation.path not in LABELLED or _count_mismatch(response):
        return None
    return positive_data_acceptance(ctx, response, case)
