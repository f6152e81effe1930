"""`genreg encode`, `decode`, `traverse` and `interpolate`: the latent space, through the same
path as /encode and /decode (registry.runtime.latent)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from registry.cli.app import USER_ERRORS, app, fail
from registry.cli.output import load_model, write_rows
from registry.datasets import read_array

Sample = Annotated[
    bool | None,
    typer.Option(
        "--sample/--no-sample", help="draw (a VAE's q(z|x) or p(x|z)); default: the mean or exact map"
    ),
]
Seed = Annotated[int, typer.Option(help="seed of the draws and of a flow's dequantisation noise")]


def _latent_command(
    operation: str, model: str, file: Path, out: Path | None, seed: int, sample: bool | None
) -> None:
    """encode or decode the rows of ``file`` (registry.runtime.latent) and write what it gives."""
    from registry.runtime import latent

    try:
        loaded = load_model(model)
        rows = read_array(file)
        if operation == "encode":
            result = latent.encode(loaded, latent.check_encode(loaded, rows, sample), seed).z
        else:
            result = latent.decode(loaded, latent.check_decode(loaded, rows, sample), seed)
    except USER_ERRORS as exc:
        fail(str(exc))
        return
    write_rows(loaded, result, out, png=False)
    if out is not None:
        what = f"latents of width {result.shape[1]}" if operation == "encode" else "rows"
        typer.echo(f"wrote {len(result)} {what} from {loaded.stored.tag} to {out}")


@app.command()
def encode(
    model: Annotated[str, typer.Argument(help="name or name:version")],
    file: Annotated[Path, typer.Option("--file", "-f", help=".npy, .npz or .csv rows")],
    out: Annotated[Path | None, typer.Option(help=".npy or .csv for z (default: stdout)")] = None,
    seed: Seed = 0,
    sample: Sample = None,
) -> None:
    """Encode rows to latents z (a VAE: q(z|x)'s mean, or a draw; a flow: f(x), on discrete data f(x + u))."""
    _latent_command("encode", model, file, out, seed, sample)


@app.command()
def decode(
    model: Annotated[str, typer.Argument(help="name or name:version")],
    file: Annotated[Path, typer.Option("--file", "-f", help=".npy, .npz or .csv latents z")],
    out: Annotated[Path | None, typer.Option(help=".npy or .csv for the rows (default: stdout)")] = None,
    seed: Seed = 0,
    sample: Sample = None,
) -> None:
    """Decode latents z to rows (a VAE: E[x|z], or a draw; a flow: f^-1(z), on discrete data x + u)."""
    _latent_command("decode", model, file, out, seed, sample)


def _rows(loaded: Any, rows: Path | None) -> np.ndarray:
    """The rows to start from: the file's, or the built-in data set's test split."""
    if rows is not None:
        return read_array(rows)
    from registry.datasets import load_dataset

    name = loaded.stored.data.get("name")
    try:
        return load_dataset(name).test
    except Exception:
        fail(f"{loaded.stored.tag} was trained on {name!r}, not a built-in data set: pass --rows FILE")
        raise


@app.command()
def traverse(
    model: Annotated[str, typer.Argument(help="name or name:version")],
    out: Annotated[Path, typer.Option(help=".png grid (image data), or .npy / .csv rows")],
    rows: Annotated[
        Path | None, typer.Option(help="rows to start from (default: the built-in data's test split)")
    ] = None,
    row: Annotated[int, typer.Option(min=0, help="which row's code the others are kept at")] = 0,
    steps: Annotated[int, typer.Option(min=2, max=64, help="values per dimension (grid columns)")] = 9,
    span: Annotated[float, typer.Option(min=0.1, max=10.0, help="each dimension from -span to span")] = 3.0,
    dims: Annotated[int | None, typer.Option(min=1, help="only the first N dimensions of the order")] = None,
    seed: Seed = 0,
) -> None:
    """A latent traversal: each latent dimension varied over -span..span (prior standard
    deviations), the others at a data row's code; one grid row per dimension. A VAE's rows are
    ordered by KL(q(z_i|x)||p(z_i)) on the validation split, so the inactive dimensions sink to
    the bottom."""
    from registry.runtime import latent

    try:
        loaded = load_model(model)
        x = _rows(loaded, rows)
        if row >= len(x):
            fail(f"--row: {row} is past the {len(x)} rows")
        order = latent.traversal_order(loaded, x)[:dims]
        z = latent.encode(loaded, latent.check_encode(loaded, x[row : row + 1], None), seed).z[0]
        values = np.linspace(-span, span, steps, dtype=np.float32)
        grid = latent.traversal(z, order, values)
        decoded = latent.decode(loaded, latent.check_decode(loaded, grid, None), seed)
    except USER_ERRORS as exc:
        fail(str(exc))
        return
    write_rows(loaded, decoded, out, cols=steps)
    typer.echo(f"wrote a traversal of {len(order)} dimensions x {steps} values (dimensions {order}) to {out}")


@app.command()
def interpolate(
    model: Annotated[str, typer.Argument(help="name or name:version")],
    rows: Annotated[Path, typer.Option(help="rows; the first two (or --pair) are interpolated")],
    out: Annotated[Path, typer.Option(help=".png grid (image data), or .npy / .csv rows")],
    pair: Annotated[tuple[int, int], typer.Option(help="which two rows")] = (0, 1),
    steps: Annotated[int, typer.Option(min=2, max=64, help="points from the first to the second")] = 10,
    seed: Seed = 0,
) -> None:
    """Spherical interpolation between two rows' latents (both families' latents are Gaussian),
    decoded: the first and last columns are the rows' reconstructions."""
    from registry.runtime import latent

    try:
        loaded = load_model(model)
        x = read_array(rows)
        if max(pair) >= len(x):
            fail(f"--pair: {max(pair)} is past the {len(x)} rows")
        z = latent.encode(loaded, latent.check_encode(loaded, x[list(pair)], None), seed).z
        path = latent.slerp(z[0], z[1], steps)
        decoded = latent.decode(loaded, latent.check_decode(loaded, path, None), seed)
    except USER_ERRORS as exc:
        fail(str(exc))
        return
    write_rows(loaded, decoded, out, cols=steps)
    typer.echo(f"wrote an interpolation of {steps} points between rows {pair[0]} and {pair[1]} to {out}")
