"""The command line: train, list, sample, score, with helpful errors and no tracebacks."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from registry.datasets import load_digits


def genreg(*args: str, check: bool = True, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "registry.cli", *args]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, env=None if env is None else {**os.environ, **env}
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"genreg {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def test_train_sample_score_roundtrip(tmp_path, bentoml_home):
    out = genreg("train", "gaussian", "--data", "digits", "--quiet", "--name", "cli-gauss")
    assert "saved cli-gauss:" in out.stdout and "bits/dim" in out.stdout
    # What the time after training went to, stage by stage (export used to take minutes).
    assert "after training export" in out.stdout and "parity" in out.stdout and "evaluate" in out.stdout
    listing = genreg("list").stdout
    assert "cli-gauss:" in listing and "gaussian" in listing

    grid = tmp_path / "grid.png"
    genreg("sample", "cli-gauss", "-n", "16", "--seed", "3", "--out", str(grid))
    assert grid.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    a, b = tmp_path / "a.npy", tmp_path / "b.npy"
    genreg("sample", "cli-gauss", "-n", "5", "--seed", "3", "--out", str(a))
    genreg("sample", "cli-gauss", "-n", "5", "--seed", "3", "--out", str(b))
    assert np.array_equal(np.load(a), np.load(b))

    rows = tmp_path / "rows.npy"
    np.save(rows, load_digits().test[:10])
    scored = genreg("score", "cli-gauss", "--file", str(rows))
    lines = scored.stdout.strip().splitlines()
    assert len(lines) == 10 and all(len(line.split("\t")) == 2 for line in lines)
    assert "bits/dim" in scored.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "nofamily", "--data", "digits"], "unknown family 'nofamily'; available:"),
        (["train", "flow", "--data", "digits", "-o", "colour=red"], "unknown option 'colour'"),
        (["train", "flow", "--data", "digits", "-o", "n_blocks=-3"], "invalid option: n_blocks"),
        (["train", "flow", "--data", "nodata"], "unknown dataset 'nodata'"),
        (["train", "categorical", "--data", "moons"], "categorical needs discrete data"),
        (
            ["train", "flow", "--data", "moons", "--conditional"],
            "'moons' has no labels; --conditional applies to",
        ),
        (["train", "flow", "--data", "digits", "--labels", "y.npy"], "--labels applies to user files"),
        (
            ["train", "gaussian", "--data", "digits", "--conditional"],
            "gaussian does not train conditionally (its graphs take no class label); conditional families: "
            "autoregressive, categorical",
        ),
        (["sample", "no-such-model"], "no model named 'no-such-model'"),
        (
            ["train", "flow", "--data", "digits", "--device", "tpu"],
            "--device: 'tpu' is not one of cpu, cuda, auto",
        ),
        (
            ["train", "flow", "--data", "digits", "--device", "cpu", "--precision", "fp16"],
            "--precision: 'fp16' is not one of auto, float32, bf16",
        ),
        (["train", "flow", "--data", "moons", "-o", "dequantization=variational"], "discrete data only"),
        (
            ["evaluate", "any-model", "--draws", "8", "--split", "train"],
            "--split, --draws applies only with --surgery",
        ),
    ],
)
def test_user_mistakes_get_one_line_errors(args, message):
    proc = genreg(*args, check=False)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cuda_is_refused_without_cuda_and_auto_falls_back_to_the_cpu(tmp_path, bentoml_home):
    # No CUDA device visible, on any machine (a lent GPU one too): the case CI has.
    hidden = {"CUDA_VISIBLE_DEVICES": ""}
    cmd = ("train", "categorical", "--data", "digits", "--device", "cuda", "--nproc", "2")
    proc = genreg(*cmd, check=False, env=hidden)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "--device cuda: this PyTorch" in proc.stderr and "--device cpu" in proc.stderr
    auto = (
        "train",
        "categorical",
        "--data",
        "digits",
        "--device",
        "auto",
        "--name",
        "auto-device",
        "--quiet",
    )
    genreg(*auto, env=hidden)
    from registry.runtime.store import get_model

    assert get_model("auto-device").meta["train"]["device"] == "cpu"


def test_unknown_option_lists_valid_ones():
    proc = genreg("train", "flow", "--data", "digits", "-o", "colour=red", check=False)
    assert "valid options:" in proc.stderr and "n_blocks" in proc.stderr and "alpha" in proc.stderr


def test_score_refuses_bad_rows(tmp_path):
    genreg("train", "categorical", "--data", "digits", "--quiet", "--name", "cli-cat")
    bad = tmp_path / "bad.npy"
    np.save(bad, np.full((2, 64), 20.0))
    proc = genreg("score", "cli-cat", "--file", str(bad), check=False)
    assert proc.returncode == 2 and "outside the data's range 0..16" in proc.stderr
    np.save(bad, np.zeros((2, 5)))
    proc = genreg("score", "cli-cat", "--file", str(bad), check=False)
    assert "each row must have 64 values" in proc.stderr


@pytest.mark.slow
def test_score_bound_with_k_draws_reports_both_bounds_with_standard_errors(tmp_path, trained):
    rows = tmp_path / "rows.npy"
    np.save(rows, load_digits().test[:50])
    proc = genreg("score", "flowvd-digits", "--file", str(rows), "--kind", "bound", "--k", "16")
    assert len(proc.stdout.strip().splitlines()) == 50
    iw, avg = proc.stderr.strip().splitlines()[-2:]
    assert iw.startswith("mean importance-weighted bound (k=16)") and "±" in iw and "bits/dim" in iw
    assert avg.startswith("mean average bound (k=16)") and "±" in avg
    # The importance-weighted bound is the larger (tighter) one.
    assert float(iw.split()[4]) >= float(avg.split()[4])


def test_draws_on_an_exact_score_are_an_error_as_over_http(tmp_path, trained):
    rows = tmp_path / "rows.npy"
    np.save(rows, load_digits().test[:3])
    proc = genreg("score", "categorical-digits", "--file", str(rows), "-k", "4", check=False)
    assert proc.returncode == 2 and proc.stdout == ""
    assert "k > 1 applies to kind 'bound' only, not 'log_prob'" in proc.stderr


def test_conditional_sample_score_and_classify(tmp_path, trained):
    """--label and --labels choose the class; --kind classify prints each row's class."""
    digits = load_digits(conditional=True)
    rows, labels = tmp_path / "rows.npy", tmp_path / "labels.npy"
    np.save(rows, digits.test[:20])
    np.save(labels, digits.labels["test"][:20])
    model = "categorical-digits-cond"
    out = tmp_path / "sevens.npy"
    genreg("sample", model, "-n", "4", "--label", "7", "--seed", "1", "--out", str(out))
    again = tmp_path / "again.npy"
    np.save(tmp_path / "sevens-labels.npy", np.full(4, 7))
    genreg(
        "sample",
        model,
        "-n",
        "4",
        "--labels",
        str(tmp_path / "sevens-labels.npy"),
        "--seed",
        "1",
        "--out",
        str(again),
    )
    np.testing.assert_array_equal(np.load(out), np.load(again))
    given = genreg("score", model, "--file", str(rows), "--labels", str(labels))
    marginal = genreg("score", model, "--file", str(rows))
    # log p(x|y) of the true class is above the marginal for a confident classifier's rows
    cond = np.array([float(line.split()[0]) for line in given.stdout.splitlines()])
    marg = np.array([float(line.split()[0]) for line in marginal.stdout.splitlines()])
    assert np.mean(cond > marg) > 0.7
    classified = genreg("score", model, "--file", str(rows), "--kind", "classify")
    predicted = np.array([int(line.split()[0]) for line in classified.stdout.splitlines()])
    assert np.mean(predicted == digits.labels["test"][:20]) > 0.7 and "Bayes' rule" in classified.stderr
    bad = genreg("sample", model, "--label", "10", check=False)
    assert bad.returncode == 2 and "--label: label 10" in bad.stderr


