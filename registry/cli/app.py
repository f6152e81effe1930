"""The ``genreg`` Typer application, its error handling and option parsing, shared by every command."""

from __future__ import annotations

from typing import Any

import typer
from pydantic import ValidationError

from registry.contract.dataset import DataError
from registry.contract.loading import FamilyError
from registry.pipeline.export import ExportError
from registry.runtime.models import CapabilityError
from registry.runtime.store import StoreError

app = typer.Typer(
    help="genreg: a registry and serving service for deep generative models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

USER_ERRORS = (DataError, FamilyError, StoreError, CapabilityError, ExportError, ValueError)


def fail(message: str) -> None:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    raise typer.Exit(2)


def parse_options(pairs: list[str], config_cls: type) -> Any:
    """`-o key=value` pairs validated by the family's pydantic config."""
    values: dict[str, Any] = {}
    fields = config_cls.model_fields
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            fail(f"option {pair!r} must look like key=value")
        if key not in fields:
            valid = ", ".join(sorted(fields)) or "none"
            fail(f"unknown option {key!r} for this family; valid options: {valid}")
        values[key] = raw
    try:
        return config_cls.model_validate(values)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        fail(f"invalid option: {problems}")
