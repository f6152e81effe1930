"""`genreg`: train, list, sample, score and serve generative models."""

from __future__ import annotations

import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from pydantic import ValidationError

from registry.data import BUILTIN_DATASETS, DataError, load_dataset, read_array
from registry.export import ExportError
from registry.inference import CapabilityError, bound_estimates
from registry.plugins import FamilyError, get_plugins
from registry.store import StoreError
from registry.units import bits_per_dim, score_summary

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
    device: Annotated[str, typer.Option(help="cpu, cuda or auto")] = "auto",
    quiet: Annotated[bool, typer.Option(help="no progress bar")] = False,
) -> None:
    """Train a family on data, export it to ONNX, check parity and store a new version."""
    from registry.family import TrainControl
    from registry.pipeline import default_name, train_and_store

    plugins = get_plugins()
    try:
        fam = plugins.get(family)
        config = parse_options(option or [], fam.Config)
        dataset = load_dataset(data, levels=levels, validation=validation)
        for note in dataset.notes:
            typer.echo(note, err=True)
        entry = plugins.families[family]
        typer.echo(
            f"training {family} on {dataset.name} ({len(dataset.train)} rows, dim {dataset.dim}"
            f"{f', {dataset.levels} levels' if dataset.levels else ''})",
            err=True,
        )
        stored = train_and_store(
            fam,
            dataset,
            config,
            TrainControl(
                seed=seed, epochs=epochs, time_budget=time_budget, device=device, progress=not quiet
            ),
            name=name or default_name(family, dataset.name),
            plugin={"name": entry.plugin, "distribution": entry.distribution},
        )
    except USER_ERRORS as exc:
        fail(str(exc))
        return
    test = stored.metrics.get("test", {})
    parts = [f"saved {stored.tag}"]
    if "bits_per_dim" in test:
        parts.append(f"test {test['kind']} {test['nats']:.3f} nats = {test['bits_per_dim']:.4f} bits/dim")
    if "kl" in test:
        parts.append(f"KL(data||model) {test['kl']:.4f} nats")
    parts.append("parity " + ", ".join(f"{k} {v:.2g}" for k, v in stored.meta["parity"].items()))
    typer.echo("; ".join(parts))


@app.command("list")
def list_cmd(as_json: Annotated[bool, typer.Option("--json", help="machine-readable")] = False) -> None:
    """List stored model versions, newest first."""
    from registry.store import list_models

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


def _loaded(model: str):
    from registry.inference import LoadedModel
    from registry.store import get_model

    return LoadedModel(get_model(model))


@app.command()
def sample(
    model: Annotated[str, typer.Argument(help="name or name:version")],
    n: Annotated[int, typer.Option("-n", min=1, max=100_000, help="number of samples")] = 16,
    seed: Annotated[int | None, typer.Option(help="random seed (same seed, same samples)")] = None,
    temperature: Annotated[float, typer.Option(min=0.0, max=10.0, help="scale of the noise")] = 1.0,
    out: Annotated[Path | None, typer.Option(help=".npy, .csv or .png (image data)")] = None,
) -> None:
    """Draw samples from a stored model (ONNX Runtime)."""
    try:
        loaded = _loaded(model)
        x = loaded.sample(n, seed=seed, temperature=temperature)
    except USER_ERRORS as exc:
        fail(str(exc))
        return
    if out is None:
        np.savetxt(sys.stdout, x, fmt="%.6g", delimiter=",")
        return
    suffix = out.suffix.lower()
    if suffix == ".npy":
        np.save(out, x)
    elif suffix == ".csv":
        np.savetxt(out, x, fmt="%.6g", delimiter=",")
    elif suffix == ".png":
        from registry.images import png_grid

        shape = loaded.stored.data.get("image_shape")
        if not shape:
            fail(f"{loaded.stored.tag} was not trained on images; write .npy or .csv instead")
        out.write_bytes(png_grid(x, tuple(shape), high=loaded.stored.data.get("high") or float(x.max())))
    else:
        fail(f"unsupported output {out.name!r}: use .npy, .csv or .png")
    typer.echo(f"wrote {n} samples from {loaded.stored.tag} to {out}")


