"""Where the networks run, what runs them and in what precision: a :class:`Placement`, resolved once per command
(``--device``, ``--runtime``, ``--precision``; the ``$CIRLAB_DEVICE``, ``$CIRLAB_RUNTIME`` and ``$CIRLAB_PRECISION``
defaults are read in :meth:`Placement.resolve` and nowhere else) and passed to ``Pipeline.load``, the encoder
builders, stage 1 and ``fit``.

A device is written ``auto`` (the default: CUDA where torch sees it, else the CPU), ``cpu``, ``cuda``
(the current CUDA device), ``cuda:N`` or ``mps`` (Apple silicon). One that this machine lacks is a
one-line error naming what it has.

Precision is ``auto``, ``fp32``, ``bf16`` or ``fp16``. ``auto`` is bf16 autocast on a CUDA device that
supports it, fp16 autocast with a gradient scaler on one that does not, and fp32 elsewhere, so the
CPU default computes in plain float32. ``bf16``/``fp16`` may also be asked
for on the CPU (torch's CPU autocast): that is how the mixed-precision path is tested on machines
without a GPU. Autocast covers the forward passes; weights, optimiser state, checkpoints, caches and
indexes stay float32 and on the CPU side of every file, so a model trained on a GPU loads anywhere.

On CUDA, batches go to the device from pinned memory (non-blocking copies) and images are decoded by
``loader_workers`` data-loader processes (``$CIRLAB_WORKERS``; on the CPU none).

A runtime (what runs the encoders' inference networks) is ``auto``, ``torch``, ``onnx`` or ``openvino``; see
:mod:`cirlab.encoders.runtime`. The encoders' own precision (``--encoder-precision``: ``auto``, ``fp32`` or
``bf16``) is apart from training's; see :mod:`cirlab.encoders.precision`.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
from dataclasses import dataclass

import torch

from cirlab.errors import CirlabError

log = logging.getLogger("cirlab")

DEVICES = "auto, cpu, cuda, cuda:N or mps"
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
ENCODER_PRECISIONS = ("auto", "fp32", "bf16", "int8")
RUNTIMES = ("auto", "torch", "onnx", "openvino")
_PACKAGE = {"onnx": "onnxruntime", "openvino": "openvino"}


@dataclass(frozen=True)
class Placement:
    """Where and how a command's networks run, resolved once.

    ``device``: a torch device this machine has. ``runtime``: what runs the encoders' inference networks
    (``torch``, ``onnx`` or ``openvino``; training always runs PyTorch). ``precision``: the autocast of
    training's forward passes (``auto``, ``fp32``, ``bf16`` or ``fp16``; :attr:`dtype`). ``encoding``: the
    precision the encoders' inference networks compute in (``auto``, ``fp32``, ``bf16`` or ``int8``; resolved per
    encoder by :func:`cirlab.encoders.precision.encoder_precision`, and part of their vectors' cache identity)."""

    device: torch.device
    runtime: str
    precision: str = "auto"
    encoding: str = "auto"

    @classmethod
    def resolve(cls, device: str | torch.device | None = None, runtime: str | None = None,
                precision: str | None = None, encoding: str | None = None) -> "Placement":
        """The placement these names mean; a name left None takes ``$CIRLAB_DEVICE``, ``$CIRLAB_RUNTIME``,
        ``$CIRLAB_PRECISION`` or ``$CIRLAB_ENCODER_PRECISION``, else ``auto``. A wrong one is refused now, in one
        line."""
        where = resolve_device(device or os.environ.get("CIRLAB_DEVICE"))
        how = resolve_runtime(runtime or os.environ.get("CIRLAB_RUNTIME"), where)
        precision = (precision or os.environ.get("CIRLAB_PRECISION") or "auto").strip().lower()
        resolve_precision(precision, where)
        encoding = (encoding or os.environ.get("CIRLAB_ENCODER_PRECISION") or "auto").strip().lower()
        check_encoding(encoding, how, where)
        return cls(where, how, precision, encoding)

    @property
    def dtype(self) -> torch.dtype | None:
        """The autocast dtype of training's forward passes here (None: plain fp32)."""
        return resolve_precision(self.precision, self.device)

    def __str__(self) -> str:
        return f"{self.device}/{self.runtime}/{self.precision}" + (f"/encoders {self.encoding}"
                                                                   if self.encoding != "auto" else "")


