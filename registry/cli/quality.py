"""`genreg evaluate`, `critic` and `report`: judging stored models beyond their likelihood."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from registry.cli.app import USER_ERRORS, app, fail
from registry.cli.output import load_model
from registry.datasets import load_dataset


@app.command()
def evaluate(
    model: Annotated[str, typer.Argument(help="name or name:version")],
    surgery: Annotated[bool, typer.Option(help="ELBO surgery (latent-variable models)")] = False,
    split: Annotated[
        str | None, typer.Option(help="train, validation or test (default test; surgery)")
    ] = None,
    draws: Annotated[
        int | None, typer.Option(min=1, max=256, help="posterior draws per point (surgery)")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="surgery's seed (default 0)")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Evaluate a stored model on its data: stored metrics, and ELBO surgery with --surgery."""
    from registry.pipeline.surgery import elbo_surgery

    # An option that would change nothing is an error, as an inapplicable field is over HTTP.
    given = [f"--{n}" for n, v in (("split", split), ("draws", draws), ("seed", seed)) if v is not None]
    if given and not surgery:
        fail(f"{', '.join(given)} applies only with --surgery")
        return
    split, draws, seed = split or "test", draws or 4, seed or 0

    try:
        loaded = load_model(model)
        result: dict[str, Any] = {"model": loaded.stored.tag, "metrics": loaded.stored.metrics}
        if surgery:
            if split not in ("train", "validation", "test"):
                fail(f"--split must be train, validation or test, not {split!r}")
            data = load_dataset(loaded.stored.data["name"])
            if data.fingerprint != loaded.stored.data["fingerprint"]:
                fail("the model's training data is not a built-in data set; surgery needs it")
            result["surgery"] = elbo_surgery(loaded, getattr(data, split), draws=draws, seed=seed)
    except USER_ERRORS as exc:
        fail(str(exc))
        return
    if as_json or not surgery:
        typer.echo(json.dumps(result, indent=2))
        return
    s = result["surgery"]
    typer.echo(
        f"ELBO surgery of {result['model']} on {split} ({s['n']} points, {s['draws']} draws, beta {s['beta']:g} on {s['penalty']}), nats:"
    )
    for key in (
        "reconstruction",
        "mutual_information",
        "marginal_kl",
        "total_correlation",
        "dimension_kl",
        "kl_posterior_prior",
        "elbo_beta",
        "sum_of_terms",
    ):
        typer.echo(f"  {key:<20} {s[key]:12.4f}")
    typer.echo(
        f"  terms - ELBO_beta    {s['sum_minus_elbo_beta']:12.4f}  (Monte-Carlo stderr {s['monte_carlo_stderr']:.4f};"
        f" I_q <= log N = {s['log_n']:.3f})"
    )


@app.command()
def critic(
    model: Annotated[str, typer.Argument(help="name or name:version")],
    steps: Annotated[int, typer.Option(min=10, max=100_000, help="classifier training steps")] = 2000,
    seed: Annotated[int, typer.Option()] = 0,
    replace: Annotated[bool, typer.Option(help="replace an existing discriminator")] = False,
) -> None:
    """Train a real-vs-sample classifier for a model and store it as a new version's discriminator."""
    from registry.pipeline.critic import attach_critic

    try:
        stored = attach_critic(model, steps=steps, seed=seed, replace=replace)
    except USER_ERRORS as exc:
        fail(str(exc))
        return
    m = stored.metrics["critic"]
    typer.echo(
        f"saved {stored.tag} (from {stored.meta['parent']}): C2ST accuracy {m['c2st_accuracy']:.3f} "
        f"(p = {m['c2st_p_value']:.3g}), AUC {m['auc']:.3f}, JSD >= {m['jsd_lower_bound']:.4f} nats"
    )


@app.command()
def report(
    data: Annotated[str, typer.Option("--data", "-d", help="data set name the models were trained on")],
    out: Annotated[Path, typer.Option(help="output folder")] = Path("report"),
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Table (markdown and HTML), sample grids and a likelihood-vs-C2ST plot for a data set's models."""
    from registry.pipeline.report import write_report

    try:
        path = write_report(data, out, seed=seed)
    except USER_ERRORS as exc:
        fail(str(exc))
        return
    typer.echo(f"wrote {path} and {out / 'report.html'}")
