"""The models this service serves, kept current with the store while it runs (a live registry).

``name`` means the newest *verified* version of that name; ``name:version`` a fixed one, opened
on demand. A new version is verified (sha256 of every artifact) and its ONNX Runtime sessions
opened off the request path, then swapped in with one assignment: a request that has already
resolved a model finishes on the sessions it started with. A version that fails its checks is
refused by name (``refused``) and the previous one keeps serving.

CUDA provider when ONNX Runtime has it (onnxruntime-gpu on a GPU machine), CPU otherwise.
Never imports torch.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from registry.runtime.models import LoadedModel
from registry.runtime.remote import pull_new
from registry.runtime.sessions import available_providers
from registry.runtime.store import (
    ModelNotFound,
    StoredModel,
    StoreError,
    get_model,
    list_models,
    store_signature,
)
from services.metrics import MODEL_INFO, MODEL_LOAD_SECONDS, MODEL_LOADS

log = logging.getLogger("genreg.runtime")
# Loading and unloading models over HTTP changes what a running service serves: off unless
# asked for (GENREG_MODEL_CONTROL=1), so the service stays read-only by default; the
# repository index (read-only) is always there.
MODEL_CONTROL = os.environ.get("GENREG_MODEL_CONTROL", "").strip() == "1"


def allow_list() -> list[str] | None:
    """GENREG_MODELS=a,b restricts the service to those names (default: the whole store)."""
    raw = os.environ.get("GENREG_MODELS", "").strip()
    return [m.strip() for m in raw.split(",") if m.strip()] or None


@dataclass(frozen=True)
class Entry:
    """One line of the repository index: a version, its state and, if refused, why."""

    name: str
    version: str
    state: str  # READY, UNAVAILABLE (refused or not newest) or UNLOADED
    reason: str = ""


class ModelCache:
    """Loaded models: the newest verified version of each name, and pinned versions on demand."""

    def __init__(
        self,
        providers: list[str] | None = None,
        threads: int = 0,
        on_load: Callable[[LoadedModel], None] | None = None,
        on_retire: Callable[[LoadedModel], None] | None = None,
    ) -> None:
        self.providers = providers or available_providers()
        self.threads = threads
        self.on_load = on_load
        self.on_retire = on_retire
        # Replaced whole on every change, never mutated: a reader sees the old dict or the new.
        self._served: dict[str, LoadedModel] = {}
        self._pinned: dict[str, LoadedModel] = {}
        self.refused: dict[str, str] = {}  # tag -> why it is not served
        self.unloaded: set[str] = set()  # names unloaded over HTTP, until loaded again
        self._signature: frozenset[tuple[str, str]] | None = None
        self._lock = threading.Lock()  # one loader at a time; readers never take it
        self.ready = False

    # --- reading (the request path: no lock, no I/O for a served name) ----------------------
    @property
    def loaded(self) -> dict[str, LoadedModel]:
        """Every open model by tag: the served ones and the pinned versions."""
        return {**self._pinned, **{m.stored.tag: m for m in self._served.values()}}

    @property
    def newest(self) -> dict[str, str]:
        return {name: m.stored.tag for name, m in self._served.items()}

    def models(self) -> list[LoadedModel]:
        served = self._served
        return [served[name] for name in sorted(served)]

    def resolve(self, ref: str) -> LoadedModel:
        """The loaded model for ``name`` or ``name:version`` (older versions load on demand)."""
        name, _, version = ref.partition(":")
        allowed = allow_list()
        if allowed is not None and name not in allowed:
            raise ModelNotFound(f"model {name!r} is not served here")
        current = self._served.get(name)
        if not version or version == "latest":
            if current is not None:
                return current
            if name in self.unloaded:
                raise ModelNotFound(
                    f"model {name!r} was unloaded; POST /v2/repository/models/{name}/load serves it again"
                )
            refused = [reason for tag, reason in self.refused.items() if tag.partition(":")[0] == name]
            if refused:
                raise StoreError(refused[-1])
            raise ModelNotFound(f"no model named {name!r} is served; see GET /models")
        if current is not None and current.stored.version == version:
            return current
        tag = f"{name}:{version}"
        if tag in self.refused:
            raise StoreError(self.refused[tag])
        pinned = self._pinned.get(tag)
        if pinned is not None:
            return pinned
        with self._lock:
            if tag not in self._pinned:
                loaded = self._open(get_model(tag, verify=False))
                self._pinned = {**self._pinned, tag: loaded}
        return self._pinned[tag]

    def index(self) -> list[Entry]:
        """What the store holds and what became of it here, newest first within each name."""
        served = {m.stored.tag for m in self._served.values()}
        allowed = allow_list()
        entries = []
        for stored in list_models():
            if allowed is not None and stored.name not in allowed:
                continue
            if stored.tag in served:
                entries.append(Entry(stored.name, stored.version, "READY"))
            elif stored.tag in self.refused:
                entries.append(Entry(stored.name, stored.version, "UNAVAILABLE", self.refused[stored.tag]))
            elif stored.name in self.unloaded:
                entries.append(Entry(stored.name, stored.version, "UNLOADED", "unloaded over HTTP"))
            elif stored.tag in self._pinned:
                entries.append(Entry(stored.name, stored.version, "READY", "pinned: not the newest"))
            else:
                entries.append(Entry(stored.name, stored.version, "UNAVAILABLE", "not the newest version"))
        return entries

    # --- changing what is served (start-up, the watcher, the repository API) -----------------
    def load_all(self) -> None:
        self.refresh()
        self.ready = True

    def changed(self) -> bool:
        """Whether the store's folders differ from those seen at the last refresh (cheap)."""
        return store_signature() != self._signature

    def refresh(self, names: set[str] | None = None) -> dict[str, str]:
        """Serve the newest verified version of every name (or of ``names``); {tag: outcome}."""
        with self._lock:
            signature = store_signature()
            by_name: dict[str, list[StoredModel]] = {}
            for stored in list_models():  # newest first within each name
                by_name.setdefault(stored.name, []).append(stored)
            allowed = allow_list()
            outcomes: dict[str, str] = {}
            for name, versions in by_name.items():
                if (allowed is not None and name not in allowed) or name in self.unloaded:
                    continue
                if names is not None and name not in names:
                    continue
                outcomes.update(self._advance(name, versions))
            # A name whose every version left the store is no longer served.
            for name in set(self._served) - set(by_name):
                if names is None or name in names:
                    self._swap(name, None)
                    outcomes[name] = "removed from the store"
            if names is None:
                self._signature = signature
            return outcomes

    def unload(self, name: str) -> bool:
        """Stop serving ``name`` (all versions) until :meth:`load`; False if it was not served."""
        with self._lock:
            was = name in self._served or any(t.partition(":")[0] == name for t in self._pinned)
            self.unloaded.add(name)
            self._swap(name, None)
            self._pinned = {t: m for t, m in self._pinned.items() if t.partition(":")[0] != name}
            return was

    def load(self, name: str) -> LoadedModel:
        """Serve ``name``'s newest verified version again; StoreError naming why if none is."""
        self.unloaded.discard(name)
        for stored in (s for s in self.refused if s.partition(":")[0] == name):
            log.info("retrying %s on an explicit load", stored)
        self.refused = {t: r for t, r in self.refused.items() if t.partition(":")[0] != name}
        self.refresh({name})
        loaded = self._served.get(name)
        if loaded is None:
            refused = [r for t, r in self.refused.items() if t.partition(":")[0] == name]
            if refused:
                raise StoreError(refused[0])
            raise ModelNotFound(f"no model named {name!r} in the store")
        return loaded

    def _advance(self, name: str, versions: list[StoredModel]) -> dict[str, str]:
        """Move ``name`` to its newest version that verifies, if that is newer than the served one."""
        current = self._served.get(name)
        for stored in versions:
            if current is not None and stored.version == current.stored.version:
                return {}
            if stored.tag in self.refused:
                continue
            try:
                loaded = self._open(get_model(stored.tag, verify=False))
            except Exception as exc:  # a checksum, or an ONNX file that verifies but does not load
                why = (
                    str(exc)
                    if isinstance(exc, StoreError)
                    else f"{stored.tag}: its graphs do not load: {exc}"
                )
                self.refused[stored.tag] = why
                MODEL_LOADS.labels(model=name, outcome="refused").inc()
                log.warning("not serving %s: %s", stored.tag, exc)
                continue
            self._swap(name, loaded)
            MODEL_LOADS.labels(model=name, outcome="loaded").inc()
            if current is not None:
                log.info("serving %s (was %s)", stored.tag, current.stored.tag)
            return {stored.tag: "loaded"}
        return {}

    def _swap(self, name: str, loaded: LoadedModel | None) -> None:
        old = self._served.get(name)
        served = {k: v for k, v in self._served.items() if k != name}
        if loaded is not None:
            served[name] = loaded
        self._served = served  # the one assignment requests see
        if old is not None and old is not loaded and self.on_retire is not None:
            self.on_retire(old)

    def _open(self, stored: StoredModel) -> LoadedModel:
        """Sessions for ``stored`` (not yet verified): its graphs are hashed from the very bytes
        the sessions open, every other artifact by verify; each file once."""
        start = time.perf_counter()
        loaded = LoadedModel(stored, self.providers, self.threads)
        stored.verify(skip=frozenset(spec.file for spec in stored.graphs))
        # A version stored without its graphs' costs is measured now, off the request path.
        loaded.measure_costs()
        MODEL_LOAD_SECONDS.labels(model=stored.name).set(time.perf_counter() - start)
        if self.providers[0] != loaded.provider:
            # e.g. onnxruntime-gpu on a machine whose GPU or CUDA libraries do not answer
            log.warning("%s asked for %s but runs on %s", stored.tag, self.providers[0], loaded.provider)
        if self.on_load is not None:
            self.on_load(loaded)
        MODEL_INFO.labels(model=stored.name, version=stored.version, provider=loaded.provider).set(1)
        return loaded


class Watcher:
    """Polls the store every ``interval`` seconds and refreshes the cache when it changed.

    With ``remote`` (GENREG_MODELS_FROM, e.g. s3://bucket/prefix) it also pulls newly pushed
    versions into the local store every ``remote_interval`` seconds; the next scan serves them.
    """

    def __init__(
        self, cache: ModelCache, interval: float, remote: str | None = None, remote_interval: float = 10.0
    ) -> None:
        self.cache = cache
        self.interval = interval
        self.remote = remote
        self.remote_interval = remote_interval
        self._refused_remote: set[str] = set()
        self._next_pull = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="genreg-store-watcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                if self.remote and time.monotonic() >= self._next_pull:
                    self._next_pull = time.monotonic() + self.remote_interval
                    for tag in pull_new(self.remote, allow_list(), refused=self._refused_remote):
                        log.info("pulled %s from the remote store", tag)
                if self.cache.changed():
                    for tag, outcome in self.cache.refresh().items():
                        log.info("store changed: %s %s", tag, outcome)
            except Exception:  # a store that cannot be read now may be readable next time
                log.exception("refreshing from the store failed; retrying in %.1fs", self.interval)
