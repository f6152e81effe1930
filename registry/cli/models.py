"""`genreg list`, `sample` and `score`: the store's models, run by ONNX Runtime as the service runs them."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from registry.cli.app import USER_ERRORS, app, fail
from registry.cli.output import load_model, write_rows
from registry.contract.loading import get_plugins
from registry.datasets import read_array


@app.command("list")
def list_cmd(as_json: Annotated[bool, typer.Option("--json", help="machine-readable")] = False) -> None:
    """List stored model versions, newest first."""
    from registry.runtime.store import list_models

    entries = [m.summary() for m in list_models()]
    if as_json:
        typer.echo(json.dumps(entries, indent=2))
        return
    if not entries:
        typer.echo("no models stored yet; try `genreg train flow --data digits`")
        return
    families = get_plugins().families
    for e in entries:
        if e["family"] not in families:
            e["family"] += " (unavailable)"
        test = e["metrics"].get("test", {})
        score = f"{test['bits_per_dim']:.4f} bits/dim" if "bits_per_dim" in test else ""
        kl = f" KL {test['kl']:.4f}" if "kl" in test else ""
        typer.echo(
            f"{e['tag']:<42} {e['family']:<12} {e['data']['name']:<14} {','.join(e['capabilities']):<22} {score}{kl}"
        )


def _with_progress(
    loaded,
    n: int,
    seed: int | None,
    temperature: float,
    steps: int | None,
    labels: np.ndarray | None = None,
    guidance: float | None = None,
) -> np.ndarray:
    """``loaded.sample(...)``, with a progress bar on stderr for a step sampler: the sampling runs
    in a thread whose request token (registry.runtime.budget) counts the graph rows it has run,
    the count a task's status reports."""
    import contextvars
    import threading

    from registry.runtime.budget import TOKEN, Token

    count = loaded.steps(steps)
    given = {"labels": labels, "guidance": guidance}
    if count <= 1:
        return loaded.sample(n, seed=seed, temperature=temperature, steps=steps, **given)
    token = Token()
    context = contextvars.copy_context()
    context.run(TOKEN.set, token)
    out: dict[str, object] = {}

    def work() -> None:
        try:
            out["x"] = context.run(loaded.sample, n, seed=seed, temperature=temperature, steps=steps, **given)
        except BaseException as exc:  # re-raised in the caller's thread
            out["error"] = exc

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    with typer.progressbar(length=count, label=f"sampling {count} steps", file=sys.stderr) as bar:
        shown = 0
        while thread.is_alive():
            thread.join(0.1)
            now = min(count, token.done // n)
            bar.update(now - shown)
            shown = now
    if "error" in out:
        raise out["error"]  # type: ignore[misc]
    return out["x"]  # type: ignore[return-value]


@app.command()
def sample(
    model: Annotated[str, typer.Argument(help="name or name:version")],
    n: Annotated[int, typer.Option("-n", min=1, max=100_000, help="number of samples")] = 16,
    seed: Annotated[int | None, typer.Option(help="random seed (same seed, same samples)")] = None,
    temperature: Annotated[float, typer.Option(min=0.0, max=10.0, help="scale of the noise")] = 1.0,
    out: Annotated[Path | None, typer.Option(help=".npy, .csv or .png (image data)")] = None,
    steps: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="sampling steps of a step sampler whose count may be chosen (1 to its max_steps; "
            "default: its own count)",
        ),
    ] = None,
    label: Annotated[
        int | None, typer.Option(help="a conditional model: the class of every sample (0..classes-1)")
    ] = None,
    labels: Annotated[
        Path | None, typer.Option(help="a conditional model: one class per sample (.npy/.csv; n of them)")
    ] = None,
    guidance: Annotated[
        float | None,
        typer.Option(help="classifier-free guidance scale (guided samplers): 0 unconditional, 1 conditional"),
    ] = None,
) -> None:
    """Draw samples from a stored model (ONNX Runtime); a conditional one of a chosen class."""
    try:
        loaded = load_model(model)
        y = _sample_labels(loaded, n, label, labels)
        loaded.check_guidance(guidance)
        x = _with_progress(loaded, n, seed, temperature, steps, y, guidance)
    except USER_ERRORS as exc:
        fail(_option_error(exc))
        return
    write_rows(loaded, x, out)
    if out is not None:
        typer.echo(f"wrote {n} samples from {loaded.stored.tag} to {out}")