@pytest.mark.slow
def test_evaluate_prints_stored_metrics_and_elbo_surgery(trained):
    import json

    from registry.datasets import load_dataset
    from registry.pipeline.surgery import elbo_surgery
    from registry.runtime.models import LoadedModel

    plain = json.loads(genreg("evaluate", "gaussian-digits").stdout)
    assert plain == {"model": trained["gaussian-digits"].tag, "metrics": trained["gaussian-digits"].metrics}

    vae = trained["vae-digits"]
    args = ("evaluate", "vae-digits", "--surgery", "--split", "validation", "--draws", "2", "--seed", "5")
    out = json.loads(genreg(*args, "--json").stdout)
    validation = load_dataset("digits").validation
    # The same estimate in-process, on the split and with the draws and seed asked for.
    expected = elbo_surgery(LoadedModel(vae), validation, draws=2, seed=5)
    assert out["model"] == vae.tag and out["surgery"]["n"] == len(validation)
    assert out["surgery"].pop("penalty") == expected.pop("penalty") == "kl"
    assert out["surgery"] == pytest.approx(expected, rel=1e-9)
    # The table prints the same numbers, one per term.
    text = genreg(*args).stdout.splitlines()
    assert text[0].startswith(f"ELBO surgery of {vae.tag} on validation ({len(validation)} points, 2 draws")
    assert "beta 1 on kl" in text[0]
    table = {line.split()[0]: float(line.split()[1]) for line in text[1:9]}
    assert {"total_correlation", "dimension_kl", "elbo_beta"} <= set(table)
    for key, val in table.items():
        assert val == pytest.approx(expected[key], abs=1e-4), key

    proc = genreg("evaluate", "flow-digits", "--surgery", check=False)
    assert proc.returncode == 2 and "has no encoder graph" in proc.stderr


