"""An index on disk: vectors, ids and metadata (parquet), the backend's state and a manifest.

Layout: ``DIR/CURRENT`` names the live version folder ``DIR/v-<n>``, which holds
``vectors.npy``, ``items.parquet`` (id, metadata as JSON), ``state-<name>.npy`` and
``manifest.json`` (format, cirlab version, backend spec, dimension, metric, count, model, and
each file's size and SHA-256).

The guarantees (see ``docs/index-on-disk.md``):

- **Atomic saves.** A save writes a whole new version folder, then replaces ``CURRENT``
  atomically (write a temporary file, rename): a save that dies midway leaves the previous
  version live.
- **Writes compose.** Every change is a load-modify-save under one exclusive lock on
  ``DIR/.lock`` (:func:`update_index`): the change is applied to the live version as it is
  *inside* the lock, so two writers (a server adding uploads, ``cirlab index add``) both keep
  their additions. Slow work (encoding images) happens before the lock is taken.
- **Readers are never pulled from under.** A reader pins the version ``CURRENT`` named and holds
  a shared lock on its manifest while it loads. A save keeps the last :data:`KEEP_VERSIONS`
  versions and removes an older one only when no reader holds it; a reader that lost the race
  anyway (its version went between reading ``CURRENT`` and locking) retries on the new one.
- **Integrity.** Loading checks each file's size against the manifest and the arrays' shapes
  against its count and dimension; :func:`verify_index` also checks every checksum. A damaged
  index is a one-line error that names the damaged file.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cirlab import __version__
from cirlab.errors import CirlabError, InUse
from cirlab.files import atomic_write_text
from cirlab.index.base import BaseIndex, build_index

log = logging.getLogger("cirlab")

FORMAT = "cirlab-index"
FORMAT_VERSION = 1
KEEP_VERSIONS = 3  # the live version and the two before it stay for readers still loading them
_LOAD_ATTEMPTS = 5


class DamagedIndex(CirlabError):
    """A file of the live version is missing, of the wrong size or checksum, or unreadable."""


@contextmanager
def _writer_lock(folder: Path) -> Iterator[None]:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def save_index(index: BaseIndex, folder: str | Path, model: dict | None = None) -> Path:
    """Write ``index`` as the new live version of ``folder``, whatever is there (``index build``).

    To change an existing index, use :func:`update_index`: this one replaces the live version with
    ``index`` as it is, so rows another writer added since ``index`` was loaded would be lost."""
    folder = Path(folder)
    with _writer_lock(folder):
        return _save_locked(index, folder, model)


@contextmanager
def update_index(folder: str | Path, dim: int | None = None, model: dict | None = None,
                 held: BaseIndex | None = None) -> Iterator[BaseIndex]:
    """A load-modify-save under the writer lock: yields the live version, saves it when the block ends.

    ``held``: an index this process already has in memory (a server's); it is used as is when it is
    still the live version, else the live version is loaded. An exception in the block saves nothing
    (and ``held`` may then hold half a change: reload it). The manifest's model record is kept."""
    folder = Path(folder)
    with _writer_lock(folder):
        manifest, version = read_manifest(folder)
        if held is not None and held.version == version.name:
            index = held
        else:
            index, manifest = _load_version(folder, version, manifest, dim, model)
        yield index
        _save_locked(index, folder, manifest.get("model"))


def live_version(folder: str | Path) -> str | None:
    """The name of the live version folder (``v-<n>``), or None where there is no index."""
    try:
        return (Path(folder) / "CURRENT").read_text().strip() or None
    except OSError:
        return None


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _save_locked(index: BaseIndex, folder: Path, model: dict | None) -> Path:
    versions = _versions(folder)
    version = folder / f"v-{max(versions, default=0) + 1}"
    for stale in folder.glob(".v-*.tmp"):  # left by a save that died midway; never live
        shutil.rmtree(stale, ignore_errors=True)
    work = folder / f".{version.name}.{os.getpid()}.tmp"
    work.mkdir()
    np.save(work / "vectors.npy", np.asarray(index.vectors, dtype=np.float32))
    pq.write_table(pa.table({"id": index.ids, "metadata": [json.dumps(m, ensure_ascii=False) for m in index.metadata]}),
                   work / "items.parquet")
    for name, arr in index.state().items():
        np.save(work / f"state-{name}.npy", np.asarray(arr))
    files = {p.name: {"bytes": p.stat().st_size, "sha256": _digest(p)} for p in sorted(work.iterdir())}
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "cirlab_version": __version__,
                "backend": index.spec, "dim": index.dim, "metric": "euclidean" if index.name == "knn" else "cosine",
                "count": len(index), "model": model or {}, "files": files}
    atomic_write_text(work / "manifest.json", json.dumps(manifest, indent=1))
    os.replace(work, version)
    atomic_write_text(folder / "CURRENT", version.name)  # the commit point
    index.version = version.name
    _prune(folder, version)
    return version


