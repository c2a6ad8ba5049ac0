"""Writing files so that a reader never sees half of one: write beside the target, then rename."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch


def atomic_torch_save(obj, path: str | Path) -> Path:
    """``torch.save`` to a temporary name in the same folder (unique per process), then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)
    return path


def load_weights(path: str | Path):
    """``torch.load`` of tensors only (no code runs); torch's warnings about foreign pickles are silenced,
    since callers turn any failure into their own one-line error."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.load(path, map_location="cpu", weights_only=True)
