"""Writing files so that a reader never sees half of one: write beside the target, then rename."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Callable

import torch


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Every file cirlab writes goes through here: ``write(tmp)`` writes a temporary file beside ``path`` (unique
    per process, with the same suffix, so ``np.save`` adds none), which is then renamed over ``path``. A reader
    sees the old file or the new one, never half of one; a write that fails leaves no temporary file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """:func:`atomic_write` of a UTF-8 text."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_torch_save(obj, path: str | Path) -> Path:
    """``torch.save`` through :func:`atomic_write`. Tensors are saved from the CPU whatever device they are on, so
    every file cirlab writes loads anywhere."""
    return atomic_write(path, lambda tmp: torch.save(on_cpu(obj), tmp))


def on_cpu(obj):
    """``obj`` with every tensor inside its dicts, lists and tuples on the CPU (CPU tensors are kept as they are)."""
    if isinstance(obj, torch.Tensor):
        return obj if obj.device.type == "cpu" else obj.cpu()
    if isinstance(obj, dict):
        out = type(obj)((k, on_cpu(v)) for k, v in obj.items())  # dict, OrderedDict (a state_dict)
        if hasattr(obj, "_metadata"):  # a state_dict's module versions
            out._metadata = obj._metadata
        return out
    if isinstance(obj, (list, tuple)) and not hasattr(obj, "_fields"):
        return type(obj)(on_cpu(v) for v in obj)
    return obj


def load_weights(path: str | Path):
    """``torch.load`` of tensors only (no code runs); torch's warnings about foreign pickles are silenced,
    since callers turn any failure into their own one-line error."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.load(path, map_location="cpu", weights_only=True)
