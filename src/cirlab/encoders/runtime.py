"""Inference runtimes for the encoders' networks: eager PyTorch, or the network exported once to ONNX and
run by ONNX Runtime (``onnx``) or OpenVINO (``openvino``).

Each neural encoder exposes its network as :class:`Network`: a module whose ``forward`` takes named
tensors (pixels, or token ids and masks) and returns a tuple of tensors, with example inputs for the export.
A text encoder with a pseudo-word (:class:`cirlab.encoders.base.PseudoWordInput`) has a second graph,
``word_network``: the same network with one more input, each text's word vector for its ``$``.
Preprocessing (decoding, resizing, tokenising) and postprocessing (pooling, the views) stay in the encoder
and are the same under every runtime; only the network between them changes.

An exported graph is cached under ``<CIRLAB_HOME>/runtimes/``, keyed by the encoder id (which names the
architecture and a hash of the weights: a fine-tuned file gets its own), the network's graph version and the
torch version, so changed weights or changed graph code export afresh. An export is written to a temporary
folder and renamed, so a crash never leaves half a model that later runs.

Vectors share the encoder id across runtimes: a runtime is only used where it holds parity with PyTorch
(cosine >= 0.9995; measured ~1 - 1e-7 in fp32), so a gallery encoded with one runtime is searched with
queries encoded by another. The feature cache records which runtime made each entry.

``auto`` (the inference default) picks ONNX Runtime where it is installed (the ``runtime`` extra), else PyTorch,
and says so once (:func:`cirlab.devices.resolve_runtime`; the runtime is a field of :class:`cirlab.devices.Placement`).
Training always runs PyTorch (stage 1 builds its own encoder instances).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from cirlab import settings
from cirlab.devices import autocast, precision_name, to_device
from cirlab.encoders.sessions import OpenVinoSession, OpenVinoSplitSession, OrtSession
from cirlab.errors import CirlabError

log = logging.getLogger("cirlab")

EXPORT_FORMAT = 1  # bump when the export settings change: every cached graph is rebuilt
OPSET = 17


@dataclass
class Network:
    """What a runtime runs: ``module(*inputs.values())`` -> tuple of tensors named ``outputs``.

    ``inputs`` are example tensors in ``forward``'s argument order; ``dynamic`` names the axes that vary
    (the batch; for texts also the sequence). ``version`` is bumped when the module's code changes."""

    module: torch.nn.Module
    inputs: dict[str, torch.Tensor]
    outputs: tuple[str, ...]
    dynamic: dict[str, dict[int, str]] = field(default_factory=dict)
    version: int = 1


def image_network(module: torch.nn.Module, size: int, outputs: tuple[str, ...], version: int = 1) -> Network:
    """The network of an image encoder: normalised pixels (B, 3, size, size) -> ``outputs``."""
    return Network(module, {"pixels": torch.zeros(2, 3, size, size)}, outputs, {"pixels": {0: "batch"}}, version)


def text_network(module: torch.nn.Module, batch: dict, names: Sequence[str], outputs: tuple[str, ...]) -> Network:
    """The network of a text encoder: the tokeniser's ``names`` (from an example ``batch``) -> ``outputs``."""
    return Network(module, {n: batch[n] for n in names}, outputs, {n: {0: "batch", 1: "sequence"} for n in names})


class Wrapped(torch.nn.Module):
    """An encoder's network as one module: ``fn(*inputs)`` -> tuple of tensors; ``model`` is registered so that
    its weights go into the export."""

    def __init__(self, model: torch.nn.Module, fn) -> None:
        super().__init__()
        self.model, self.fn = model, fn

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.fn(*inputs))


def runtime_name(encoder) -> str:
    """The runtime an encoder's outputs come from: ``torch``, ``onnx`` or ``openvino`` for a neural network in
    fp32 on the CPU; with the device and precision otherwise (``torch:cuda:0/bf16``, ``openvino:cpu/bf16``);
    ``native`` for an encoder without one (``sift_bovw``)."""
    if not hasattr(encoder, "network"):
        return "native"
    runtime, device = getattr(encoder, "runtime", "torch"), getattr(encoder, "device", None)
    precision = precision_name(getattr(encoder, "precision", None))
    if (device is None or device.type == "cpu") and precision == "fp32":
        return runtime
    return f"{runtime}:{device or 'cpu'}/{precision}"