@pytest.mark.slow
def test_critic_stores_a_new_version_with_what_it_printed(train_model):
    from registry.runtime.models import LoadedModel
    from registry.runtime.store import get_model

    # One Gaussian blob against 8 separated modes: a critic tells them apart easily.
    base = train_model("gaussian", "8gaussians", name="cli-critic")
    out = genreg("critic", "cli-critic", "--steps", "200").stdout.strip()
    new = get_model("cli-critic")
    assert new.version != base.version and new.meta["parent"] == base.tag
    m = new.metrics["critic"]
    assert out == (
        f"saved {new.tag} (from {base.tag}): C2ST accuracy {m['c2st_accuracy']:.3f} "
        f"(p = {m['c2st_p_value']:.3g}), AUC {m['auc']:.3f}, JSD >= {m['jsd_lower_bound']:.4f} nats"
    )
    assert m["steps"] == 200 and m["c2st_accuracy"] > 0.6 and m["c2st_p_value"] < 1e-10
    assert LoadedModel(new).kinds == ["log_prob", "discriminator"]
    again = genreg("critic", "cli-critic", "--steps", "200", check=False)
    assert again.returncode == 2 and "already has a discriminator; pass --replace" in again.stderr


@pytest.mark.slow
def test_report_tabulates_each_model_on_the_data(trained, tmp_path):
    out = tmp_path / "report"
    proc = genreg("report", "--data", "digits", "--out", str(out))
    assert proc.stdout.strip() == f"wrote {out / 'report.md'} and {out / 'report.html'}"
    md = (out / "report.md").read_text().splitlines()
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ") for line in md if line.startswith("| ")}
    for name in ("flow-digits", "gaussian-digits", "gaussian-digits-critic", "vae-digits"):
        stored = trained[name]
        row = rows[stored.tag]
        test = stored.metrics["test"]
        assert row[1] == stored.family and row[2] == f"{test['bits_per_dim']:.3f}" and row[3] == test["kind"]
        assert row[4] == f"{test['two_sample']['c2st']['accuracy']:.3f}"
        assert row[9].strip(" |") == f"![](samples-{name}.png)"
        units = test.get("latent")  # active units of a VAE (of its latent dimensions)
        assert row[8] == (f"{units['active_units']}/{len(units['kl_per_dim'])}" if units else "none")
        assert (out / f"samples-{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The critic's figures appear only where there is a critic.
    critic = trained["gaussian-digits-critic"].metrics["critic"]
    assert rows[trained["gaussian-digits-critic"].tag][6] == f"{critic['c2st_accuracy']:.3f}"
    assert rows[trained["gaussian-digits"].tag][6] == "none"
    assert "flow-8gaussians" not in "\n".join(md)  # only models trained on digits
    svg = (out / "likelihood-vs-c2st.svg").read_text()
    plotted = [r for tag, r in rows.items() if tag != "model" and r[2] != "none" and r[4] != "none"]
    assert svg.count("<circle") == len(plotted) >= 4  # one point per model with both figures
    # Each VAE's per-dimension KL, largest first (genreg traverse's order)
    vae = trained["vae-digits"]
    kl = vae.metrics["test"]["latent"]["kl_per_dim"]
    line = next(x for x in md if x.startswith(f"- {vae.tag}: "))
    top = max(range(len(kl)), key=lambda i: kl[i])
    assert line.startswith(f"- {vae.tag}: z{top} {kl[top]:.3f}") and line.count(", z") == len(kl) - 1
    page = (out / "report.html").read_text()
    assert page.count("<tr>") == len(rows) and f"<td>{trained['flow-digits'].tag}</td>" in page


def test_sample_shows_a_step_sampler_s_progress_on_a_terminal(trained, tmp_path):
    """On a terminal, `genreg sample` draws a progress bar for a step sampler (its steps done,
    as a task's status counts them) and leaves stdout to the samples."""
    import os
    import pty

    out = tmp_path / "x.npy"
    cmd = [sys.executable, "-m", "registry.cli", "sample", "diffusion-digits", "-n", "64"]
    cmd += ["--steps", "400", "--seed", "1", "--out", str(out)]
    leader, follower = pty.openpty()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=follower)
    os.close(follower)
    shown = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the terminal closed with the process
            break
        if not chunk:
            break
        shown += chunk
    assert proc.wait(60) == 0, shown
    text = shown.decode(errors="replace")
    assert "sampling 400 steps" in text and "100%" in text, text
    assert np.load(out).shape == (64, 64)