def _versions(folder: Path) -> list[int]:
    return [int(p.name[2:]) for p in folder.glob("v-*") if p.name[2:].isdigit()]


def _prune(folder: Path, live: Path) -> None:
    """Remove versions older than the last ``KEEP_VERSIONS`` that no reader is loading."""
    newest_first = sorted(_versions(folder), reverse=True)
    for n in newest_first[KEEP_VERSIONS:]:
        old = folder / f"v-{n}"
        if old == live:
            continue
        try:
            with open(old / "manifest.json", "rb") as f:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)  # fails while a reader holds its shared lock
                shutil.rmtree(old, ignore_errors=True)
        except BlockingIOError:
            continue  # a reader is loading it: the next save removes it
        except FileNotFoundError:
            shutil.rmtree(old, ignore_errors=True)  # a version without a manifest is debris


def _parse_manifest(folder: Path, version: Path, text: str) -> dict:
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError:
        raise DamagedIndex(f"{folder}: {version.name}/manifest.json is not valid JSON; "
                           "restore the index or rebuild it with 'cirlab index build'") from None
    if not isinstance(manifest, dict):
        raise DamagedIndex(f"{folder}: {version.name}/manifest.json holds a JSON {type(manifest).__name__}, not the "
                           "manifest object; restore the index or rebuild it with 'cirlab index build'")
    if manifest.get("format") != FORMAT:
        raise CirlabError(f"{folder} is not a cirlab index ({version.name}/manifest.json is not a cirlab manifest)")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise CirlabError(f"{folder} was written by cirlab {manifest.get('cirlab_version')} (index format "
                          f"{manifest.get('format_version')}); this cirlab reads format {FORMAT_VERSION}: rebuild it")
    for key, kind in (("backend", str), ("dim", int), ("count", int)):
        if not isinstance(manifest.get(key), kind) or isinstance(manifest.get(key), bool):
            raise DamagedIndex(f"{folder}: {version.name}/manifest.json has no valid {key!r}; rebuild the index")
    if not isinstance(manifest.get("model", {}), dict) or not isinstance(manifest.get("files", {}), dict):
        raise DamagedIndex(f"{folder}: {version.name}/manifest.json is malformed; rebuild the index")
    return manifest


def read_manifest(folder: str | Path, dim: int | None = None, model: dict | None = None,
                  adding: bool = False) -> tuple[dict, Path]:
    """The live version's manifest and folder (a one-line error for a folder that is not an index);
    with ``dim`` / ``model``, refuse an index built for others. ``adding``: vectors of ``model`` are to be added, so
    image vectors of another precision are refused (:func:`check_same_vectors`) where a search is only warned."""
    folder = Path(folder)
    name = live_version(folder)
    if name is None:
        raise CirlabError(f"{folder} is not a cirlab index (no CURRENT file); build one with 'cirlab index build'")
    version = folder / name
    if os.sep in name or not name.startswith("v-"):
        raise DamagedIndex(f"{folder}: CURRENT names {name!r}, not a version folder; restore the index or rebuild it")
    try:
        text = (version / "manifest.json").read_text()
    except FileNotFoundError:
        raise DamagedIndex(f"{folder}: {name}/manifest.json is missing; restore the index or rebuild it") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DamagedIndex(f"{folder}: {name}/manifest.json is unreadable ({type(e).__name__}); rebuild the index") from None
    manifest = _parse_manifest(folder, version, text)
    _check_compatible(folder, manifest, dim, model, adding)
    return manifest, version


def load_index(folder: str | Path, dim: int | None = None, model: dict | None = None) -> tuple[BaseIndex, dict]:
    """Load the live version; with ``dim`` / ``model`` given, refuse an index built for others.

    The version is pinned while it loads (a shared lock on its manifest), so a concurrent save cannot
    remove it; where it went before the lock was taken, the new live version is loaded instead."""
    folder = Path(folder)
    for attempt in range(_LOAD_ATTEMPTS):
        manifest, version = read_manifest(folder)
        try:
            return _load_version(folder, version, manifest, dim, model)
        except DamagedIndex:
            if live_version(folder) == version.name or attempt == _LOAD_ATTEMPTS - 1:
                raise  # the live version itself is damaged, not replaced while we read it
    raise AssertionError("unreachable")


