"""Writing files so that a reader never sees half of one: write beside the target, then rename."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch


def atomic_torch_save(obj, path: str | Path) -> Path:
    """``torch.save`` to a temporary name in the same folder (unique per process), then rename over ``path``.
    Tensors are saved from the CPU whatever device they are on, so every file cirlab writes loads anywhere."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(on_cpu(obj), tmp)
    os.replace(tmp, path)
    return path


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