def placed(placement: Placement | None) -> Placement:
    """``placement``, or the defaults' one (:meth:`Placement.resolve` with no names) where it is None."""
    return placement if placement is not None else Placement.resolve()


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
    """The device a name means (None: ``auto``); refused in one line where it is unknown or this machine lacks
    it."""
    if isinstance(name, torch.device):
        name = str(name)
    text = (name or "auto").strip().lower()
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
    """The autocast dtype (None: plain fp32) for ``precision`` (None: ``auto``) on ``device``."""
    name = (precision or "auto").strip().lower()
    if name not in PRECISIONS:
        raise CirlabError(f"unknown precision {name!r}; use one of {', '.join(PRECISIONS)}")
    if name == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if name != "fp32" and device.type == "mps":
        raise CirlabError(f"precision {name} is not supported on mps here; use --precision fp32")
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def check_encoding(name: str, runtime: str, device: torch.device) -> None:
    """Refuse, in one line, an encoder precision that is unknown or that ``runtime`` on ``device`` cannot run."""
    if name not in ENCODER_PRECISIONS:
        raise CirlabError(f"unknown encoder precision {name!r}; use one of {', '.join(ENCODER_PRECISIONS)}")
    if name == "bf16" and runtime == "onnx":
        raise CirlabError("ONNX Runtime runs the encoders in fp32 here: for --encoder-precision bf16 use "
                          "--runtime torch or openvino")
    if name == "bf16" and device.type == "mps":
        raise CirlabError("encoder precision bf16 is not supported on mps here; use --encoder-precision fp32")
    if name == "int8" and (runtime != "onnx" or device.type != "cpu"):
        raise CirlabError("int8 encoders run under ONNX Runtime on the CPU: for --encoder-precision int8 use "
                          "--runtime onnx (or auto) and --device cpu")


def resolve_runtime(name: str | None, device: torch.device | None = None) -> str:
    """``auto``/None -> ``onnx`` where onnxruntime is installed, else ``torch`` (said once in the log);
    a named runtime whose package is missing is a one-line error naming the extra. On a ``device`` other than
    the CPU, ``auto`` is ``torch``; the exported runtimes run on the CPU only (a named one is refused there)."""
    name = (name or "auto").strip().lower()
    if name not in RUNTIMES:
        raise CirlabError(f"unknown runtime {name!r}; use one of {', '.join(RUNTIMES)}")
    if device is not None and device.type != "cpu":
        if name not in ("auto", "torch"):
            raise CirlabError(f"the {name} runtime runs on the CPU here, not on {device}: use --runtime torch (or "
                              "auto) with that device, or --device cpu")
        return "torch"
    if name == "auto":
        if _installed("onnxruntime") and _installed("onnx"):
            return "onnx"
        _say_fallback()
        return "torch"
    if name != "torch":
        for package in (_PACKAGE[name], "onnx"):
            if not _installed(package):
                raise CirlabError(f"the {name} runtime needs the package {package!r}, which is not installed: "
                                  "pip install 'cirlab[runtime]' (or use --runtime torch)")
    return name


_said: set[str] = set()


def _say_fallback() -> None:
    if "fallback" not in _said:
        _said.add("fallback")
        log.warning("onnxruntime is not installed, so the encoders run in PyTorch (slower): "
                    "pip install 'cirlab[runtime]'")


def _installed(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def precision_name(dtype: torch.dtype | None) -> str:
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16", torch.qint8: "int8"}[dtype]


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
    decoding would starve the GPU, and 0 (decode in this process) elsewhere."""
    value = os.environ.get("CIRLAB_WORKERS", "").strip()
    if value:
        if not value.isdigit():
            raise CirlabError(f"CIRLAB_WORKERS={value!r} must be a whole number of processes, 0 or more")
        return int(value)
    return min(4, os.cpu_count() or 1) if device is not None and device.type == "cuda" else 0
