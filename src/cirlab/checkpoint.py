"""Checkpoints: fusion weights, their config, the encoder ids they were trained on, cirlab's version.

Loading refuses, with a one-line reason, a file that is missing, corrupt, of another checkpoint
format, or trained on features of other encoders than the ones in use.
"""

from __future__ import annotations

from pathlib import Path


from cirlab import __version__
from cirlab.encoders.tuned import tuned_file, tuned_spec
from cirlab.errors import CirlabError
from cirlab.files import atomic_torch_save, load_weights
from cirlab.fusion import FeatureDims, Fusion, build_fusion, fusion_methods

FORMAT = "cirlab-fusion"
FORMAT_VERSION = 2


def save_checkpoint(path: str | Path, model: Fusion, model_config: dict, train_config: dict,
                    image_encoder, text_encoder, extra: dict | None = None, text_head: dict | None = None) -> Path:
    """Write atomically. ``text_head``: the state of a text-to-image head (``training.align``), if any."""
    meta = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "cirlab_version": __version__,
        "method": model.name, "model_config": model_config, "train_config": train_config, "dims": model.dims.to_dict(),
        "image_encoder": encoder_record(image_encoder), "text_encoder": encoder_record(text_encoder),
        **(extra or {}),
    }
    ckpt = {"meta": meta, "state_dict": model.state_dict()}
    carried = {side: data for side, enc in (("image", image_encoder), ("text", text_encoder))
               if (data := tuned_file(enc)) is not None}
    if carried:  # a tuned encoder's file travels with the model (encoders.tuned.tuned_spec)
        ckpt["tuned_files"] = carried
    if text_head is not None:
        ckpt["text_head"] = text_head
    return atomic_torch_save(ckpt, path)


def encoder_record(encoder) -> dict:
    """What a checkpoint records of an encoder: its spec, its id (architecture and weights) and its width."""
    return {"spec": encoder.spec, "id": encoder.id, "dim": encoder.dim}


def encoder_spec(ckpt: dict, side: str) -> str:
    """The spec that loads the ``side`` encoder a checkpoint was trained on: the one it records, or for a tuned
    encoder whose file has moved or changed, the copy the checkpoint carries."""
    record = ckpt["meta"][f"{side}_encoder"]
    carried = ckpt.get("tuned_files")
    return tuned_spec(record["spec"], record["id"], carried.get(side) if isinstance(carried, dict) else None)


def read_checkpoint(path: str | Path) -> dict:
    """The raw checkpoint dict, after the format checks."""
    path = Path(path)
    if not path.is_file():
        raise CirlabError(f"no model at {path}; train one with 'make demo' or 'cirlab train'")
    try:
        ckpt = load_weights(path)
    except Exception as e:
        raise CirlabError(f"{path} is not a readable cirlab checkpoint ({type(e).__name__}); retrain, or use another "
                          "checkpoint") from None
    meta = ckpt.get("meta") if isinstance(ckpt, dict) else None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CirlabError(f"{path} is not a cirlab fusion checkpoint; pass a file written by 'cirlab train'")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CirlabError(
            f"{path} was written by cirlab {meta.get('cirlab_version')} (checkpoint format {meta.get('format_version')}); "
            f"this cirlab {__version__} reads format {FORMAT_VERSION}: retrain the model with this version"
        )
    check_meta(meta, path)
    if not isinstance(ckpt.get("state_dict"), dict):
        raise CirlabError(f"{path} holds no weights (state_dict); it is not a checkpoint written by 'cirlab train': "
                          "retrain, or use another checkpoint")
    return ckpt


def check_meta(meta: dict, path: str | Path = "checkpoint") -> None:
    """Refuse, in one line, a checkpoint whose metadata lacks what loading reads (its method, its config and its
    encoders' spec and id) or holds it in another shape: what ``--model``, ``--rerank`` and an aligned model share."""

    wanted = {"method": str, "model_config": dict, "image_encoder": dict, "text_encoder": dict}
    for key, kind in wanted.items():
        if not isinstance(meta.get(key), kind):
            what = "lacks" if key not in meta else f"holds a {type(meta[key]).__name__} for"
            raise CirlabError(f"{path}: its metadata {what} {key!r} ({kind.__name__} expected), so it cannot be "
                              "loaded: it was not written by 'cirlab train' or was altered; retrain it")
        if kind is dict and key.endswith("_encoder"):
            for field in ("spec", "id"):
                if not isinstance(meta[key].get(field), str):
                    raise CirlabError(f"{path}: its metadata's {key} lacks its {field!r}, so the encoder it was "
                                      "trained on is unknown; retrain it with 'cirlab train'")
    if meta["method"] not in fusion_methods:
        raise CirlabError(f"{path}: its method {meta['method']!r} is not one this cirlab knows (cirlab methods lists "
                          "them); use the cirlab that trained it, or retrain")


