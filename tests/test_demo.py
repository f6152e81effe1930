"""`make demo` itself, with tiny budgets: it answers while it trains, and serves every model."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import httpx
import pytest
from servers import free_port

from registry.packaging.demo import DEFAULT_MODELS

pytestmark = pytest.mark.slow
# The rows each model's data takes: digits are 8x8 images with levels 0..16, the toys 2-D.
ROW = {"digits": [[0, 1] * 32], "8gaussians": [[0.5, -1.0]]}


# Trained by the demo itself: the two baselines (served first) and one family that trains
# while the service already answers. The other demo models come from the session's store, as
# a second `make demo` reuses what is stored, so the test costs seconds, not minutes.
TRAINED_HERE = {"categorical-digits", "gaussian-digits", "categorical-digits-cond", "vae-digits"}


def test_the_demo_answers_before_training_ends_and_then_serves_every_model(tmp_path, trained, bentoml_home):
    port = free_port()
    home = tmp_path / "home"
    for model in DEFAULT_MODELS:
        if model.name not in TRAINED_HERE:
            shutil.copytree(bentoml_home / "models" / model.name, home / "models" / model.name)
    env = dict(os.environ, BENTOML_HOME=str(home), GENREG_POLL_SECONDS="0.5")
    cmd = [sys.executable, "-m", "registry.packaging.demo", "--epochs", "1", "--port", str(port)]
    start = time.monotonic()
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    base = f"http://127.0.0.1:{port}"
    lines: list[str] = []
    first_answer = None
    try:
        for line in proc.stdout:
            lines.append(line)
            if "already stored" in line:
                assert line.split(":")[0] not in TRAINED_HERE, line
            if line.startswith("ready (") and first_answer is None:
                # The first status line: the service is up while the families still train.
                assert "still training: vae-digits" in line, line
                resp = httpx.post(base + "/sample", json={"model": "categorical-digits", "n": 2, "seed": 0})
                assert resp.status_code == 200, resp.text
                first_answer = time.monotonic() - start
            if "all trained" in line:
                break
        assert first_answer is not None, "".join(lines[-30:])
        names = [m.name for m in DEFAULT_MODELS]
        served = {m["name"]: m for m in httpx.get(base + "/models", timeout=10).json()["models"]}
        assert sorted(served) == sorted(names)
        for model in DEFAULT_MODELS:
            name, data = model.name, model.data
            sample = httpx.post(base + "/sample", json={"model": name, "n": 3, "seed": 1}, timeout=30)
            assert sample.status_code == 200 and len(sample.json()["samples"]) == 3, sample.text
            scored = httpx.post(base + "/score", json={"model": name, "x": ROW[data]}, timeout=30)
            assert scored.status_code == 200, scored.text
            assert scored.json()["kind"] == served[name]["kinds"][0]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
    # The demo stops its service with itself, and wrote the sample grid.
    assert proc.returncode == 0
    with pytest.raises(httpx.TransportError):
        httpx.get(base + "/readyz", timeout=2)
    assert (tmp_path / "grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    print(f"demo: first answer after {first_answer:.1f}s")