def run_network(encoder, feeds: dict[str, torch.Tensor], graph: str = "network") -> list[torch.Tensor]:
    """The encoder's network on ``feeds`` (its inputs by name, in ``forward``'s order) under its runtime
    (``encoder.runtime``, default ``torch``) and, for torch, on its device (``encoder.device``; see
    :func:`cirlab.encoders.base.place`); float32 CPU tensors come back. ``graph``: which of the encoder's
    networks (``network``, or ``word_network`` for a pseudo-word): its module is ``encoder.<graph>_module`` and
    its :class:`Network` ``encoder.<graph>()``."""
    runtime = getattr(encoder, "runtime", "torch")
    dtype = getattr(encoder, "precision", None)
    if runtime == "torch":
        module, device = getattr(encoder, f"{graph}_module"), getattr(encoder, "device", None)
        if device is None or device.type == "cpu":
            with torch.inference_mode(), autocast(torch.device("cpu"), dtype):
                return [o.float() for o in module(*feeds.values())]
        with torch.inference_mode(), autocast(device, dtype):
            outputs = module(*to_device(feeds, device).values())
        return [o.float().cpu() for o in outputs]
    session = _session(encoder, runtime, graph)
    arrays = session.run({k: v.numpy() for k, v in feeds.items()})
    return [torch.from_numpy(a) for a in arrays]


def exported_path(encoder, net: Network | None = None, graph: str = "network") -> Path:
    """Where the encoder's exported ``graph`` lives (whether or not it exists yet); ``net``: its network, if built."""
    net = net or getattr(encoder, graph)()
    name = type(encoder).__name__ + ("" if graph == "network" else f".{graph}")
    key = json.dumps({"id": encoder.id, "graph": name, "version": net.version,
                      "torch": torch.__version__.split("+")[0], "format": EXPORT_FORMAT, "opset": OPSET})
    digest = hashlib.sha1(key.encode()).hexdigest()[:16]
    stem = "".join(c if c.isalnum() or c in "._@-" else "_" for c in encoder.id)[:80]
    return settings.home() / "runtimes" / f"{stem}-{digest}" / "model.onnx"


def export_onnx(encoder, graph: str = "network") -> Path:
    """Export the encoder's ``graph`` once (a cached graph is reused); returns the ``.onnx`` path."""
    net = getattr(encoder, graph)()
    path = exported_path(encoder, net, graph)
    if path.is_file() and (path.parent / "source.json").is_file():
        return path
    if path.parent.exists():  # an export cut short before it was complete: rebuilt
        shutil.rmtree(path.parent, ignore_errors=True)
    path.parent.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".export-", dir=path.parent.parent))
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(net.module.eval(), tuple(net.inputs.values()), str(tmp / path.name),
                              input_names=list(net.inputs), output_names=list(net.outputs),
                              dynamic_axes={**net.dynamic, **{o: {0: "batch"} for o in net.outputs}},
                              opset_version=OPSET, dynamo=False)
        (tmp / "source.json").write_text(json.dumps({"encoder_id": encoder.id, "spec": encoder.spec,
                                                     "torch": torch.__version__, "version": net.version}))
        try:
            os.replace(tmp, path.parent)
        except OSError:  # another process exported the same graph first: use theirs
            if not (path.parent / "source.json").is_file():
                raise
    except Exception as e:
        raise CirlabError(f"could not export {encoder.spec} to ONNX ({type(e).__name__}: {str(e).splitlines()[0]}); "
                          "use --runtime torch") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("exported %s to %s", encoder.spec, path)
    return path


_lock = threading.Lock()


def _session(encoder, runtime: str, graph: str = "network"):
    """The encoder's session for ``runtime``, ``graph`` and its precision, built once per encoder id
    (thread-safe)."""
    with _lock:
        sessions = encoder.__dict__.setdefault("_runtime_sessions", {})
        key = _session_key(encoder, runtime, graph)
        if key not in sessions:
            for old in [k for k in sessions if k[1:] == key[1:]]:  # the weights changed (a tuned file loaded)
                del sessions[old]
            path = export_onnx(encoder, graph)
            if key[-1] == "int8":
                from cirlab.encoders.quantize import int8_graph

                path = int8_graph(encoder, path)
            until = getattr(encoder, "bf16_fp32_until", None) if key[-1] == "bf16" else None
            sessions[key] = OrtSession(path) if runtime == "onnx" else \
                OpenVinoSplitSession(path, until) if until else OpenVinoSession(path, key[-1])
        return sessions[key]


def check_int8_gallery(encoder, paths) -> float | None:
    """Where the encoder runs int8: its parity with fp32 on the first images of ``paths`` (a gallery), refused in one
    line under the bar (:func:`cirlab.encoders.quantize.check_gallery`); None otherwise."""
    if precision_name(getattr(encoder, "precision", None)) != "int8":
        return None
    from cirlab.encoders.quantize import check_gallery

    return check_gallery(encoder, export_onnx(encoder), paths)


def _session_key(encoder, runtime: str, graph: str) -> tuple[str, str, str, str]:
    """A session's key: the encoder's id (its weights), the runtime, the graph and the precision it runs in."""
    return encoder.id, runtime, graph, precision_name(getattr(encoder, "precision", None))


def use_session(encoder, session, runtime: str = "onnx", graph: str = "network") -> None:
    """Have the encoder run ``graph`` under ``runtime`` by ``session`` (one built on another graph file, e.g. an
    int8 one) rather than on its own export."""
    with _lock:
        encoder.__dict__.setdefault("_runtime_sessions", {})[_session_key(encoder, runtime, graph)] = session