@app.command()
def score(
    model: Annotated[str, typer.Argument(help="name or name:version")],
    file: Annotated[Path, typer.Option("--file", "-f", help=".npy, .npz or .csv rows")],
    kind: Annotated[str | None, typer.Option(help="log_prob, bound or discriminator")] = None,
    seed: Annotated[int | None, typer.Option(help="seed for dequantisation noise")] = 0,
    k: Annotated[int, typer.Option("-k", "--k", min=1, max=10_000, help="noise draws per row (bound)")] = 1,
) -> None:
    """Score rows: log-likelihood or bound in nats and bits/dim (one line per row, then the mean).

    With -k K > 1 a bound is the importance-weighted bound over K noise draws.
    """
    from registry.validation import check_input

    try:
        loaded = _loaded(model)
        x = check_input(read_array(file), loaded.stored.data, what=str(file))
        kind = kind or loaded.default_kind()
        elbo = None
        if kind == "bound":
            elbo, scores = bound_estimates(loaded.log_weights(x, seed, k))
            bpd = bits_per_dim(scores, loaded.dim)
        else:
            kind, scores, bpd = loaded.score(x, kind, seed=seed, k=k)
    except USER_ERRORS as exc:
        fail(str(exc))
        return
    for i, s in enumerate(scores):
        typer.echo(f"{s:.6f}" + (f"\t{bpd[i]:.6f}" if bpd is not None else ""))
    dim = loaded.dim if bpd is not None else None
    label = f"importance-weighted bound (k={k})" if elbo is not None and k > 1 else kind
    typer.echo(_summary_line(label, score_summary(scores, dim)), err=True)
    if elbo is not None and k > 1:
        typer.echo(_summary_line(f"average bound (k={k})", score_summary(elbo, dim)), err=True)


def _summary_line(label: str, s: dict[str, float | None]) -> str:
    """'mean LABEL m ± se nats = b ± se bits/dim' (± omitted for a single row)."""

    def value(mean: str, stderr: str) -> str:
        return f"{s[mean]:.6f}" + ("" if s[stderr] is None else f" ± {s[stderr]:.6f}")

    line = f"mean {label} {value('mean', 'stderr')}"
    if "mean_bits_per_dim" in s:
        line += f" nats = {value('mean_bits_per_dim', 'stderr_bits_per_dim')} bits/dim"
    return line


@app.command()
def evaluate(
    model: Annotated[str, typer.Argument(help="name or name:version")],
    surgery: Annotated[bool, typer.Option(help="ELBO surgery (latent-variable models)")] = False,
    split: Annotated[str, typer.Option(help="train, validation or test (built-in data)")] = "test",
    draws: Annotated[int, typer.Option(min=1, max=256, help="posterior draws per point")] = 4,
    seed: Annotated[int, typer.Option()] = 0,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Evaluate a stored model on its data: stored metrics, and ELBO surgery with --surgery."""
    from registry.evaluation import elbo_surgery
    from registry.inference import LoadedModel
    from registry.store import get_model

    try:
        loaded = LoadedModel(get_model(model))
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
        f"ELBO surgery of {result['model']} on {split} ({s['n']} points, {s['draws']} draws, beta {s['beta']:g}), nats:"
    )
    for key in (
        "reconstruction",
        "mutual_information",
        "marginal_kl",
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
    from registry.critic import attach_critic

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
    from registry.report import write_report

    try:
        path = write_report(data, out, seed=seed)
    except USER_ERRORS as exc:
        fail(str(exc))
        return
    typer.echo(f"wrote {path} and {out / 'report.html'}")


@app.command()
def plugins() -> None:
    """List model families, their capabilities and the distribution each came from."""
    reg = get_plugins()
    for name, entry in sorted(reg.families.items()):
        caps = ",".join(sorted(c.value for c in entry.family.capabilities))
        typer.echo(f"{name:<14} {caps:<30} {entry.distribution} ({entry.plugin})  {entry.family.description}")
    for err in reg.errors:
        typer.secho(
            f"failed: {err.plugin} ({err.distribution}): {err.error}", err=True, fg=typer.colors.YELLOW
        )


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="address to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 3000,
    workers: Annotated[int, typer.Option(min=1, max=64, help="worker processes")] = 1,
    models: Annotated[str | None, typer.Option(help="comma-separated allow-list (default: all)")] = None,
) -> None:
    """Serve the store's models over HTTP (BentoML + ONNX Runtime)."""
    import os

    env = dict(os.environ, GENREG_WORKERS=str(workers))
    if models:
        env["GENREG_MODELS"] = models
    env["BENTOML_HOME"] = str(_server_home(Path(env.get("BENTOML_HOME", "~/bentoml")).expanduser()))
    root = str(Path(__file__).resolve().parent.parent)
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
) -> None:
    """Build the Bento (`bentoml build`): service, serving modules, models, locked serving deps."""
    from registry.deploy import BuildError, BuildOptions, build_bento

    try:
        result = build_bento(BuildOptions(models=_model_list(models, no_models), gpu=gpu))
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
    port: Annotated[int, typer.Option(min=1, max=65535, help="port for --run (host network)")] = 3000,
) -> None:
    """Build the serving image from Debian packages with a private dockerd (root, Debian host)."""
    from registry.deploy import BuildError, BuildOptions, build_bento
    from registry.image import Container, ImageConfig, ImageError, docker_daemon, ensure_tools, make_image

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
            result = build_bento(BuildOptions(models=_model_list(models, no_models)))
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


def main() -> None:
    app()


if __name__ == "__main__":
    main()
