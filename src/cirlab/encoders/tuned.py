"""Fine-tuned encoders: a stage-1 file holds the base encoder's spec and id and the weights of the
layers stage 1 trained; ``tuned:/path/image.pt`` (image) or ``tuned:/path/text.pt`` (text) builds
the base encoder afresh and loads them.

A tuned encoder's id is the base id plus the file's content hash, so the feature cache keeps its
features apart from the base encoder's and re-encodes under the new id; a checkpoint trained on
them records the spec and carries the file's bytes (:func:`tuned_file`), so it loads where the file has
moved, changed or gone (:func:`tuned_spec`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from cirlab import __version__, settings
from cirlab.encoders.base import fingerprint_bytes, fingerprint_file, image_encoders, new_encoder, text_encoders
from cirlab.errors import CirlabError
from cirlab.files import atomic_torch_save, atomic_write, load_weights

KIND = "cirlab-tuned-encoder"
FORMAT_VERSION = 1


def save_tuned(path: str | Path, side: str, encoder, layers: int, meta: dict | None = None) -> Path:
    """Write the weights stage 1 trains (``encoder.tunable(layers)``) with the base encoder's identity."""
    state = {k: v.detach().clone() for k, v in encoder.tunable(layers).items()}
    return atomic_torch_save({"kind": KIND, "format_version": FORMAT_VERSION, "cirlab_version": __version__,
                              "side": side, "base_spec": encoder.spec, "base_id": encoder.id, "layers": layers,
                              "state": state, "meta": meta or {}}, path)


def load_tuned(path: str | Path, side: str):
    """The base encoder with the file's weights; id ``<base id>+ft<layers>:<file hash>``."""
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise CirlabError(f"no fine-tuned encoder at {path}; run 'cirlab train --stage 1' first")
    try:
        saved = load_weights(path)
    except Exception as e:
        raise CirlabError(f"{path} is not a readable fine-tuned encoder ({type(e).__name__})") from None
    if not isinstance(saved, dict) or saved.get("kind") != KIND:
        raise CirlabError(f"{path} is not a cirlab fine-tuned encoder file (written by 'cirlab train --stage 1')")
    if saved.get("format_version") != FORMAT_VERSION:
        raise CirlabError(f"{path} was written by cirlab {saved.get('cirlab_version')} in another format; "
                          "run stage 1 again with this version")
    if saved["side"] != side:
        raise CirlabError(f"{path} holds a fine-tuned {saved['side']} encoder; pass it as the {saved['side']} encoder")
    encoder = new_encoder(side, saved["base_spec"])  # a fresh instance: its weights change below
    if encoder.id != saved["base_id"]:
        raise CirlabError(f"{path} fine-tuned {saved['base_id']}, but {saved['base_spec']!r} now loads {encoder.id}; "
                          "install the same base weights or run stage 1 again")
    params = encoder.tunable(saved["layers"])
    if set(params) != set(saved["state"]):
        raise CirlabError(f"{path}: its weights do not fit {saved['base_spec']}; run stage 1 again")
    with torch.no_grad():
        for name, value in saved["state"].items():
            params[name].copy_(value)
    encoder.spec = f"tuned:{path}"
    encoder.id = f"{saved['base_id']}+ft{saved['layers']}:{fingerprint_file(path)}"
    encoder.tuned_from = saved["base_spec"]
    return encoder


def tuned_file(encoder) -> bytes | None:
    """The bytes of a tuned encoder's file, which a checkpoint trained on it carries; None for another encoder."""
    spec = getattr(encoder, "spec", "")
    return Path(spec.removeprefix("tuned:")).read_bytes() if spec.startswith("tuned:") else None


def tuned_spec(spec: str, encoder_id: str, carried: bytes | None) -> str:
    """The spec that loads the tuned encoder a checkpoint was trained on (``spec``, id ``encoder_id``): its own file
    while that still holds the same weights, else the copy the checkpoint carries, written once to
    ``$CIRLAB_HOME/models/tuned/<hash>.pt`` (a moved ``CIRLAB_HOME``, a copied checkpoint, a stage 1 run again into
    the same folder). Any other spec, or no copy: ``spec`` as it is."""
    digest = encoder_id.rpartition(":")[2]
    if not spec.startswith("tuned:") or carried is None or fingerprint_bytes(carried) != digest:
        return spec
    path = Path(spec.removeprefix("tuned:"))
    if path.is_file() and fingerprint_file(path) == digest:
        return spec
    copy = settings.home() / "models" / "tuned" / f"{digest}.pt"
    if not (copy.is_file() and fingerprint_file(copy) == digest):
        atomic_write(copy, lambda tmp: tmp.write_bytes(carried))
    return f"tuned:{copy}"


@image_encoders.register("tuned")
def _tuned_image(path: str | None = None):
    if not path:
        raise CirlabError("the tuned encoder needs its file: use 'tuned:/path/to/image.pt'")
    return load_tuned(path, "image")


@text_encoders.register("tuned")
def _tuned_text(path: str | None = None):
    if not path:
        raise CirlabError("the tuned encoder needs its file: use 'tuned:/path/to/text.pt'")
    return load_tuned(path, "text")
