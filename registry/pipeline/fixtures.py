"""Helpers for plugin authors' tests (a pytest plugin: genreg registers it under `pytest11`).

Fixtures:
- ``genreg_store``: a private, empty model store (BENTOML_HOME in a temporary folder).
- ``check_family``: ``check_family(FamilyClass, data_name_or_Dataset, **options)`` trains the
  family briefly, exports it, runs the same parity check as ``genreg train`` and stores it;
  it returns the StoredModel, so a test can go on to sample and score it with ONNX Runtime.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from registry.contract.family import TrainControl
from registry.contract.loading import validate_family
from registry.datasets import Dataset, load_dataset
from registry.runtime.store import StoredModel


@pytest.fixture()
def genreg_store(tmp_path, monkeypatch) -> Iterator[Any]:
    home = tmp_path / "bentoml-home"
    (home / "models").mkdir(parents=True)
    monkeypatch.setenv("BENTOML_HOME", str(home))  # for subprocesses, e.g. the `genreg` CLI
    try:
        from bentoml._internal.configuration.containers import BentoMLContainer
        from bentoml._internal.models import ModelStore
    except ImportError:  # pragma: no cover - only the environment variable is public
        yield home
        return
    # In this process BentoML resolves its store once and caches it (resetting an override
    # does not clear that cache), so the store itself is overridden here, and put back after:
    # the test sees an empty store, and the tests after it see theirs again.
    previous_home, previous_store = BentoMLContainer.bentoml_home.get(), BentoMLContainer.model_store.get()
    BentoMLContainer.bentoml_home.set(str(home))
    BentoMLContainer.model_store.set(ModelStore(str(home / "models")))
    try:
        yield home
    finally:
        BentoMLContainer.bentoml_home.set(previous_home)
        BentoMLContainer.model_store.set(previous_store)


@pytest.fixture()
def check_family(genreg_store) -> Callable[..., StoredModel]:
    from registry.pipeline.train import train_and_store

    def run(family: type, data: str | Dataset, *, epochs: int | None = 2, **options: Any) -> StoredModel:
        fam = validate_family(family)()
        dataset = load_dataset(data) if isinstance(data, str) else data
        return train_and_store(
            fam, dataset, fam.Config(**options), TrainControl(epochs=epochs, progress=False)
        )

    return run