def _load_version(folder: Path, version: Path, manifest: dict, dim: int | None, model: dict | None
                  ) -> tuple[BaseIndex, dict]:
    try:
        pin = open(version / "manifest.json", "rb")
    except FileNotFoundError:
        raise DamagedIndex(f"{folder}: {version.name}/manifest.json is missing; restore the index or rebuild it") from None
    with pin:
        fcntl.flock(pin, fcntl.LOCK_SH)  # held while loading: a save does not remove a pinned version
        manifest = _parse_manifest(folder, version, pin.read().decode("utf-8", "replace"))
        _check_compatible(folder, manifest, dim, model)
        _check_sizes(folder, version, manifest)
        index = _read_files(folder, version, manifest)
    return index, manifest


def _check_compatible(folder: Path, manifest: dict, dim: int | None, model: dict | None, adding: bool = False) -> None:
    if dim is not None and manifest["dim"] != dim:
        raise CirlabError(f"{folder} holds {manifest['dim']}-d vectors but the model makes {dim}-d ones: "
                          "search it with the model it was built with, or rebuild it")
    if model:
        built = manifest.get("model") or {}
        for key in ("fusion", "image_encoder", "text_encoder"):
            if built.get(key) and model.get(key) and built[key] != model[key]:
                raise CirlabError(f"{folder} was built with {key} {built[key]}, not {model[key]}: "
                                  "pass the model it was built with (--model) or rebuild the index")
        if adding:  # one index holds one kind of vectors: refused here, before the warning a search gets
            check_same_vectors(folder, manifest, model)
        held, made = vector_kinds(manifest, model)
        if held != made and (str(folder), made) not in _said:
            _said.add((str(folder), made))
            log.warning(f"{folder} holds {held} image vectors and this model encodes images in {made}: it searches, "
                        f"but a query by a gallery image's id is encoded again in {made}, and adding images is "
                        "refused; build the index in the precision you serve")


_said: set[tuple[str, str]] = set()


def vector_kinds(manifest: dict, model: dict) -> tuple[str, str]:
    """The precision of an index's image vectors and of the vectors ``model`` (a pipeline's identity) makes; ``fp32``
    where either does not say (an index written before it was recorded)."""
    return (manifest.get("model") or {}).get("image_vectors", "fp32"), model.get("image_vectors", "fp32")


def check_same_vectors(folder: str | Path, manifest: dict, model: dict) -> None:
    """Refuse, in one line, adding vectors of another precision than the index holds: one index, one kind."""
    held, made = vector_kinds(manifest, model)
    if held != made:
        raise CirlabError(f"{folder} holds {held} image vectors but this run encodes images in {made}: add with "
                          f"--encoder-precision {held} (one index holds one kind), or rebuild the index in {made}")


def _damaged(folder: Path, version: Path, name: str, what: str) -> DamagedIndex:
    return DamagedIndex(f"{folder}: {version.name}/{name} {what}; restore the index or rebuild it with 'cirlab index build'")


def _check_sizes(folder: Path, version: Path, manifest: dict) -> None:
    for name in ("vectors.npy", "items.parquet"):
        if not (version / name).is_file():
            raise _damaged(folder, version, name, "is missing")
    for name, info in manifest.get("files", {}).items():
        path = version / name
        if not path.is_file():
            raise _damaged(folder, version, name, "is missing")
        if path.stat().st_size != info.get("bytes"):
            raise _damaged(folder, version, name, f"has {path.stat().st_size:,} bytes, the manifest says {info.get('bytes'):,}")


