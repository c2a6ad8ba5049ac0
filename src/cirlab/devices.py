"""Where the networks run and in what precision: ``--device``, ``$CIRLAB_DEVICE`` and ``--precision``.

A device is written ``auto`` (the default: CUDA where torch sees it, else the CPU), ``cpu``, ``cuda``
(the current CUDA device), ``cuda:N`` or ``mps`` (Apple silicon). One that this machine lacks is a
one-line error naming what it has.

Precision is ``auto``, ``fp32``, ``bf16`` or ``fp16``. ``auto`` is bf16 autocast on a CUDA device that
supports it, fp16 autocast with a gradient scaler on one that does not, and fp32 elsewhere, so the
CPU default computes exactly what it did before devices existed. ``bf16``/``fp16`` may also be asked
for on the CPU (torch's CPU autocast): that is how the mixed-precision path is tested on machines
without a GPU. Autocast covers the forward passes; weights, optimiser state, checkpoints, caches and
indexes stay float32 and on the CPU side of every file, so a model trained on a GPU loads anywhere.

On CUDA, batches go to the device from pinned memory (non-blocking copies) and images are decoded by
``loader_workers`` data-loader processes (``$CIRLAB_WORKERS``; on the CPU none, as before).
"""

from __future__ import annotations

import contextlib
import os

import torch

from cirlab.errors import CirlabError

DEVICES = "auto, cpu, cuda, cuda:N or mps"
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def available() -> list[str]:
    """The devices torch can use here, e.g. ``["cpu", "cuda:0", "cuda:1"]``."""
    out = ["cpu"] + [f"cuda:{n}" for n in range(torch.cuda.device_count())]
    if _mps():
        out.append("mps")
    return out


def _mps() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend and backend.is_available())


def resolve_device(name: str | torch.device | None = None) -> torch.device:
    """The device a name means (None: ``$CIRLAB_DEVICE``, else ``auto``); refused in one line where it is
    unknown or this machine lacks it."""
    if isinstance(name, torch.device):
        name = str(name)
    text = (name or os.environ.get("CIRLAB_DEVICE") or "auto").strip().lower()
    if text == "auto":
        text = "cuda" if torch.cuda.is_available() else "cpu"
    kind, _, number = text.partition(":")
    if kind not in ("cpu", "cuda", "mps") or (number and (kind != "cuda" or not number.isdigit())):
        raise CirlabError(f"unknown device {text!r}; use {DEVICES}")
    here = ", ".join(available())
    if kind == "cuda" and not torch.cuda.is_available():
        raise CirlabError(f"device {text!r} is not available: torch sees no CUDA GPU here (it has {here}); "
                          "use --device cpu or auto")
    if kind == "cuda" and number and int(number) >= torch.cuda.device_count():
        raise CirlabError(f"device {text!r} is not available: this machine has {here}")
    if kind == "mps" and not _mps():
        raise CirlabError(f"device 'mps' is not available: this machine has {here}; use --device cpu or auto")
    if kind == "cuda" and not number:  # one name per GPU ("cuda" is the current one), so one encoder per GPU
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device(text)


def resolve_precision(precision: str | None, device: torch.device) -> torch.dtype | None:
    """The autocast dtype (None: plain fp32) for ``precision`` (None: ``$CIRLAB_PRECISION``, else ``auto``) on
    ``device``."""
    name = (precision or os.environ.get("CIRLAB_PRECISION") or "auto").strip().lower()
    if name not in PRECISIONS:
        raise CirlabError(f"unknown precision {name!r}; use one of {', '.join(PRECISIONS)}")
    if name == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if name != "fp32" and device.type == "mps":
        raise CirlabError(f"precision {name} is not supported on mps here; use --precision fp32")
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def precision_name(dtype: torch.dtype | None) -> str:
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def autocast(device: torch.device, dtype: torch.dtype | None):
    """The autocast context of ``dtype`` on ``device`` (nothing for fp32)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(device: torch.device, dtype: torch.dtype | None) -> torch.amp.GradScaler:
    """A gradient scaler, enabled only for fp16 (whose small gradients underflow); a no-op otherwise."""
    return torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)


def module_device(module: torch.nn.Module) -> torch.device:
    """The device a module's weights are on (the CPU for a module without any)."""
    for p in module.parameters():
        return p.device
    return torch.device("cpu")


def tensor_to(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A tensor on ``device``: unchanged where it is already there; from the CPU to CUDA through pinned memory,
    without blocking."""
    if tensor.device == device or device.type == "cpu" and tensor.device.type == "cpu":
        return tensor
    pin = device.type == "cuda" and tensor.device.type == "cpu"
    return (tensor.pin_memory() if pin else tensor).to(device, non_blocking=pin)


def to_device(tensors: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """Named tensors on ``device`` (:func:`tensor_to`); the same dict on the CPU."""
    if device.type == "cpu":
        return tensors
    return {k: tensor_to(v, device) for k, v in tensors.items()}


def loader_workers(device: torch.device | None = None) -> int:
    """Data-loader processes that decode images: ``$CIRLAB_WORKERS``, else 4 (at most the cores) on CUDA, where
    decoding would starve the GPU, and 0 (decode in this process, as before) elsewhere."""
    value = os.environ.get("CIRLAB_WORKERS", "").strip()
    if value:
        if not value.isdigit():
            raise CirlabError(f"CIRLAB_WORKERS={value!r} must be a whole number of processes, 0 or more")
        return int(value)
    return min(4, os.cpu_count() or 1) if device is not None and device.type == "cuda" else 0
