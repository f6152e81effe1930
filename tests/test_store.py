"""The model store: versions, metadata, checksums verified on load."""

from __future__ import annotations

import time

import numpy as np
import pytest

from registry.contract.family import TrainControl
from registry.contract.loading import get_plugins
from registry.datasets import load_dataset
from registry.pipeline.train import train_and_store
from registry.runtime import store
from registry.runtime.store import IntegrityError, ModelNotFound, get_model, list_models


def _gauss(name: str):
    fam = get_plugins().get("gaussian")
    return train_and_store(fam, load_dataset("moons"), fam.Config(), TrainControl(progress=False), name=name)


def test_each_save_is_a_new_version_with_metadata(bentoml_home):
    first = _gauss("store-test")
    time.sleep(1.1)  # BentoML orders versions by creation time, to the second
    second = _gauss("store-test")
    assert first.version != second.version
    assert get_model("store-test").version == second.version
    assert get_model(first.tag).version == first.version
    versions = [m.version for m in list_models() if m.name == "store-test"]
    assert versions == [second.version, first.version]
    meta = second.meta
    assert meta["family"] == "gaussian" and meta["data"]["name"] == "moons"
    assert len(meta["data"]["fingerprint"]) == 64
    assert {"python", "numpy", "onnxruntime", "bentoml"} <= set(meta["versions"])
    assert meta["train"]["seconds"] >= 0 and "created" in meta
    assert set(meta["checksums"]) >= {"sampler.onnx", "scorer.onnx", "genreg.json", "weights.npz"}
    assert "kl" in meta["metrics"]["test"]
    assert str(second.path).startswith(str(bentoml_home))


def test_modified_artifact_is_refused_naming_the_file():
    stored = _gauss("tamper-test")
    path = stored.file("scorer.onnx")
    path.chmod(0o644)
    with path.open("ab") as fh:
        fh.write(b"\0")
    with pytest.raises(IntegrityError, match=r"scorer\.onnx"):
        get_model("tamper-test")


def test_unknown_model_and_version(monkeypatch):
    with pytest.raises(ModelNotFound, match="no model named 'nope'"):
        get_model("nope")
    stored = _gauss("version-test")

    # An invented version is refused from the store's folders alone: BentoML's miss lists the
    # whole store (about 0.1 s a request on a test session's store, a cheap 404 that was not).
    def listing() -> None:
        raise AssertionError("the store was listed for an unknown version")

    monkeypatch.setattr(store, "list_models", listing)
    with pytest.raises(ModelNotFound, match=f"has no version 'zzz'; stored versions: {stored.version}"):
        get_model("version-test:zzz")
    assert get_model(stored.tag).version == stored.version


def test_weights_are_plain_npz():
    stored = _gauss("npz-test")
    with np.load(stored.file("weights.npz"), allow_pickle=False) as w:
        assert set(w.files) == {"mean", "std"}
