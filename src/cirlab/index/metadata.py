"""Per-image metadata for an index: read from a JSONL, CSV or Parquet file, or a data set's own
``images.jsonl``, and matched to the gallery's images.

A record is keyed by its ``id``, ``path`` or ``file`` column (the first present). It matches a
gallery image whose id equals the key, or whose file's path relative to the gallery, file name or
file stem does. Its other columns become the image's metadata, with a nested ``attributes`` object
flattened into it (EmojiEdit's ``family``, ``base``, ``colour``...). The web page and the API
show ``name`` (else ``caption``) as the image's name; filters match any column.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from cirlab.errors import CirlabError

KEYS = ("id", "path", "file")


def read_metadata(path: str | Path) -> dict[str, dict]:
    """A metadata file as ``{key: record}`` (JSONL, CSV or Parquet, by suffix)."""
    path = Path(path)
    if not path.is_file():
        raise CirlabError(f"metadata file {path} does not exist")
    suffix = path.suffix.lower()
    try:
        if suffix in (".jsonl", ".ndjson"):
            rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        elif suffix == ".csv":
            import csv

            with open(path, newline="", encoding="utf-8") as f:
                rows = [{k: v for k, v in r.items() if v not in (None, "")} for r in csv.DictReader(f)]
        elif suffix == ".parquet":
            import pyarrow.parquet as pq

            rows = pq.read_table(path).to_pylist()
        else:
            raise CirlabError(f"metadata file {path}: give a .jsonl, .csv or .parquet file")
    except (json.JSONDecodeError, UnicodeDecodeError, OSError, ValueError) as e:
        raise CirlabError(f"metadata file {path} is unreadable ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    out = {}
    for n, row in enumerate(rows):
        if not isinstance(row, dict):
            raise CirlabError(f"metadata file {path}: record {n + 1} is not an object")
        key = next((row[k] for k in KEYS if row.get(k) not in (None, "")), None)
        if key is None:
            raise CirlabError(f"metadata file {path}: record {n + 1} has no {', '.join(KEYS)} column to match images by")
        out[str(key)] = _flat(row)
    return out


def _flat(row: dict) -> dict:
    record = {k: v for k, v in row.items() if k not in ("attributes", "file")}
    for k, v in (row.get("attributes") or {}).items():
        record.setdefault(k, v)
    return record


def display_name(meta: dict) -> str:
    """The name an image's metadata gives it: ``name``, else ``caption``, else empty."""
    return str(meta.get("name") or meta.get("caption") or "")


def gallery_metadata(gallery: str | Path, file: str | Path | None = None) -> tuple[Path, dict[str, dict]] | None:
    """Where a gallery's records come from, and the records: ``file`` (``--metadata``) where given, else a data
    set's ``images.jsonl`` in the gallery folder or its parent (a data set's ``images/``); None where neither."""
    if file:
        return Path(file), read_metadata(file)
    for folder in (Path(gallery), Path(gallery).parent):
        if (folder / "images.jsonl").is_file():
            return folder / "images.jsonl", read_metadata(folder / "images.jsonl")
    return None


def attach(ids: Sequence[str], paths: Sequence[str | Path], records: dict[str, dict], root: str | Path | None
           ) -> list[dict]:
    """The record of each gallery image (an empty dict where none matches)."""
    root = Path(root).resolve() if root else None
    out = []
    for image_id, p in zip(ids, paths):
        p = Path(p).resolve()
        keys = [image_id, str(p), p.name, p.stem]
        if root and p.is_relative_to(root):
            keys.insert(1, p.relative_to(root).as_posix())
        record = next((records[k] for k in keys if k in records), {})
        out.append({k: v for k, v in record.items() if k not in ("id", "path")})
    return out
