"""The local cache of served versions: what an endpoint starts from when the registry cannot be
read.

Every version swapped in (promotion.serve.follower's `kept`) is kept on disk, and a small JSON
pointer per model and alias names it:

  <cache dir>/<registry>/<model>/versions/<version>/   the model directory (MLmodel, model files)
  <cache dir>/<registry>/<model>/<alias>.json           {"schema_version": 1, "model", "alias",
                                                        "version", "run_id", "path", "cached_at",
                                                        "previous_version"}

`<registry>` is a hash of the tracking URI without its credentials, so two registries never share
entries (a model of the same name on another server is another model); `<model>` and `<alias>`
are percent-encoded. The pointer is written whole (a temporary file, then `os.replace`), so a
reader sees the old pointer or the new one, never half of one. Per model, only the versions some
pointer names as current or previous are kept: older directories are deleted. A pointer that
cannot be read, or names a version whose directory is gone, is a warning and is ignored. Nothing
here holds a credential: pointers name versions and paths, never a URI.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Mapping
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

from promotion.registry.models import artifact_bytes
from promotion.serve.loading import Admit, warm_up
from promotion.serve.state import Fallback, Served

log = logging.getLogger("promotion.serving")

SCHEMA_VERSION = 1
STALE_TEMP_SECONDS = 3600.0  # a temporary copy older than this was left by a process that died


def default_cache_dir(environ: Mapping[str, str] = os.environ) -> Path:
    """$XDG_CACHE_HOME/promote/serve, else ~/.cache/promote/serve."""
    base = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "promote" / "serve"


def registry_key(tracking_uri: str) -> str:
    """A directory name for a registry: a hash of its URI, credentials and query removed."""
    parts = urlsplit(tracking_uri)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    bare = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
    return hashlib.sha256(bare.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class CacheEntry:
    """A cached version, as its pointer names it."""

    model: str
    alias: str
    version: str
    run_id: str | None
    path: Path
    cached_at: str


class ServeCache:
    """The cache of one registry under `root`."""

    def __init__(self, root: Path, tracking_uri: str) -> None:
        self.root = root
        self.base = root / registry_key(tracking_uri)

    def _model_dir(self, model: str) -> Path:
        return self.base / quote(model, safe="")

    def pointer(self, model: str, alias: str) -> Path:
        return self._model_dir(model) / f"{quote(alias, safe='')}.json"

    def _version_dir(self, model: str, version: str) -> Path:
        return self._model_dir(model) / "versions" / version

    def read(self, model: str, alias: str) -> CacheEntry | None:
        """The version cached for `model@alias`, or None (a bad pointer: with a warning)."""
        path = self.pointer(model, alias)
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("ignoring the cache pointer %s: %s", path, exc)
            return None
        why = _invalid(document, model, alias)
        if why is None:
            directory = self._version_dir(model, document["version"])
            if not (directory / "MLmodel").is_file():
                why = f"the directory of version {document['version']} is gone"
        if why is not None:
            log.warning("ignoring the cache pointer %s: %s", path, why)
            return None
        return CacheEntry(model, alias, document["version"], document.get("run_id") or None,
                          directory, str(document.get("cached_at", "")))

    def keep(self, model: str, alias: str, served: Served) -> CacheEntry:
        """Keep `served`'s model directory and point `model@alias` at it; prune the model."""
        if served.model_dir is None:
            raise ValueError(f"version {served.version} has no model directory to keep")
        target = self._version_dir(model, served.version)
        if not (target / "MLmodel").is_file():
            _copy_dir(Path(served.model_dir), target)
        previous = self.read(model, alias)
        entry = CacheEntry(model, alias, served.version, served.run_id, target,
                           datetime.now(UTC).isoformat(timespec="milliseconds"))
        _write_json(self.pointer(model, alias), {
            "schema_version": SCHEMA_VERSION, "model": model, "alias": alias,
            "version": entry.version, "run_id": entry.run_id, "path": str(target),
            "cached_at": entry.cached_at,
            "previous_version": previous.version if previous and previous.version !=
            entry.version else None})
        self.prune(model)
        return entry

    def prune(self, model: str) -> None:
        """Delete the versions of `model` no pointer names as current or previous."""
        directory = self._model_dir(model)
        keep: set[str] = set()
        for pointer in directory.glob("*.json"):
            with contextlib.suppress(OSError, ValueError):
                document = json.loads(pointer.read_text(encoding="utf-8"))
                if isinstance(document, dict):
                    keep.update(str(document.get(k)) for k in ("version", "previous_version"))
        now = time.time()
        for child in (directory / "versions").iterdir():
            stale = child.name.startswith(".tmp-") and \
                now - child.stat().st_mtime > STALE_TEMP_SECONDS
            if stale or (not child.name.startswith(".") and child.name not in keep):
                shutil.rmtree(child, ignore_errors=True)

    def loader(self, model: str, alias: str, admit: Admit | None = None) -> Fallback:
        """Load the version cached for `model@alias` (LookupError when there is none)."""

        def load() -> Served:
            import mlflow.pyfunc

            entry = self.read(model, alias)
            if entry is None:
                raise LookupError(f"no cached version of {model}@{alias} under {self.base}")
            started = time.monotonic()
            local = str(entry.path)
            footprint = artifact_bytes(entry.path)
            with admit(model, footprint) if admit is not None else nullcontext():
                pyfunc = mlflow.pyfunc.load_model(local)
                warm_up(pyfunc, local)
            # path=None: the follower never deletes a cached directory; pruning does.
            return Served(version=entry.version, model=pyfunc, loaded_at=time.time(),
                          load_seconds=time.monotonic() - started, run_id=entry.run_id,
                          input_schema=pyfunc.metadata.get_input_schema(), path=None,
                          model_dir=local, footprint=footprint, source="cache")

        return load


def _invalid(document: object, model: str, alias: str) -> str | None:
    """Why a pointer's content cannot be used, or None."""
    if not isinstance(document, dict):
        return "not a JSON object"
    if document.get("schema_version") != SCHEMA_VERSION:
        return f"schema_version is not {SCHEMA_VERSION}"
    if document.get("model") != model or document.get("alias") != alias:
        return f"it does not name {model}@{alias}"
    version = document.get("version")
    if not isinstance(version, str) or not version.isdigit():
        return "no version number"
    return None


def _link_or_copy(source: str, target: str) -> object:
    """A hard link (no second copy on disk) where the file system allows it, else a copy."""
    try:
        os.link(source, target)
        return target
    except OSError:
        return shutil.copy2(source, target)


def _copy_dir(source: Path, target: Path) -> None:
    """Put a copy of `source` at `target` whole: copied beside it, then renamed in one step."""
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temporary = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    try:
        shutil.copytree(source, temporary / "model", copy_function=_link_or_copy)
        shutil.rmtree(target, ignore_errors=True)  # an incomplete copy left behind
        try:
            os.replace(temporary / "model", target)
        except OSError:  # another endpoint sharing the cache put it there first
            if not (target / "MLmodel").is_file():
                raise
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def _write_json(path: Path, document: dict[str, object]) -> None:
    """Write `document` to `path` atomically: a temporary file beside it, then `os.replace`."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, temporary = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(document, out, indent=1)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
