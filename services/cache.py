"""ONNX Runtime session cache for the service: every stored model, loaded once at start-up.

CUDA provider when ONNX Runtime has it (onnxruntime-gpu on a GPU machine), CPU otherwise.
Never imports torch.
"""

from __future__ import annotations

import logging
import os
import threading
import time

from registry.runtime.models import LoadedModel
from registry.runtime.sessions import available_providers
from registry.runtime.store import ModelNotFound, StoreError, get_model, list_models
from services.metrics import MODEL_LOAD_SECONDS

log = logging.getLogger("genreg.runtime")


def allow_list() -> list[str] | None:
    """GENREG_MODELS=a,b restricts the service to those names (default: the whole store)."""
    raw = os.environ.get("GENREG_MODELS", "").strip()
    return [m.strip() for m in raw.split(",") if m.strip()] or None


class ModelCache:
    """Loaded models by tag; ``name`` resolves to the newest version stored at start-up."""

    def __init__(self, providers: list[str] | None = None, threads: int = 0) -> None:
        self.providers = providers or available_providers()
        self.threads = threads
        self.loaded: dict[str, LoadedModel] = {}
        self.newest: dict[str, str] = {}
        self.failed: dict[str, str] = {}  # tag -> why it is not served
        self._failed_names: dict[str, str] = {}
        self.ready = False
        self._lock = threading.Lock()

    def load_all(self) -> None:
        allowed = allow_list()
        for stored in list_models():  # newest first within each name
            if allowed is not None and stored.name not in allowed:
                continue
            if stored.name in self.newest or stored.name in self._failed_names:
                continue
            try:
                self._load(stored.tag)
                self.newest[stored.name] = stored.tag
            except StoreError as exc:
                # A corrupt entry is reported and skipped; the rest of the store is served.
                # Its name is not silently served from an older version: "name" means the
                # newest, and an older one stays reachable as name:version.
                self.failed[stored.tag] = str(exc)
                self._failed_names[stored.name] = str(exc)
                log.warning("not serving %s: %s", stored.tag, exc)
        self.ready = True

    def _load(self, tag: str) -> LoadedModel:
        start = time.perf_counter()
        loaded = LoadedModel(get_model(tag), self.providers, self.threads)
        MODEL_LOAD_SECONDS.labels(model=loaded.stored.name).set(time.perf_counter() - start)
        if self.providers[0] != loaded.provider:
            # e.g. onnxruntime-gpu on a machine whose GPU or CUDA libraries do not answer
            log.warning("%s asked for %s but runs on %s", tag, self.providers[0], loaded.provider)
        self.loaded[tag] = loaded
        return loaded

    def resolve(self, ref: str) -> LoadedModel:
        """The loaded model for ``name`` or ``name:version`` (older versions load on demand)."""
        name, _, version = ref.partition(":")
        allowed = allow_list()
        if allowed is not None and name not in allowed:
            raise ModelNotFound(f"model {name!r} is not served here")
        if not version or version == "latest":
            tag = self.newest.get(name)
            if tag is None and name in self._failed_names:
                raise StoreError(self._failed_names[name])
            if tag is None:
                raise ModelNotFound(f"no model named {name!r} is served; see GET /models")
            return self.loaded[tag]
        tag = f"{name}:{version}"
        if tag in self.loaded:
            return self.loaded[tag]
        with self._lock:
            if tag not in self.loaded:
                self._load(tag)
        return self.loaded[tag]

    def models(self) -> list[LoadedModel]:
        return [self.loaded[tag] for tag in sorted(self.newest.values())]
