"""Flags several commands share, as argparse parents: each is declared once."""

from __future__ import annotations

import argparse
from pathlib import Path

from cirlab import settings
from cirlab.config import DEFAULT_IMAGE_ENCODER, DEFAULT_TEXT_ENCODER
from cirlab.errors import CirlabError

FIELD_TYPES = {"int": int, "float": float, "str": str}  # a config dataclass field's type -> argparse's


def _parent() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(add_help=False)


def quiet() -> argparse.ArgumentParser:
    p = _parent()
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def int_list(text: str, flag: str) -> tuple[int, ...]:
    """A comma list of whole numbers (``1,10``), or a one-line error naming the flag."""
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise CirlabError(f"{flag} takes whole numbers separated by commas, got {text!r}") from None


def rerank() -> argparse.ArgumentParser:
    p = _parent()
    p.add_argument("--rerank", default=None, metavar="SPEC",
                   help="a second model reorders the first stage's top K: a checkpoint PATH, or "
                        "model=PATH,candidates=N (default 100); it must share the first model's encoders "
                        "(docs/evaluation.md#re-ranking)")
    return p


def served_reranker(a: argparse.Namespace, pipe):
    """``--rerank``'s second model beside ``pipe`` (``cirlab.rerank.Reranker.beside``), or None."""
    if a.rerank is None:
        return None
    from cirlab.rerank import Reranker

    return Reranker.beside(a.rerank, pipe)


def cache() -> argparse.ArgumentParser:
    p = _parent()
    p.add_argument("--cache", type=Path, default=None, help=f"feature cache folder (default: {settings.cache_dir()})")
    return p


def model() -> argparse.ArgumentParser:
    p = _parent()
    p.add_argument("--model", type=Path, default=None,
                   help=f"checkpoint to use (default: the model 'make demo' trains, {settings.default_model_path()})")
    return p


def spelling() -> argparse.ArgumentParser:
    p = _parent()
    p.add_argument("--no-spelling", dest="spelling", action="store_false",
                   help="search each text as typed (default: a word known neither to the model nor to English is "
                        "corrected, and the answer says so; docs/serving.md#spelling)")
    return p


def zero_shot() -> argparse.ArgumentParser:
    p = _parent()
    g = p.add_argument_group("a zero-shot method instead of a checkpoint (docs/zero-shot.md)")
    g.add_argument("--method", default=None, metavar="zs_NAME",
                   help="a training-free method (zs_slerp, zs_sum, zs_weighted, zs_oti, zs_image, zs_text) on an aligned "
                        "pair, with no --model")
    g.add_argument("--method-options", dest="method_options", default=None, metavar="K=V,...",
                   help="with --method: its options, e.g. alpha=0.7 (zs_slerp), weight=0.6, steps=10 (docs/zero-shot.md)")
    g.add_argument("--image-encoder", dest="image_encoder", default=None,
                   help="with --method: the image encoder of the aligned pair (clip:/path or clip:hub/name)")
    g.add_argument("--text-encoder", dest="text_encoder", default=None,
                   help="with --method: its text encoder (the same clip:... for a CLIP pair)")
    g.add_argument("--aligned", type=Path, default=None,
                   help="with --method: an aligned stage-1 folder (--stage1-config align); its encoders are the pair")
    return p


def pipeline(a: argparse.Namespace):
    """The pipeline a command answers with: the checkpoint ``--model`` names (or the default one), or the zero-shot
    ``--method`` on the aligned pair given."""
    from cirlab.api import Pipeline

    if a.method is None:
        if a.image_encoder or a.text_encoder or a.aligned or a.method_options:
            raise CirlabError("--image-encoder, --text-encoder, --aligned and --method-options go with --method (a "
                              "zero-shot method); "
                              "a checkpoint (--model) names its own encoders")
        pipe = Pipeline.load(a.model, a.cache, a.placement)
        pipe.spelling = pipe.spelling and getattr(a, "spelling", True)
        return pipe
    if a.model is not None:
        raise CirlabError("give --model (a trained checkpoint) or --method (a zero-shot method), not both")
    from cirlab.checkpoint import check_zero_shot

    options = method_options(a.method_options)
    check_zero_shot(a.method, options)  # before any folder or encoder is opened
    image, text = a.image_encoder, a.text_encoder
    if a.aligned is not None:
        from cirlab.training.stage1 import stage1_encoders

        specs = stage1_encoders(a.aligned)
        image, text = image or specs[0], text or specs[1]
    if not image or not text:
        raise CirlabError(f"--method {a.method} needs an aligned pair: --image-encoder clip:X --text-encoder clip:X, or "
                          "--aligned DIR (a stage-1 model aligned on captions)")
    if a.aligned is not None:
        options["aligned"] = str(a.aligned)
    return Pipeline.zero_shot(a.method, image, text, a.cache, a.placement, options)


