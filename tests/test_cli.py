"""The command line: train, list, sample, score, with helpful errors and no tracebacks."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from registry.datasets import load_digits


def genreg(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "registry.cli", *args], capture_output=True, text=True)
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
        (["sample", "no-such-model"], "no model named 'no-such-model'"),
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
