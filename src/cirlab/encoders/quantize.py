"""Static int8 graphs of the image encoders for ONNX Runtime (``--encoder-precision int8``).

An encoder that can run in int8 names the parts of its exported graph that stay in fp32 (``int8_fp32``: substrings
of Conv node names). For EfficientNet-Lite these are the stem, the first three blocks and the 1x1 head
convolution: int8 rounding there costs the most (``benchmarks/int8_image.py``: with only the stem and head kept in
fp32 the pooled vectors fall to a cosine of 0.966; with the first two blocks kept too, to 0.993 on some images).

The graph is written once beside the fp32 export (``model.int8-v<N>-vnni.onnx``, :func:`int8_path`): ONNX Runtime's static QDQ
quantisation, s8 weights per output channel, u8 activations calibrated by min/max on :data:`CALIBRATION` fixed
Twemoji images (the same on every machine, so one encoder id gives one int8 graph whatever the gallery). Before it
is kept, its pooled vectors are compared with fp32's on :data:`CHECK` other Twemoji images; below a cosine of
:data:`PARITY` it is refused in one line and not written. The file is written to a temporary name and renamed.

A user's gallery is not Twemoji: :func:`check_gallery` runs the same comparison on the first :data:`CHECK` images of
the gallery being encoded (``cirlab index build`` on either engine, ``Pipeline.encode_gallery``, images added to an
index) and refuses int8 there in one line, before anything is written, where they fall under the bar.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

from cirlab.errors import CirlabError

RECIPE = 1  # bump when the calibration or what stays fp32 changes: the file name carries it
CALIBRATION = 256
CHECK = 64
PARITY = 0.995  # issue 45's bar for int8: the smallest cosine of a pooled vector to fp32's


def int8_path(fp32: Path) -> Path:
    """Where the int8 graph of the ``fp32`` export lives. Its parity is checked on the CPU that writes it, and CPUs
    without VNNI multiply int8 in saturating int16 pairs, so the two kinds of CPU keep separate files."""
    from cirlab.hardware import machine

    return fp32.with_name(f"model.int8-v{RECIPE}-{'vnni' if machine().has('vnni') else 'novnni'}.onnx")


def int8_graph(encoder, fp32: Path) -> Path:
    """The int8 graph of ``encoder``'s exported ``fp32`` graph, quantised, checked and written once."""
    path = int8_path(fp32)
    if path.is_file():
        return path
    keep = getattr(encoder, "int8_fp32", None)
    if keep is None:
        raise CirlabError(f"{encoder.spec} has no int8 graph; use --encoder-precision fp32")
    name = next(iter(encoder.network().inputs))
    images = calibration_pixels(encoder, CALIBRATION + CHECK)
    calib, check = images[:CALIBRATION], images[CALIBRATION:]
    with tempfile.TemporaryDirectory(dir=fp32.parent, prefix=".int8-") as tmp:
        out = Path(tmp) / path.name
        quantize_qdq(fp32, out, calib, name, nodes_named(keep), pre=Path(tmp) / "pre.onnx")
        cosine = parity(fp32, out, {name: check})
        if cosine < PARITY:
            raise CirlabError(f"the int8 graph of {encoder.spec} keeps a cosine of only {cosine:.4f} to fp32's "
                              f"(needs {PARITY}): use --encoder-precision fp32")
        (Path(tmp) / (path.stem + ".json")).write_text(json.dumps(
            {"encoder_id": encoder.id, "recipe": RECIPE, "calibration_images": CALIBRATION, "check_images": CHECK,
             "min_cosine": round(cosine, 6), "fp32_nodes": keep}, indent=1))
        os.replace(Path(tmp) / (path.stem + ".json"), path.with_suffix(".json"))
        os.replace(out, path)
    logging.getLogger("cirlab").info("wrote the int8 graph of %s (min cosine %.4f to fp32 on %d images)",
                                     encoder.spec, cosine, CHECK)
    return path


def nodes_named(parts) -> Callable[[list], list[str]]:
    """The ``fp32_nodes`` of :func:`quantize_qdq` that keeps the Conv nodes whose names hold one of ``parts``
    (an encoder's ``int8_fp32``)."""
    return lambda convs: [c.name for c in convs if any(k in c.name for k in parts)]