@app.command()
def score(
    model: Annotated[str, typer.Argument(help="name or name:version")],
    file: Annotated[Path, typer.Option("--file", "-f", help=".npy, .npz or .csv rows")],
    kind: Annotated[str | None, typer.Option(help="log_prob, bound, classify or discriminator")] = None,
    seed: Annotated[int | None, typer.Option(help="seed for dequantisation noise")] = 0,
    k: Annotated[int, typer.Option("-k", "--k", min=1, max=10_000, help="noise draws per row (bound)")] = 1,
    estimate: Annotated[
        str | None,
        typer.Option(help="bound: average or importance_weighted (default: the tightest the model supports)"),
    ] = None,
    labels: Annotated[
        Path | None,
        typer.Option(
            help="a conditional model: each row's class (.npy/.csv), for log p(x|y); else the marginal"
        ),
    ] = None,
) -> None:
    """Score rows: log-likelihood or bound in nats and bits/dim (one line per row, then the mean).

    With -k K > 1 a bound is the importance-weighted bound over K noise draws where the model's
    draws are log importance weights (--estimate importance_weighted), else their average. A
    conditional model scores log p(x|y) with --labels, else the marginal; --kind classify prints
    each row's most probable class and its posterior probability.
    """
    from registry.datasets.files import read_labels
    from registry.runtime.scoring import score as score_rows

    try:
        loaded = load_model(model)
        x = read_array(file)
        y = None if labels is None else read_labels(labels, "--labels", len(x), file)
        result = score_rows(loaded, x, kind, k=k, seed=seed, what=str(file), estimate=estimate, labels=y)
    except USER_ERRORS as exc:
        fail(_option_error(exc))
        return
    if result.kind == "classify":
        assert result.labels is not None
        for c, p in zip(result.labels, result.scores, strict=True):
            typer.echo(f"{c}\t{p:.6f}")
        typer.echo(
            f"classified {result.rows} rows by Bayes' rule from {result.source}; mean posterior of the "
            f"chosen class {result.scores.mean():.4f}",
            err=True,
        )
        return
    bpd = result.bits_per_dim
    for i, s in enumerate(result.scores):
        typer.echo(f"{s:.6f}" + (f"\t{bpd[i]:.6f}" if bpd is not None else ""))
    label = result.kind
    if result.kind == "bound" and k > 1:
        label = f"{result.estimate.replace('_', '-')} bound (k={k})"
    typer.echo(_summary_line(label, result.summary()), err=True)
    if result.elbo is not None:
        typer.echo(_summary_line(f"average bound (k={k})", result.summary("elbo")), err=True)


def _option_error(exc: Exception) -> str:
    """The message of a refused request, naming the command-line option where one is at fault."""
    field = getattr(exc, "field", None)
    message = str(exc)
    if field in ("steps", "k", "estimate", "label", "labels", "guidance"):
        return f"--{field}: {message.removeprefix(f'{field}: ')}"
    return message


def _sample_labels(loaded, n: int, label: int | None, labels: Path | None) -> np.ndarray | None:
    """The class of each of n samples from --label or --labels (None: drawn from p(y))."""
    from registry.datasets.files import read_labels

    rows = None if labels is None else read_labels(labels, "--labels", n, f"-n {n}")
    return loaded.sample_labels(n, label, rows)


def _summary_line(label: str, s: dict[str, float | None]) -> str:
    """'mean LABEL m ± se nats = b ± se bits/dim' (± omitted for a single row)."""

    def value(mean: str, stderr: str) -> str:
        return f"{s[mean]:.6f}" + ("" if s[stderr] is None else f" ± {s[stderr]:.6f}")

    line = f"mean {label} {value('mean', 'stderr')}"
    if "mean_bits_per_dim" in s:
        line += f" nats = {value('mean_bits_per_dim', 'stderr_bits_per_dim')} bits/dim"
    return line
