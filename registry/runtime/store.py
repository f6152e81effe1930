"""Versioned model store on BentoML's model store (``BENTOML_HOME``), with checksums.

Each save is a new BentoML model version whose directory holds the ONNX graphs, the weights
(.npz, never pickle) and ``genreg.json``; the model's metadata carries the sha256 of every
artifact, and loading refuses an entry whose files do not match.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from registry.runtime.graphs import GraphSpec

MODULE = "genreg"  # BentoML's `module` field marks the store entries that are ours
MANIFEST = "genreg.json"


class StoreError(RuntimeError):
    """The store cannot give or take a model; the message says which and why."""


class ModelNotFound(StoreError):
    """No model (or no such version) of that name is stored."""


class IntegrityError(StoreError):
    """A stored artifact does not match the checksum recorded when it was saved."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class StoredModel:
    """A stored model version: where its files are and what they are."""

    name: str
    version: str
    path: Path
    meta: dict[str, Any]

    @property
    def tag(self) -> str:
        return f"{self.name}:{self.version}"

    @property
    def family(self) -> str:
        return self.meta["family"]

    @property
    def capabilities(self) -> list[str]:
        return list(self.meta["capabilities"])

    @property
    def data(self) -> dict[str, Any]:
        return self.meta["data"]

    @property
    def metrics(self) -> dict[str, Any]:
        return self.meta.get("metrics", {})

    @functools.cached_property
    def graphs(self) -> tuple[GraphSpec, ...]:
        # Parsed once: every scored or sampled request looks its graph up (pydantic validation
        # of every spec on each lookup was 6% of a batch-1 request's time in the server).
        return tuple(GraphSpec.model_validate(g) for g in self.meta["graphs"])

    def graph(self, role: str, kind: str | None = None) -> GraphSpec | None:
        for g in self.graphs:
            if g.role == role and (kind is None or g.kind == kind):
                return g
        return None

    def file(self, name: str) -> Path:
        return self.path / name

    def verify(self, skip: frozenset[str] = frozenset()) -> None:
        """Recompute every artifact's sha256 (but those in ``skip``, checked where they are
        read: :meth:`read_verified`); raise IntegrityError naming a mismatched file."""
        for name, expected in self.meta["checksums"].items():
            if name in skip:
                continue
            path = self.path / name
            if not path.is_file():
                raise IntegrityError(f"{self.tag}: artifact {name} is missing")
            if sha256_file(path) != expected:
                raise IntegrityError(
                    f"{self.tag}: artifact {name} does not match its recorded sha256; refusing to load"
                )

    def read_verified(self, name: str) -> bytes:
        """An artifact's bytes, checked against its recorded sha256 (an unsaved model has none)."""
        path = self.path / name
        if not path.is_file():
            raise IntegrityError(f"{self.tag}: artifact {name} is missing")
        data = path.read_bytes()
        expected = self.meta["checksums"].get(name)
        if expected is not None and hashlib.sha256(data).hexdigest() != expected:
            raise IntegrityError(
                f"{self.tag}: artifact {name} does not match its recorded sha256; refusing to load"
            )
        return data

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "tag": self.tag,
            "family": self.family,
            "capabilities": self.capabilities,
            "data": self.data,
            "metrics": self.metrics,
            "created": self.meta.get("created"),
        }


def _bentoml():
    import bentoml

    return bentoml


def _to_stored(model: Any) -> StoredModel:
    # BentoML's metadata takes no None values, so the manifest travels as one JSON string.
    info = model.info.metadata
    meta = {**json.loads(info["manifest"]), "checksums": dict(info["checksums"])}
    return StoredModel(model.tag.name, str(model.tag.version), Path(model.path), meta)


