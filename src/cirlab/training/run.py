"""Train and evaluate a method on a dataset: the one path the CLI, the demo and benchmarks share."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cirlab.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from cirlab.config import method_config
from cirlab.data.features import FeatureTable, image_table, text_table
from cirlab.data.triplets import Dataset, Triplet
from cirlab.encoders import DEFAULT_IMAGE_ENCODER, DEFAULT_TEXT_ENCODER, build_image_encoder, build_text_encoder
from cirlab.encoders.cache import FeatureCache
from cirlab.errors import CirlabError
from cirlab.eval.evaluate import Rankings, evaluate
from cirlab.fusion import Fusion, build_fusion, fusion_methods
from cirlab.training.trainer import TrainConfig, TrainResult, train_fusion


@dataclass
class Workspace:
    """A dataset with its features encoded once: every method trains and evaluates on these tables."""

    dataset: Dataset
    image_encoder: object
    text_encoder: object
    images: FeatureTable
    texts: FeatureTable
    triplets: dict[str, list[Triplet]]
    failed: list[tuple[str, str]]

    @classmethod
    def open(cls, data: str | Path, cache: FeatureCache, image_spec: str = DEFAULT_IMAGE_ENCODER,
             text_spec: str = DEFAULT_TEXT_ENCODER, image_views=("pooled",), text_views=("pooled",),
             progress: bool = True) -> "Workspace":
        ds = Dataset(data)
        ie, te = build_image_encoder(image_spec), build_text_encoder(text_spec)
        images, failed = image_table(cache, ie, ds.gallery(), image_views, progress)
        triplets = {s: ds.triplets(s) for s in ds.splits}
        texts = text_table(cache, te, [t.text for ts in triplets.values() for t in ts], text_views, progress)
        return cls(ds, ie, te, images, texts, triplets, failed)

    def gallery_ids(self, split: str) -> list[str]:
        return [i for i in self.dataset.gallery(split).ids if i in self.images.row]

    def evaluate(self, model: Fusion, split: str) -> Rankings:
        return evaluate(model, self.triplets[split], self.images, self.texts, self.gallery_ids(split))


def train_method(ws: Workspace, method: str, config: str | Path | dict | None = None, out: str | Path | None = None,
                 progress: bool = True, train_split: str = "train", val_split: str | None = "val",
                 reuse: bool = False) -> tuple[Fusion, TrainResult | None, dict]:
    """Train ``method`` on ``ws``; save to ``out``. With ``reuse``, a checkpoint at ``out`` trained on the
    same data, encoders and config is loaded instead of retrained."""
    if method not in fusion_methods:
        fusion_methods.get(method)  # raises the one-line "unknown method" error
    cfg = method_config(method, config)
    data_id = {"name": ws.dataset.name, "version": ws.dataset.meta.get("version"), "seed": ws.dataset.meta.get("seed")}
    if reuse and out and Path(out).is_file():
        try:
            meta = read_checkpoint(out)["meta"]
            if meta.get("config") == cfg and meta.get("data") == data_id:
                model, meta = load_checkpoint(out, ws.image_encoder, ws.text_encoder)
                return model, None, meta
        except CirlabError:
            pass  # stale or foreign file: retrain over it
    train_cfg = TrainConfig.from_dict(cfg["train"])
    model = build_fusion(cfg["method"], ws.image_encoder.dim, ws.text_encoder.dim, **cfg["model"])
    if val_split and val_split in ws.triplets and ws.triplets[val_split]:
        def validate(m: Fusion) -> dict[int, float]:
            return ws.evaluate(m, val_split).recall
    else:
        validate = None
    result = train_fusion(model, ws.triplets[train_split], ws.images, ws.texts, train_cfg, progress, validate)
    meta = {"config": cfg, "data": data_id, "train": result.to_dict()}
    if out:
        save_checkpoint(out, model, cfg["model"], cfg["train"], ws.image_encoder, ws.text_encoder, meta)
    return model, result, meta