def _read_files(folder: Path, version: Path, manifest: dict) -> BaseIndex:
    try:
        index = build_index(manifest["backend"], manifest["dim"])
    except CirlabError as e:
        raise DamagedIndex(f"{folder}: the manifest's backend {manifest['backend']!r} does not build ({e})") from None
    count, dim = manifest["count"], manifest["dim"]
    mmap = "r" if getattr(index, "raw_vectors_on_disk", False) else None  # compressed backends re-rank from disk
    try:
        vectors = np.load(version / "vectors.npy", mmap_mode=mmap, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise _damaged(folder, version, "vectors.npy", f"is unreadable ({type(e).__name__})") from None
    if vectors.shape != (count, dim) or vectors.dtype != np.float32:
        raise _damaged(folder, version, "vectors.npy", f"holds {vectors.dtype} {vectors.shape}, the manifest says "
                                                        f"float32 ({count}, {dim})")
    try:
        items = pq.read_table(version / "items.parquet").to_pydict()
        ids, metadata = [str(i) for i in items["id"]], [json.loads(m) for m in items["metadata"]]
    except (pa.ArrowException, OSError, KeyError, ValueError, TypeError) as e:
        raise _damaged(folder, version, "items.parquet", f"is unreadable ({type(e).__name__})") from None
    if len(ids) != count or not all(isinstance(m, dict) for m in metadata):
        raise _damaged(folder, version, "items.parquet", f"holds {len(ids)} items, the manifest says {count}")
    index.vectors, index.ids, index.metadata = vectors, ids, metadata
    index.row_of = {i: n for n, i in enumerate(ids)}
    state = {}
    for p in sorted(version.glob("state-*.npy")):
        try:
            state[p.name[6:-4]] = np.load(p, allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise _damaged(folder, version, p.name, f"is unreadable ({type(e).__name__})") from None
    try:
        index.load_state(state) if state else index._rebuild()
    except (ValueError, RuntimeError, KeyError, IndexError) as e:
        raise _damaged(folder, version, "state-*.npy", f"does not fit the vectors ({type(e).__name__})") from None
    index.version = version.name
    return index


@dataclass(frozen=True)
class Integrity:
    """What checking an index found: its problems (none: sound), or, its files sound, that its engine (a Qdrant Edge
    shard) is in use by another process, so it could not be opened to check it; exit codes 0, 1, 3."""

    problems: list[str]
    in_use: str | None = None

    @property
    def exit_code(self) -> int:
        return 1 if self.problems else 3 if self.in_use else 0

    def line(self) -> str:
        if self.problems:
            return "; ".join(self.problems)
        if self.in_use:
            return f"every file matches its size and checksum, but {self.in_use}"
        return "sound (every file matches its size and checksum)"


def verify_index(folder: str | Path) -> list[str]:
    """Every problem of the live version (empty: sound): files missing or of the wrong size or
    checksum, unreadable arrays, counts that disagree with the manifest. An index in use by another
    process (:class:`~cirlab.errors.InUse`, raised) is not damaged: see :func:`check_index`."""
    integrity = check_index(folder)
    if integrity.in_use:
        raise InUse(f"{folder}: {integrity.in_use}")
    return integrity.problems


def check_index(folder: str | Path) -> Integrity:
    """:func:`verify_index`'s checks, telling a damaged index from one whose engine another process holds."""
    folder = Path(folder)
    try:
        manifest, version = read_manifest(folder)
    except DamagedIndex as e:
        return Integrity([str(e)])
    problems = []
    files = manifest.get("files")
    if not files:
        problems.append(f"{folder}: {version.name}/manifest.json records no checksums (written by cirlab "
                        f"{manifest.get('cirlab_version')}); rebuild the index to get them")
    for name, info in (files or {}).items():
        path = version / name
        if not path.is_file():
            problems.append(str(_damaged(folder, version, name, "is missing")))
        elif path.stat().st_size != info.get("bytes"):
            problems.append(str(_damaged(folder, version, name, f"has {path.stat().st_size:,} bytes, the manifest "
                                                                  f"says {info.get('bytes'):,}")))
        elif _digest(path) != info.get("sha256"):
            problems.append(str(_damaged(folder, version, name, "does not match its checksum")))
    if not problems:
        try:
            _load_version(folder, version, manifest, None, None)
        except InUse as e:
            return Integrity([], f"it is in use by another process, so it was not opened ({e})")
        except CirlabError as e:
            problems.append(str(e))
    return Integrity(problems)


def describe_index(folder: str | Path) -> tuple[str, Integrity]:
    """``cirlab index info``: the live version's size, backend, model and integrity, as text; and what the
    integrity check found (:func:`check_index`)."""
    integrity = check_index(folder)
    try:
        manifest, version = read_manifest(folder)
    except DamagedIndex:
        return f"integrity  {integrity.line()}", integrity
    model = manifest.get("model", {})
    text = (f"vectors    {manifest['count']}\ndimension  {manifest['dim']}\nbackend    {manifest['backend']}\n"
            f"metric     {manifest.get('metric', '?')}\nmodel      {model.get('fusion', '?')}\n"
            f"encoders   {model.get('image_encoder', '?')} + {model.get('text_encoder', '?')}\n"
            f"gallery    {model.get('gallery', '?')}\nversion    {version.name} (cirlab {manifest.get('cirlab_version')})\n"
            f"integrity  {integrity.line()}")
    return text, integrity