def check_encoders(meta: dict, image_encoder, text_encoder, path: str | Path = "checkpoint") -> None:
    for side, enc in (("image", image_encoder), ("text", text_encoder)):
        want = meta[f"{side}_encoder"]["id"]
        if enc.id != want:
            raise CirlabError(
                f"{path} was trained on {side} features of {want}, but {enc.id} is loaded: "
                f"load encoder {meta[f'{side}_encoder']['spec']!r} or retrain on this one"
            )


def load_checkpoint(path: str | Path, image_encoder, text_encoder, ckpt: dict | None = None) -> tuple[Fusion, dict]:
    """Rebuild the fusion module of a checkpoint for these encoders (refused on a mismatch);
    ``ckpt``: the file's contents where the caller has read them already."""
    ckpt = ckpt if ckpt is not None else read_checkpoint(path)
    check_encoders(ckpt["meta"], image_encoder, text_encoder, path)
    return fusion_from_checkpoint(ckpt, FeatureDims.of(image_encoder, text_encoder), path), ckpt["meta"]


def fusion_from_checkpoint(ckpt: dict, dims: FeatureDims, path: str | Path = "checkpoint") -> Fusion:
    """The fusion module of a checkpoint's contents, built for ``dims`` and in eval mode."""
    meta = ckpt["meta"]
    model = build_fusion(meta["method"], dims, **meta["model_config"])
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as e:
        raise CirlabError(f"{path}: weights do not fit method {meta['method']!r} ({str(e).splitlines()[0]}); retrain") from None
    return model.eval()


def check_zero_shot(method: str, options: dict | None = None) -> None:
    """Refuse, in one line and before any encoder or folder is opened, a method that is unknown or learns from
    triplets, and options the method does not take or of the wrong type (:meth:`Fusion.checked_options`)."""
    cls = fusion_methods.get(method)
    if not cls.zero_shot:
        raise CirlabError(f"{method} learns from triplets: only a zero-shot method (zs_*) runs without a checkpoint; "
                          "train one with 'cirlab train' and pass --model")
    cls.checked_options(options or {})


def zero_shot_fusion(method: str, image_encoder, text_encoder, model: dict | None = None) -> tuple[Fusion, dict]:
    """A training-free method (``fusion.zero_shot``) on these encoders, which must be an aligned pair: a CLIP pair,
    or the encoders of the aligned stage-1 model ``model["aligned"]`` (a folder or ``stage1.pt``), whose projections
    it copies in. Refused in one line otherwise. Returns the model and its config (with the aligned model's path
    and width)."""
    check_zero_shot(method, model)
    config = dict(model or {})
    state = None
    if config.get("aligned"):
        path = stage1_model_path(config["aligned"])
        ckpt = read_checkpoint(path)
        if not is_aligned(ckpt["meta"]):
            raise CirlabError(f"{path} was not trained on image-caption retrieval, so it is no aligned pair: train one "
                              "with 'cirlab train --stage 1 --stage1-config align --zero-shot' (docs/zero-shot.md)")
        check_encoders(ckpt["meta"], image_encoder, text_encoder, path)
        config.update(aligned=str(path.resolve()), embed_dim=ckpt["meta"]["model_config"]["embed_dim"])
        state = ckpt["state_dict"]
    elif not (image_encoder.spec.startswith("clip:") and image_encoder.spec == text_encoder.spec):
        raise CirlabError(f"{method} composes in an aligned image-text space, and {image_encoder.spec} with "
                          f"{text_encoder.spec} is no aligned pair: use a CLIP pair (--image-encoder clip:X "
                          "--text-encoder clip:X) or an aligned stage-1 model (--stage1 or --aligned DIR, made with "
                          "--stage1-config align; docs/zero-shot.md)")
    fusion = build_fusion(method, FeatureDims.of(image_encoder, text_encoder), **config)
    if state is not None:
        fusion.load_aligned(state)
    return fusion.eval(), config


def stage1_model_path(path: str | Path) -> Path:
    """The stage-1 checkpoint in a stage-1 folder (``stage1.pt``), or the file itself."""
    path = Path(path)
    return path / "stage1.pt" if path.is_dir() else path


def is_aligned(meta: dict) -> bool:
    """Whether a checkpoint embeds texts and images in one space: a stage-1 model trained on image-caption retrieval,
    or a zero-shot method on an aligned pair."""
    return bool(meta.get("zero_shot")) or bool(meta.get("stage1", {}).get("tasks", {}).get("retrieval"))