def save_model(name: str, artifact_dir: Path, meta: dict[str, Any]) -> StoredModel:
    """Store every file of ``artifact_dir`` as a new version of ``name``, with checksums."""
    bentoml = _bentoml()
    files = sorted(p for p in artifact_dir.iterdir() if p.is_file())
    if not files:
        raise StoreError(f"nothing to store in {artifact_dir}")
    manifest = json.dumps(meta, sort_keys=True, default=str)
    (artifact_dir / MANIFEST).write_text(json.dumps(json.loads(manifest), indent=2, sort_keys=True))
    files = sorted(p for p in artifact_dir.iterdir() if p.is_file())
    checksums = {p.name: sha256_file(p) for p in files}
    # BentoML writes the entry to a temporary folder and moves it into the store only when
    # the block exits cleanly, so a failure here leaves no half-written version behind.
    with bentoml.models.create(
        name,
        module=MODULE,
        labels={"family": str(meta["family"]), "data": str(meta["data"]["name"])},
        metadata={"manifest": manifest, "checksums": checksums},
    ) as model:
        for p in files:
            shutil.copy2(p, Path(model.path) / p.name)
    stored = get_model(str(model.tag))
    return stored


def _split_ref(ref: str) -> tuple[str, str | None]:
    name, _, version = ref.partition(":")
    return name, (version or None)


def get_model(ref: str, *, verify: bool = True) -> StoredModel:
    """A stored model by ``name`` (newest version) or ``name:version``."""
    bentoml = _bentoml()
    from bentoml.exceptions import BentoMLException, NotFound

    name, version = _split_ref(ref)
    if version and version != "latest" and version.lower() not in stored_versions(name):
        # Asked first of the file system: BentoML's own miss costs a store listing (about 0.1 s
        # on a test session's store), which made a 404 for an invented version a cheap way to
        # keep a worker busy.
        raise ModelNotFound(_not_found_message(name, version))
    try:
        model = bentoml.models.get(f"{name}:{version or 'latest'}")
    except NotFound:
        raise ModelNotFound(_not_found_message(name, version)) from None
    except BentoMLException as exc:  # e.g. an invalid tag
        raise ModelNotFound(f"no model {ref!r}: {exc}") from None
    if model.info.module != MODULE:
        raise ModelNotFound(f"{ref!r} is a BentoML model, but not a genreg model")
    stored = _to_stored(model)
    if verify:
        stored.verify()
    return stored


def _not_found_message(name: str, version: str | None) -> str:
    versions = stored_versions(name)
    if version and versions:
        return f"model {name!r} has no version {version!r}; stored versions: {', '.join(versions)}"
    return f"no model named {name!r} in the store"


def _store_root() -> Path:
    """The folder of the store BentoML uses now: the store object's own (tests and the plugin
    fixture swap the object, registry.pipeline.fixtures), else the configured folder."""
    from bentoml._internal.configuration.containers import BentoMLContainer

    path = getattr(BentoMLContainer.model_store.get(), "_path", None)
    return Path(path) if path is not None else Path(BentoMLContainer.model_store_dir.get())


def stored_versions(name: str) -> list[str]:
    """The versions stored under ``name``, newest first, from the file system alone (cheap)."""
    name = name.lower()
    if not name or name.startswith(".") or "/" in name or "\\" in name:
        return []
    try:
        folders = [e for e in os.scandir(_store_root() / name) if e.is_dir()]
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [e.name for e in sorted(folders, key=lambda e: e.stat().st_mtime, reverse=True)]


def store_signature() -> frozenset[tuple[str, str]]:
    """Every (name, version) folder in the store, read from the file system alone.

    A cheap question to ask every second or two: only when its answer changes does a watcher
    need the full listing (BentoML parses every version's model.yaml for that). BentoML moves a
    finished version into the store in one rename, so a listed folder is never half-written.
    """
    root = _store_root()
    found: set[tuple[str, str]] = set()
    try:
        names = [e for e in os.scandir(root) if e.is_dir()]
    except FileNotFoundError:
        return frozenset()
    for name in names:
        try:
            found.update((name.name, v.name) for v in os.scandir(name.path) if v.is_dir())
        except FileNotFoundError:  # removed between the two scans
            continue
    return frozenset(found)


def list_models() -> list[StoredModel]:
    """Every genreg model version in the store, newest first within each name."""
    bentoml = _bentoml()
    models = [m for m in bentoml.models.list() if m.info.module == MODULE]
    models.sort(key=lambda m: (m.tag.name, -m.info.creation_time.timestamp()))
    return [_to_stored(m) for m in models]
