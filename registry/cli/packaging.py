"""`genreg build` and `genreg containerize`: the Bento and the serving image."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from registry.cli.app import USER_ERRORS, app, fail


def _model_list(models: str | None, no_models: bool) -> list[str] | None:
    if no_models:
        return []
    return [m.strip() for m in models.split(",") if m.strip()] if models else None


ModelsOption = Annotated[
    str | None, typer.Option(help="comma-separated name or name:version list (default: newest of every name)")
]
NoModelsOption = Annotated[
    bool, typer.Option("--no-models", help="ship no models: the container serves a mounted store")
]


@app.command()
def build(
    models: ModelsOption = None,
    no_models: NoModelsOption = False,
    gpu: Annotated[bool, typer.Option(help="onnxruntime-gpu instead of onnxruntime")] = False,
    s3: Annotated[
        bool, typer.Option(help="add s3fs, for replicas that pull from GENREG_MODELS_FROM")
    ] = False,
) -> None:
    """Build the Bento (`bentoml build`): service, serving modules, models, locked serving deps."""
    from registry.packaging.bento import BuildError, BuildOptions, build_bento

    try:
        result = build_bento(BuildOptions(models=_model_list(models, no_models), gpu=gpu, s3=s3))
    except (BuildError, *USER_ERRORS) as exc:
        fail(str(exc))
        return
    typer.echo(f"built {result.tag} in {result.seconds:.1f}s with {len(result.models)} models:")
    for tag in result.models:
        typer.echo(f"  {tag}")
    typer.echo(f"{len(result.requirements)} locked requirements (no training packages); {result.path}")


def _wait_for_signal() -> None:
    """Block until SIGINT or SIGTERM (handled even where the shell started us ignoring SIGINT)."""
    import signal

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, stop)
    with contextlib.suppress(KeyboardInterrupt):
        while True:
            time.sleep(3600)


@app.command()
def containerize(
    bento: Annotated[str | None, typer.Option(help="an existing Bento tag (default: build one now)")] = None,
    models: ModelsOption = None,
    no_models: NoModelsOption = False,
    data_root: Annotated[Path | None, typer.Option(help="the private dockerd's --data-root")] = None,
    cache_dir: Annotated[
        Path | None, typer.Option(help="where the debootstrapped root file system is kept")
    ] = None,
    mirror: Annotated[str | None, typer.Option(help="Debian mirror (default: from the apt sources)")] = None,
    fresh: Annotated[bool, typer.Option(help="debootstrap and build the base image again")] = False,
    save: Annotated[Path | None, typer.Option(help="also write the image here (docker save)")] = None,
    run: Annotated[bool, typer.Option(help="then run the image in the foreground until Ctrl-C")] = False,
    s3: Annotated[
        bool, typer.Option(help="add s3fs, for replicas that pull from GENREG_MODELS_FROM")
    ] = False,
    port: Annotated[int, typer.Option(min=1, max=65535, help="port for --run (host network)")] = 3000,
) -> None:
    """Build the serving image from Debian packages with a private dockerd (root, Debian host)."""
    from registry.packaging.bento import BuildError, BuildOptions, build_bento
    from registry.packaging.image import (
        Container,
        ImageConfig,
        ImageError,
        docker_daemon,
        ensure_tools,
        make_image,
    )

    config = ImageConfig(mirror=mirror, fresh=fresh)
    if data_root:
        config.data_root = data_root
    if cache_dir:
        config.cache_dir = cache_dir
    log = config.cache_dir / "containerize.log"
    try:
        config.cache_dir.mkdir(parents=True, exist_ok=True)
        log.write_text("")
        for pkg in ensure_tools():
            typer.echo(f"installed {pkg}", err=True)
        if bento is None:
            result = build_bento(BuildOptions(models=_model_list(models, no_models), s3=s3))
            bento = result.tag
            typer.echo(f"built {bento} with {len(result.models)} models in {result.seconds:.1f}s", err=True)
        with docker_daemon(config.data_root) as docker:
            report = make_image(docker, config, bento, log)
            timings = ", ".join(f"{k} {v:.1f}s" for k, v in report.seconds.items())
            typer.echo(
                f"image {report.image} (also genreg:latest): {report.size_bytes / 1e6:.0f} MB; {timings}"
            )
            if save:
                docker("save", "-o", str(save), report.image)
                typer.echo(f"saved to {save} (load it with `docker load -i {save}`)")
            if run:
                container = Container(docker, report.image, port, "genreg-serve")
                try:
                    ready = container.wait_ready()
                    typer.echo(f"serving on http://127.0.0.1:{port} (ready in {ready:.1f}s); Ctrl-C stops it")
                    _wait_for_signal()
                    seconds, code = container.stop()
                    typer.echo(f"stopped in {seconds:.1f}s (exit code {code})")
                finally:
                    container.remove()
    except (BuildError, ImageError, *USER_ERRORS) as exc:
        fail(f"{exc}\n(full log: {log})")
