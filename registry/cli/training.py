"""`genreg train` and `genreg plugins`: fit a family, export, check and store it; list the families."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from registry.cli.app import USER_ERRORS, app, fail, parse_options
from registry.contract.loading import get_plugins
from registry.datasets import BUILTIN_DATASETS, LABELLED_DATASETS, load_dataset
from registry.runtime.images import describe as describe_shape
from registry.runtime.images import parse_image_shape


@app.command()
def train(
    family: Annotated[str, typer.Argument(help="family name (see `genreg plugins`)")],
    data: Annotated[
        str, typer.Option("--data", "-d", help=f"{', '.join(BUILTIN_DATASETS)} or a .npy/.npz/.csv file")
    ],
    name: Annotated[str | None, typer.Option(help="model name (default FAMILY-DATA)")] = None,
    epochs: Annotated[int | None, typer.Option(min=1, help="max epochs")] = None,
    time_budget: Annotated[float | None, typer.Option(min=1, help="stop after this many seconds")] = None,
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
    option: Annotated[
        list[str] | None, typer.Option("--option", "-o", help="family option key=value")
    ] = None,
    levels: Annotated[int | None, typer.Option(help="user data: discrete levels 0..L-1")] = None,
    validation: Annotated[Path | None, typer.Option(help="user data: separate validation file")] = None,
    image_shape: Annotated[
        str | None,
        typer.Option(
            "--image-shape",
            help="user data of flat rows (CSV): each row is an image of H,W,C (channels 1 or 3, last)",
        ),
    ] = None,
    conditional: Annotated[
        bool,
        typer.Option(
            "--conditional",
            help=f"train on the data's classes ({', '.join(LABELLED_DATASETS)}; user files: --labels)",
        ),
    ] = False,
    labels: Annotated[
        Path | None,
        typer.Option(help="user data: one class 0..K-1 per row (.npy/.npz/.csv); trains conditionally"),
    ] = None,
    validation_labels: Annotated[
        Path | None, typer.Option("--validation-labels", help="user data: the --validation file's classes")
    ] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda or auto")] = "auto",
    precision: Annotated[
        str,
        typer.Option(
            help="the training loss's arithmetic: auto (bf16 on a GPU, float32 on the CPU), float32 or "
            "bf16; served numbers are float32 either way"
        ),
    ] = "auto",
    quiet: Annotated[bool, typer.Option(help="no progress bar")] = False,
    nproc: Annotated[
        int, typer.Option(min=1, max=256, help="data-parallel processes here (torchrun; one per GPU)")
    ] = 1,
) -> None:
    """Train a family on data, export it to ONNX, check parity and store a new version."""
    from registry.contract.family import TrainControl
    from registry.pipeline import distributed
    from registry.pipeline.train import default_name, train_and_store

    plugins = get_plugins()
    try:
        fam = plugins.get(family)
        # cpu or cuda, checked before any process is launched or data loaded
        device = distributed.resolve_device(device)
        precision = distributed.resolve_precision(precision, device)
        if (conditional or labels is not None) and not fam.conditional:
            able = sorted(n for n, e in plugins.families.items() if e.family.conditional)
            raise ValueError(
                f"{family} does not train conditionally (its graphs take no class label); "
                f"conditional families: {', '.join(able)}"
            )
    except USER_ERRORS as exc:
        fail(str(exc))
        return
    if nproc > 1 and distributed.world_size() == 1:
        if not fam.data_parallel:
            parallel = sorted(n for n, e in plugins.families.items() if e.family.data_parallel)
            fail(f"{family} trains in one process; --nproc applies to: {', '.join(parallel)}")
            return
        argv = sys.argv[1:]
        for i, arg in enumerate(argv):  # the same command, less --nproc, in every process
            if arg == "--nproc":
                del argv[i : i + 2]
                break
            if arg.startswith("--nproc="):
                del argv[i]
                break
        raise typer.Exit(distributed.launch(argv, nproc))

    try:
        config = parse_options(option or [], fam.Config)
        shape = parse_image_shape(image_shape) if image_shape is not None else None
        dataset = load_dataset(
            data,
            levels=levels,
            validation=validation,
            image_shape=shape,
            conditional=conditional,
            labels=labels,
            validation_labels=validation_labels,
        )
        for note in dataset.notes:
            typer.echo(note, err=True)
        entry = plugins.families[family]
        distributed.join_group(device)
        if distributed.is_main_process():
            processes = distributed.world_size()
            images = f", images {describe_shape(dataset.image_shape)}" if dataset.image_shape else ""
            typer.echo(
                f"training {family} on {dataset.name} ({len(dataset.train)} rows, dim {dataset.dim}{images}"
                f"{f', {dataset.levels} levels' if dataset.levels else ''}"
                f"{f', {dataset.classes} classes' if dataset.labels is not None else ''})"
                + (f" on {processes} processes" if processes > 1 else ""),
                err=True,
            )
        stored = train_and_store(
            fam,
            dataset,
            config,
            TrainControl(
                seed=seed,
                epochs=epochs,
                time_budget=time_budget,
                device=device,
                precision=precision,
                progress=not quiet,
            ),
            name=name or default_name(family, dataset.name),
            plugin={"name": entry.plugin, "distribution": entry.distribution},
        )
    except USER_ERRORS as exc:
        fail(str(exc))
        return
    finally:
        distributed.leave_group()
    if stored is None:  # a rank other than 0: rank 0 stores and reports
        return
    test = stored.metrics.get("test", {})
    parts = [f"saved {stored.tag}"]
    if "bits_per_dim" in test:
        parts.append(f"test {test['kind']} {test['nats']:.3f} nats = {test['bits_per_dim']:.4f} bits/dim")
    if "kl" in test:
        parts.append(f"KL(data||model) {test['kl']:.4f} nats")
    parts.append("parity " + ", ".join(f"{k} {v:.2g}" for k, v in stored.meta["parity"].items()))
    stages = stored.meta.get("stages", {})
    if stages:
        order = [k for k in ("export", "parity", "evaluate") if k in stages]
        parts.append("after training " + ", ".join(f"{k} {stages[k]:.1f} s" for k in order))
    typer.echo("; ".join(parts))


@app.command()
def plugins() -> None:
    """List model families, their capabilities and the distribution each came from."""
    reg = get_plugins()
    for name, entry in sorted(reg.families.items()):
        caps = ",".join(sorted(c.value for c in entry.family.capabilities))
        # capabilities as data: a family that trains p(x|y) on labelled data says so
        caps += ",conditional" if entry.family.conditional else ""
        typer.echo(f"{name:<14} {caps:<30} {entry.distribution} ({entry.plugin})  {entry.family.description}")
    for err in reg.errors:
        typer.secho(
            f"failed: {err.plugin} ({err.distribution}): {err.error}", err=True, fg=typer.colors.YELLOW
        )
