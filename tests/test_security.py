"""Security posture: a read-only API (no training, upload or plugin install), no pickle when serving."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Loading any of these runs code from the file: never on the serving path.
UNSAFE = re.compile(
    r"\bimport\s+(pickle|cPickle|dill|joblib|cloudpickle|torch)\b"
    r"|\bfrom\s+(pickle|dill|joblib|cloudpickle|torch)\b"
    r"|\b(pickle|dill|joblib|cloudpickle)\.loads?\b"
    r"|\btorch\.load\b|allow_pickle\s*=\s*True"
)
API = {
    "/sample",
    "/score",
    "/two_sample_test",
    "/encode",
    "/decode",
    "/models",
    "/livez",
    "/readyz",
    "/healthz",
    "/metrics",
}
# Tasks write their own state (a body and a result, which expire), never the store.
TASKS = {
    f"/{api}/{action}"
    for api in ("sample", "score", "two_sample_test")
    for action in ("submit", "status", "get", "cancel", "retry")
}
# The Open Inference Protocol's read-only routes: metadata, health and infer.
V2 = {"/v2", "/v2/health/live", "/v2/health/ready"} | {
    base + tail
    for base in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}")
    for tail in ("", "/ready", "/infer")
}


def serving_modules() -> list[Path]:
    """services/*.py and the registry modules the Bento ships (bentofile.yaml's include)."""
    include = re.findall(r'^\s*-\s*"([^"]+\.py)"', (ROOT / "bentofile.yaml").read_text(), re.M)
    files = sorted({p for pattern in include for p in ROOT.glob(pattern)})
    assert ROOT / "services" / "service.py" in files and ROOT / "registry" / "runtime" / "store.py" in files
    return files


def test_no_pickle_or_torch_load_on_the_serving_path():
    offenders = []
    for path in serving_modules():
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if UNSAFE.search(line):
                offenders.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_the_grep_would_catch_them():
    for bad in ("import pickle", "x = pickle.load(f)", "torch.load(p)", "np.load(p, allow_pickle=True)"):
        assert UNSAFE.search(bad), bad
    assert not UNSAFE.search("np.load(p, allow_pickle=False)")


@pytest.mark.slow
def test_published_api_has_no_write_endpoints(server):
    client, _ = server
    paths = set(client.get("/docs.json").json()["paths"])
    # The repository index is read-only; loading and unloading models is off by default.
    assert paths == API | TASKS | V2 | {"/v2/repository/index"}
    for path in ("/train", "/upload", "/plugins", "/install", "/models/upload"):
        assert client.post(path, content=b"{}").status_code in (404, 405), path
    for action in ("load", "unload"):
        resp = client.post(f"/v2/repository/models/gaussian-digits/{action}", content=b"{}")
        assert resp.status_code == 403 and "GENREG_MODEL_CONTROL=1" in resp.json()["error"], resp.text
    assert "gaussian-digits" in {m["name"] for m in client.get("/models").json()["models"]}