def quantize_qdq(src: Path, dst: Path, pixels: np.ndarray, name: str, fp32_nodes, weight_type: str = "QInt8",
                 calibrate: str = "MinMax", reduce_range: bool = False, extra_options: dict | None = None,
                 pre: Path | None = None) -> None:
    """ONNX Runtime's static QDQ quantisation of the graph ``src`` into ``dst``: shapes and fusions first, as ONNX
    Runtime advises (into ``pre``, reused where it exists; else beside ``dst``), then ``weight_type`` weights per
    channel and u8 activations calibrated (``calibrate``) on ``pixels`` fed under the input ``name``. The names that
    ``fp32_nodes`` returns, given the pre-processed graph's Conv nodes in order, stay in fp32."""
    try:
        import onnx
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError:
        raise CirlabError("int8 encoding needs ONNX Runtime's quantisation tools: pip install 'cirlab[runtime]'") \
            from None
    pre = pre or dst.with_name("pre.onnx")
    logging.disable(logging.WARNING)  # ONNX Runtime warns once per bias it cannot fit in int32 (kept in fp32)
    try:
        if not pre.is_file():
            quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        convs = [n for n in onnx.load(str(pre)).graph.node if n.op_type == "Conv"]
        quantize_static(str(pre), str(dst), _Reader(pixels, name), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=getattr(QuantType, weight_type),
                        reduce_range=reduce_range, calibrate_method=getattr(CalibrationMethod, calibrate),
                        nodes_to_exclude=fp32_nodes(convs), extra_options=extra_options or {})
    finally:
        logging.disable(logging.NOTSET)


def calibration_pixels(encoder, n: int) -> np.ndarray:
    """``n`` fixed Twemoji images as the encoder's network input."""
    from cirlab.encoders.precision import probe_images

    return _pixels(encoder, probe_images(n))


def _pixels(encoder, images) -> np.ndarray:
    """Decoded images as the encoder's network input, 32 at a time."""
    return np.concatenate([encoder.pixels(images[s:s + 32]).numpy() for s in range(0, len(images), 32)])


class _Reader:
    """ONNX Runtime's calibration data: the pixels, 16 at a time, under the graph's input name."""

    def __init__(self, pixels: np.ndarray, name: str) -> None:
        self.batches = iter([{name: pixels[s:s + 16]} for s in range(0, len(pixels), 16)])

    def get_next(self):
        return next(self.batches, None)


@functools.lru_cache(maxsize=4)
def _check_session(path: str, written_ns: int):
    """The runtime's ONNX Runtime session on a graph file (its threads, no spinning), kept while the file is
    unchanged: a server checks every upload to its gallery against the same two graphs (``written_ns`` keys a
    rewritten file apart)."""
    from cirlab.encoders.sessions import OrtSession

    return OrtSession(Path(path))


def parity(fp32: Path, int8: Path, feeds: dict[str, np.ndarray]) -> float:
    """The smallest cosine between the two graphs' pooled vectors (the first output, averaged over space)."""
    from cirlab.encoders.precision import min_cosine

    def pooled(path: Path) -> np.ndarray:
        session = _check_session(str(path), path.stat().st_mtime_ns)
        return np.asarray(session.run(feeds)[0], np.float64).mean(axis=(2, 3))

    return min_cosine(pooled(fp32), pooled(int8))


def check_gallery(encoder, fp32: Path, paths) -> float | None:
    """The smallest cosine between int8 and fp32 pooled vectors (``fp32``: the encoder's export) over the first
    :data:`CHECK` readable images of ``paths``; refused in one line under :data:`PARITY`. None where no image reads."""
    from cirlab.images import UnreadableImage, decode_images

    images = [im for batch in decode_images(list(paths)[:2 * CHECK], CHECK) for im in batch
              if not isinstance(im, UnreadableImage)][:CHECK]
    if not images:
        return None
    name = next(iter(encoder.network().inputs))
    cosine = parity(fp32, int8_graph(encoder, fp32), {name: _pixels(encoder, images)})
    if cosine < PARITY:
        raise CirlabError(f"in int8, this gallery's first {len(images)} images keep a cosine of only {cosine:.4f} to "
                          f"their fp32 vectors (needs {PARITY}): use --encoder-precision fp32 for it")
    return cosine
