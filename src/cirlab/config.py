"""Method configs are data: ``configs/methods/<name>.json`` (model and training options) over
``configs/train.json`` (training defaults). A user file given with ``--config`` overrides both.

Ablation *variants* (``configs/variants/<name>.json``, e.g. ``mffm-L2``) name a method and
override some of its options; they are used wherever a method name is.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from cirlab.errors import CirlabError


def read_config(path) -> dict:
    """A JSON config file (or package resource); invalid JSON is a one-line error."""
    try:
        return json.loads(Path(path).read_text()) if isinstance(path, (str, Path)) else json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CirlabError(f"{path}: not valid JSON ({e})") from None


def variant_names() -> list[str]:
    """The shipped ablation variants."""
    folder = resources.files("cirlab") / "configs" / "variants"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".json")) if folder.is_dir() else []


def method_config(method: str, override: str | Path | dict | None = None) -> dict:
    """``{"method", "model": {...}, "train": {...}}`` for a method or variant, defaults filled in."""
    root = resources.files("cirlab") / "configs"
    variant = root / "variants" / f"{method}.json"
    layers = []
    if variant.is_file():
        layers.append(read_config(variant))
        method = layers[0]["method"]
    shipped = root / "methods" / f"{method}.json"
    cfg = {"method": method, "model": {}, "train": dict(read_config(root / "train.json"))}
    layers = ([read_config(shipped)] if shipped.is_file() else []) + layers
    if override is not None:
        if not isinstance(override, dict) and not Path(override).is_file():
            raise CirlabError(f"config file {override} does not exist")
        layers.append(override if isinstance(override, dict) else read_config(override))
    for layer in layers:
        unknown = sorted(set(layer) - {"method", "model", "train"}) if isinstance(layer, dict) else ["(not an object)"]
        if unknown:
            raise CirlabError(f"config {override if layer is layers[-1] else method}: unknown key(s) {unknown}; "
                              'a config holds "method", "model" and "train"')
        cfg["method"] = layer.get("method", cfg["method"])
        cfg["model"].update(layer.get("model", {}))
        cfg["train"].update(layer.get("train", {}))
    return cfg