def method_options(text: str | None) -> dict:
    """``"alpha=0.7,steps=10"`` -> ``{"alpha": 0.7, "steps": 10}`` (numbers where they parse, text otherwise)."""
    out: dict = {}
    for part in filter(None, (p.strip() for p in (text or "").split(","))):
        key, eq, value = part.partition("=")
        if not eq or not key.strip():
            raise CirlabError(f"--method-options {part!r}: use name=value, e.g. alpha=0.7")
        for cast in (int, float):
            try:
                out[key.strip()] = cast(value)
                break
            except ValueError:
                continue
        else:
            out[key.strip()] = value.strip()
    return out


def image_encoder() -> argparse.ArgumentParser:
    p = _parent()
    p.add_argument("--image-encoder", default=DEFAULT_IMAGE_ENCODER,
                   help=f"image encoder: {DEFAULT_IMAGE_ENCODER} (default), efficientnet_lite2, clip:/path, hf:/path, "
                        "tuned:/stage1/image.pt (fine-tuned by stage 1), sift_bovw:k=1000[,pyramid=1,tokens=grid]")
    return p


def encoders() -> argparse.ArgumentParser:
    p = _parent()
    p.add_argument("--text-encoder", default=DEFAULT_TEXT_ENCODER,
                   help=f"text encoder: {DEFAULT_TEXT_ENCODER} (default), clip:/path, hf:/path, tuned:/stage1/text.pt")
    return argparse.ArgumentParser(add_help=False, parents=[image_encoder(), p])


def runtime() -> argparse.ArgumentParser:
    p = _parent()
    p.add_argument("--runtime", default=None, choices=("auto", "torch", "onnx", "openvino"),
                   help="what runs the encoders' networks: auto (default, or $CIRLAB_RUNTIME: ONNX Runtime where "
                        "installed, else PyTorch), torch, onnx (ONNX Runtime) or openvino; stage-1 training always "
                        "runs PyTorch")
    p.add_argument("--device", default=None, metavar="DEVICE",
                   help="where the networks run: auto (default, or $CIRLAB_DEVICE: CUDA where there is a GPU, else "
                        "the CPU), cpu, cuda, cuda:N or mps")
    p.add_argument("--encoder-precision", default=None, choices=("auto", "fp32", "bf16", "int8"),
                   help="what the encoders' networks compute in: auto (default, or $CIRLAB_ENCODER_PRECISION: bf16 or "
                        "fp16 autocast on a GPU; on the CPU fp32 unless it has bf16 instructions and a probe finds "
                        "bf16 faster at parity), fp32, bf16 (PyTorch or OpenVINO) or int8 (the image encoder under "
                        "ONNX Runtime; text stays fp32); bf16 and int8 vectors get their own feature-cache entry "
                        "(docs/encoders.md#precision)")
    return p


def precision() -> argparse.ArgumentParser:
    p = _parent()
    p.add_argument("--precision", default=None, choices=("auto", "fp32", "bf16", "fp16"),
                   help="training's forward passes: auto (default, or $CIRLAB_PRECISION: bf16 autocast on a GPU that "
                        "has it, else fp16 with a gradient scaler; fp32 on the CPU), fp32, bf16 or fp16")
    return p


def feature_cache(a: argparse.Namespace):
    """The feature cache a command's ``--cache`` names, or the default one."""
    from cirlab.encoders.cache import FeatureCache

    return FeatureCache(a.cache or settings.cache_dir())
