"""`genreg serve`: the BentoML service over the store, in a BentoML home of the server's own."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from registry.cli.app import USER_ERRORS, app, fail


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="address to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 3000,
    workers: Annotated[int, typer.Option(min=1, max=64, help="worker processes")] = 1,
    models: Annotated[str | None, typer.Option(help="comma-separated allow-list (default: all)")] = None,
    models_from: Annotated[
        str | None,
        typer.Option(
            help="pull the newest versions from this URI (e.g. s3://bucket/prefix) now and as they are pushed"
        ),
    ] = None,
) -> None:
    """Serve the store's models over HTTP (BentoML + ONNX Runtime)."""
    import os

    env = dict(os.environ, GENREG_WORKERS=str(workers))
    if models:
        env["GENREG_MODELS"] = models
    if models_from:
        from registry.runtime.remote import pull_new

        # Pulled once here, before the workers start, so they load the models at start-up;
        # afterwards each worker's watcher pulls what is pushed later (GENREG_MODELS_FROM).
        try:
            pulled = pull_new(models_from, models.split(",") if models else None)
        except USER_ERRORS as exc:
            fail(str(exc))
            return
        typer.echo(f"pulled {', '.join(pulled) or 'nothing new'} from the remote store", err=True)
        env["GENREG_MODELS_FROM"] = models_from
    env["BENTOML_HOME"] = str(_server_home(Path(env.get("BENTOML_HOME", "~/bentoml")).expanduser()))
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    cmd = [sys.executable, "-m", "bentoml", "serve", "services.service:Genreg", "--working-dir", root]
    cmd += ["--host", host, "--port", str(port)]
    typer.echo(f"serving on http://{host}:{port} ({workers} worker{'s' if workers > 1 else ''})", err=True)
    os.execvpe(sys.executable, cmd, env)


def _server_home(home: Path) -> Path:
    """A BentoML home of this server's own whose ``models`` is the store's (a symlink).

    BentoML empties ``<home>/prometheus_multiproc_dir`` whenever a server starts, which erased
    the metrics of every other server already running on the same store (their counters
    vanished from /metrics). A private home per server keeps each one's metrics; the store is
    shared, so models saved later are still found.
    """
    import tempfile

    (home / "models").mkdir(parents=True, exist_ok=True)
    private = Path(tempfile.mkdtemp(prefix="genreg-serve-"))
    (private / "models").symlink_to(home / "models", target_is_directory=True)
    return private
