"""Writing files so that a reader never sees half of one: write beside the target, then rename."""

from __future__ import annotations

import os
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
