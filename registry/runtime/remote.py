"""A shared model store in object storage (S3 or any fsspec URL): push, pull, list.

Layout under the URI: ``<name>/<version>.bentomodel`` (BentoML's own export of the version,
which carries genreg's manifest and per-file checksums) and ``<name>/<version>.json`` (the
version's summary and the archive's sha256). A pull downloads the archive, checks its sha256
(a truncated or replaced object is refused by name before anything is imported), imports it
with BentoML and then verifies every artifact against the manifest, removing the version
again if one fails. Credentials and the endpoint come from the usual AWS variables
(``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``, ...) or from
``storage_options``; they are never written to a log or to the store. Never imports torch.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from registry.runtime.store import (
    ModelNotFound,
    StoredModel,
    StoreError,
    get_model,
    list_models,
    sha256_file,
)

log = logging.getLogger("genreg.remote")
ARCHIVE = ".bentomodel"
INDEX = ".json"


class RemoteError(StoreError):
    """The remote store cannot give or take a model; the message names it and why."""


@dataclass(frozen=True)
class RemoteVersion:
    name: str
    version: str
    created: str
    sha256: str

    @property
    def tag(self) -> str:
        return f"{self.name}:{self.version}"


def _filesystem(uri: str, storage_options: dict[str, Any] | None = None) -> tuple[Any, str]:
    try:
        import fsspec
    except ImportError:  # pragma: no cover - fsspec comes with bentoml
        raise RemoteError("remote stores need fsspec") from None
    try:
        fs, root = fsspec.url_to_fs(uri, **(storage_options or {}))
    except ImportError as exc:
        raise RemoteError(f"{uri}: {exc} (for s3:// install genreg[s3], which adds s3fs)") from None
    return fs, root.rstrip("/")


def _redacted(uri: str) -> str:
    """The URI without any user:password@ part, for messages and logs."""
    scheme, sep, rest = uri.partition("://")
    return f"{scheme}{sep}{rest.rpartition('@')[2]}" if sep else uri


def remote_versions(uri: str, storage_options: dict[str, Any] | None = None) -> list[RemoteVersion]:
    """Every version pushed under ``uri``, newest first within each name."""
    fs, root = _filesystem(uri, storage_options)
    try:
        fs.invalidate_cache()
        entries = fs.glob(f"{root}/*/*{INDEX}")
    except FileNotFoundError:
        return []
    except Exception as exc:
        raise RemoteError(f"cannot list {_redacted(uri)}: {type(exc).__name__}: {exc}") from None
    found = []
    for path in entries:
        try:
            info = json.loads(fs.cat_file(path))
            found.append(
                RemoteVersion(info["name"], info["version"], info["created"], info["archive_sha256"])
            )
        except (ValueError, KeyError, OSError) as exc:
            log.warning("skipping %s: not a genreg index entry (%s)", path, exc)
    found.sort(key=lambda v: (v.name, v.created), reverse=True)
    found.sort(key=lambda v: v.name)
    return found


def push(ref: str, uri: str, storage_options: dict[str, Any] | None = None) -> RemoteVersion:
    """Upload the stored version ``ref`` (verified first) under ``uri``; its index entry."""
    import bentoml

    stored = get_model(ref)  # verifies every artifact: a damaged model is never pushed
    fs, root = _filesystem(uri, storage_options)
    with tempfile.TemporaryDirectory(prefix="genreg-push-") as tmp:
        archive = Path(tmp) / f"{stored.version}{ARCHIVE}"
        bentoml.models.export_model(stored.tag, str(archive))
        digest = sha256_file(archive)
        entry = RemoteVersion(stored.name, stored.version, str(stored.meta.get("created", "")), digest)
        index = {**_summary(stored), "archive_sha256": digest}
        base = f"{root}/{stored.name}/{stored.version}"
        try:
            fs.put_file(str(archive), base + ARCHIVE)
            # The index entry last: a reader that sees it finds the whole archive.
            fs.pipe_file(base + INDEX, json.dumps(index, sort_keys=True).encode())
        except Exception as exc:
            raise RemoteError(
                f"cannot push {stored.tag} to {_redacted(uri)}: {type(exc).__name__}: {exc}"
            ) from None
    return entry


def _summary(stored: StoredModel) -> dict[str, Any]:
    return {
        "name": stored.name,
        "version": stored.version,
        "family": stored.family,
        "created": str(stored.meta.get("created", "")),
        "checksums": stored.meta["checksums"],
    }


def resolve_remote(ref: str, uri: str, storage_options: dict[str, Any] | None = None) -> RemoteVersion:
    """``name`` (newest pushed) or ``name:version`` under ``uri``."""
    name, _, version = ref.partition(":")
    versions = [v for v in remote_versions(uri, storage_options) if v.name == name]
    if not versions:
        raise ModelNotFound(f"no model named {name!r} under {_redacted(uri)}")
    if not version or version == "latest":
        return versions[0]
    for v in versions:
        if v.version == version:
            return v
    raise ModelNotFound(
        f"{name!r} has no version {version!r} under {_redacted(uri)}; pushed: {', '.join(v.version for v in versions)}"
    )


def pull(ref: str, uri: str, storage_options: dict[str, Any] | None = None) -> StoredModel:
    """Download ``ref`` from ``uri`` into the local store, verified; a no-op if already there."""
    wanted = resolve_remote(ref, uri, storage_options)
    if any(m.tag == wanted.tag for m in list_models()):
        return get_model(wanted.tag)
    return _fetch(wanted, uri, storage_options)


def _fetch(wanted: RemoteVersion, uri: str, storage_options: dict[str, Any] | None) -> StoredModel:
    """Download, check and import one listed version (not yet in the local store)."""
    import bentoml
    from bentoml.exceptions import BentoMLException

    fs, root = _filesystem(uri, storage_options)
    with tempfile.TemporaryDirectory(prefix="genreg-pull-") as tmp:
        archive = Path(tmp) / f"{wanted.version}{ARCHIVE}"
        try:
            fs.get_file(f"{root}/{wanted.name}/{wanted.version}{ARCHIVE}", str(archive))
        except Exception as exc:
            raise RemoteError(
                f"cannot pull {wanted.tag} from {_redacted(uri)}: {type(exc).__name__}: {exc}"
            ) from None
        digest = sha256_file(archive)
        if digest != wanted.sha256:
            raise RemoteError(
                f"{wanted.tag}: the archive under {_redacted(uri)} does not match the sha256 recorded when "
                "it was pushed (truncated or replaced); refusing to import it"
            )
        try:
            bentoml.models.import_model(str(archive))
        except BentoMLException as exc:
            if "exist" not in str(exc).lower():  # another replica or worker imported it first
                raise RemoteError(f"cannot import {wanted.tag}: {exc}") from None
        except Exception as exc:  # an archive that was pushed broken: not a readable export
            raise RemoteError(
                f"{wanted.tag}: not a readable model archive ({type(exc).__name__}: {exc})"
            ) from None
    try:
        return get_model(wanted.tag)  # every artifact against the manifest's checksums
    except StoreError:
        bentoml.models.delete(wanted.tag)
        raise


def pull_new(
    uri: str,
    names: list[str] | None = None,
    storage_options: dict[str, Any] | None = None,
    refused: set[str] | None = None,
) -> list[str]:
    """Pull the newest pushed version of every name (or ``names``) not yet in the local store.

    Returns the tags pulled; a version that fails its checks is logged by name, added to
    ``refused`` (not tried again) and skipped, so one bad push does not stop the others.
    """
    refused = set() if refused is None else refused
    local = {m.tag for m in list_models()}
    newest: dict[str, RemoteVersion] = {}
    for v in remote_versions(uri, storage_options):
        if (names is None or v.name in names) and v.name not in newest:
            newest[v.name] = v
    pulled = []
    for v in newest.values():
        if v.tag in local or v.tag in refused:
            continue
        try:
            # The version as listed above: pull(tag) would list the bucket again for each one.
            _fetch(v, uri, storage_options)
            pulled.append(v.tag)
        except StoreError as exc:
            refused.add(v.tag)
            log.warning("not pulling %s: %s", v.tag, exc)
    return pulled
