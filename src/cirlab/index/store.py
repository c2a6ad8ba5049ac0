"""An index on disk: vectors, ids and metadata (parquet), the backend's state and a manifest.

Layout: ``DIR/CURRENT`` names the live version folder ``DIR/v-<n>``, which holds
``vectors.npy``, ``items.parquet`` (id, metadata as JSON), ``state-<name>.npy`` and
``manifest.json`` (format, cirlab version, backend spec, dimension, metric, count, model).
A save writes a whole new version folder, then replaces ``CURRENT`` atomically (write a
temporary file, rename): a save that dies midway leaves the previous version loadable.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cirlab import __version__
from cirlab.errors import CirlabError
from cirlab.index.base import BaseIndex, build_index

FORMAT = "cirlab-index"
FORMAT_VERSION = 1


def save_index(index: BaseIndex, folder: str | Path, model: dict | None = None) -> Path:
    """Write ``index`` as a new version of ``folder`` and switch to it; older versions are removed.

    Writers take an exclusive lock on ``folder/.lock``: two processes saving at once (a server adding
    images while ``cirlab index add`` runs) take turns instead of interleaving versions."""
    import fcntl

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _save_locked(index, folder, model)


def _save_locked(index: BaseIndex, folder: Path, model: dict | None) -> Path:
    versions = [int(p.name[2:]) for p in folder.glob("v-*") if p.name[2:].isdigit()]
    version = folder / f"v-{max(versions, default=0) + 1}"
    for stale in folder.glob(".v-*.tmp"):  # left by a save that died midway; never live
        shutil.rmtree(stale, ignore_errors=True)
    work = folder / f".{version.name}.{os.getpid()}.tmp"
    work.mkdir()
    np.save(work / "vectors.npy", index.vectors)
    pq.write_table(pa.table({"id": index.ids, "metadata": [json.dumps(m, ensure_ascii=False) for m in index.metadata]}),
                   work / "items.parquet")
    for name, arr in index.state().items():
        np.save(work / f"state-{name}.npy", np.asarray(arr))
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "cirlab_version": __version__,
                "backend": index.spec, "dim": index.dim, "metric": "euclidean" if index.name == "knn" else "cosine",
                "count": len(index), "model": model or {}}
    (work / "manifest.json").write_text(json.dumps(manifest, indent=1))
    os.replace(work, version)
    pointer = folder / f".CURRENT.{os.getpid()}.tmp"
    pointer.write_text(version.name)
    os.replace(pointer, folder / "CURRENT")  # the commit point
    for old in folder.glob("v-*"):
        if old != version:
            shutil.rmtree(old, ignore_errors=True)
    return version


def read_manifest(folder: str | Path) -> tuple[dict, Path]:
    folder = Path(folder)
    current = folder / "CURRENT"
    if not current.is_file():
        raise CirlabError(f"{folder} is not a cirlab index (no CURRENT file); build one with 'cirlab index build'")
    version = folder / current.read_text().strip()
    try:
        manifest = json.loads((version / "manifest.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CirlabError(f"{folder}: the index manifest is unreadable ({type(e).__name__}); rebuild the index") from None
    if manifest.get("format") != FORMAT:
        raise CirlabError(f"{folder} is not a cirlab index")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise CirlabError(f"{folder} was written by cirlab {manifest.get('cirlab_version')} (index format "
                          f"{manifest.get('format_version')}); this cirlab reads format {FORMAT_VERSION}: rebuild it")
    return manifest, version


def load_index(folder: str | Path, dim: int | None = None, model: dict | None = None) -> tuple[BaseIndex, dict]:
    """Load the live version; with ``dim`` / ``model`` given, refuse an index built for others."""
    manifest, version = read_manifest(folder)
    if dim is not None and manifest["dim"] != dim:
        raise CirlabError(f"{folder} holds {manifest['dim']}-d vectors but the model makes {dim}-d ones: "
                          "search it with the model it was built with, or rebuild it")
    if model:
        built = manifest.get("model") or {}
        for key in ("fusion", "image_encoder", "text_encoder"):
            if built.get(key) and model.get(key) and built[key] != model[key]:
                raise CirlabError(f"{folder} was built with {key} {built[key]}, not {model[key]}: "
                                  "pass the model it was built with (--model) or rebuild the index")
    index = build_index(manifest["backend"], manifest["dim"])
    # backends that search their own compressed structure read raw rows only to re-rank: map them
    mmap = "r" if getattr(index, "raw_vectors_on_disk", False) else None
    index.vectors = np.load(version / "vectors.npy", mmap_mode=mmap)
    items = pq.read_table(version / "items.parquet").to_pydict()
    index.ids = list(items["id"])
    index.metadata = [json.loads(m) for m in items["metadata"]]
    index.row_of = {i: n for n, i in enumerate(index.ids)}
    state = {p.name[6:-4]: np.load(p) for p in version.glob("state-*.npy")}
    if state:
        index.load_state(state)
    else:
        index._rebuild()
    return index, manifest
