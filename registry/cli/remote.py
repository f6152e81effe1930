"""`genreg push` / `genreg pull`: versions to and from a shared store in object storage."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from registry.cli.app import USER_ERRORS, app, fail

Uri = Annotated[str, typer.Argument(help="e.g. s3://bucket/prefix (credentials: the usual AWS variables)")]
Endpoint = Annotated[
    str | None,
    typer.Option(help="S3-compatible endpoint (default: AWS_ENDPOINT_URL, else AWS itself)"),
]


def storage_options(endpoint_url: str | None) -> dict[str, Any] | None:
    return {"endpoint_url": endpoint_url} if endpoint_url else None


@app.command()
def push(
    model: Annotated[str, typer.Argument(help="name (newest version) or name:version")],
    uri: Uri,
    endpoint_url: Endpoint = None,
) -> None:
    """Upload a stored version (checksums verified first) to object storage."""
    from registry.runtime.remote import push as push_model

    try:
        entry = push_model(model, uri, storage_options(endpoint_url))
    except USER_ERRORS as exc:
        fail(str(exc))
        return
    typer.echo(f"pushed {entry.tag} (archive sha256 {entry.sha256[:16]}...)")


@app.command()
def pull(
    model: Annotated[str, typer.Argument(help="name (newest pushed version) or name:version")],
    uri: Uri,
    endpoint_url: Endpoint = None,
) -> None:
    """Download a version into the local store, refusing one whose archive or files do not verify."""
    from registry.runtime.remote import pull as pull_model

    try:
        stored = pull_model(model, uri, storage_options(endpoint_url))
    except USER_ERRORS as exc:
        fail(str(exc))
        return
    typer.echo(f"pulled {stored.tag} (every artifact verified)")