@pytest.mark.slow
def test_latent_commands_write_grids_and_round_trip(trained, tmp_path):
    """encode then decode through the CLI is the flow's round trip; traverse and interpolate
    write their PNG grids (one row per dimension, one column per value)."""
    from PIL import Image

    x = load_digits().test[:6]
    rows = tmp_path / "rows.npy"
    np.save(rows, x)
    z, back = tmp_path / "z.npy", tmp_path / "back.npy"
    genreg("encode", "flow-digits", "-f", str(rows), "--out", str(z), "--seed", "2")
    genreg("decode", "flow-digits", "-f", str(z), "--out", str(back))
    u = np.load(back) - x  # decode(encode(x)) = x + u, u in [0, 1) (within float32 error)
    assert u.min() >= -1e-4 and u.max() < 1 + 1e-4 and u.std() > 0.1
    grid = tmp_path / "t.png"
    out = genreg("traverse", "vae-digits", "--out", str(grid), "--steps", "5", "--dims", "3").stdout
    order = [int(d) for d in out.split("(dimensions [")[1].split("]")[0].split(",")]
    kl = trained["vae-digits"].metrics["test"]["latent"]["kl_per_dim"]
    assert order == sorted(range(len(kl)), key=lambda i: -kl[i])[:3]
    # 8x8 images, 1-pixel padding, scaled 4x: 5 columns and 3 rows
    assert Image.open(grid).size == (4 * (5 * 9 + 1), 4 * (3 * 9 + 1))
    inter = tmp_path / "i.png"
    genreg("interpolate", "vae-digits", "--rows", str(rows), "--out", str(inter), "--steps", "4")
    assert Image.open(inter).size == (4 * (4 * 9 + 1), 4 * (1 * 9 + 1))
    refused = genreg("encode", "gaussian-digits", "-f", str(rows), check=False)
    assert refused.returncode == 2 and "cannot encode; it can:" in refused.stderr
