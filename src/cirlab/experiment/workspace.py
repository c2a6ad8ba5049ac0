"""Train and evaluate a method on a dataset: the one path the CLI, the demo and benchmarks share."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from cirlab.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint, stage1_model_path, zero_shot_fusion
from cirlab.config import TrainConfig, method_config
from cirlab.data.perturb import TextAugment
from cirlab.data.spelling import vocabulary, word_pairs
from cirlab.data.features import FeatureTable, QuerySide, image_table, text_table
from cirlab.data.triplets import Dataset, Triplet, record_splits
from cirlab.devices import Placement, module_device, placed, to_device
from cirlab.encoders import (DEFAULT_IMAGE_ENCODER, DEFAULT_TEXT_ENCODER, build_image_encoder, build_text_encoder,
                             fit_image_encoder)
from cirlab.encoders.cache import FeatureCache
from cirlab.errors import CirlabError
from cirlab.eval.audit import blank_queries, evaluate_audited
from cirlab.eval.evaluate import Rankings, evaluate, written_queries
from cirlab.fusion import FeatureDims, Fusion, build_fusion, fusion_methods
from cirlab.fusion.text_head import head_state
from cirlab.rerank import Reranker
from cirlab.training.align import caption_pairs, fit_text_head
from cirlab.training.trainer import TrainResult, seed_everything, train_fusion
from cirlab.training.parallel import ranks
from cirlab.training.zero_shot import Unlabelled, prepare_zero_shot


def views_needed(configs: list[dict], dims: FeatureDims) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The union of the image and text views the configured methods read."""
    image, text = {"pooled"}, {"pooled"}
    for cfg in configs:
        probe = build_fusion(cfg["method"], dims, **cfg["model"])
        image.update(probe.image_views, probe.gallery_views)
        text.update(probe.text_views)
    return tuple(sorted(image)), tuple(sorted(text))


@dataclass
class Workspace:
    """A dataset with its features encoded once: every method trains and evaluates on these tables."""

    dataset: Dataset
    cache: FeatureCache
    image_encoder: object
    text_encoder: object
    images: FeatureTable
    texts: FeatureTable
    triplets: dict[str, list[Triplet]]
    failed: list[tuple[str, str]]
    progress: bool = True
    placement: Placement | None = None  # where the encoders run and the methods train (None: the defaults')
    _unified: dict = field(default_factory=dict)

    @classmethod
    def open(cls, data: str | Path, cache: FeatureCache, image_spec: str = DEFAULT_IMAGE_ENCODER,
             text_spec: str = DEFAULT_TEXT_ENCODER, image_views=("pooled",), text_views=("pooled",),
             progress: bool = True, images: str | Path | None = None,
             placement: Placement | None = None) -> "Workspace":
        """Encode (or read from the cache) a dataset folder, or a triplet file with its ``images`` folder, with
        the encoders placed by ``placement``, where its methods then train."""
        ds = data if isinstance(data, Dataset) else Dataset.open(data, images)
        placement = placed(placement)
        ie, te = build_image_encoder(image_spec, placement), build_text_encoder(text_spec, placement)
        ie = fit_image_encoder(ie, lambda: ds.gallery("train").paths or ds.gallery().paths, cache.root, progress)
        images, failed = image_table(cache, ie, ds.gallery(), image_views, progress)
        triplets = {s: ds.triplets(s) for s in ds.splits}
        texts = text_table(cache, te, [t.text for ts in triplets.values() for t in ts], text_views, progress)
        return cls(ds, cache, ie, te, images, texts, triplets, failed, progress, placement)

    @classmethod
    def for_configs(cls, data: str | Path | Dataset, cache: FeatureCache, image_spec: str, text_spec: str,
                    configs: list[dict], progress: bool = True, images: str | Path | None = None,
                    placement: Placement | None = None) -> "Workspace":
        """:meth:`open` with the views the configured methods read (``views_needed``)."""
        placement = placed(placement)
        dims = FeatureDims.of(build_image_encoder(image_spec, placement), build_text_encoder(text_spec, placement))
        image_views, text_views = views_needed(configs, dims)
        return cls.open(data, cache, image_spec, text_spec, image_views, text_views, progress, images, placement)

    @classmethod
    def for_model(cls, data: str | Path | Dataset, model: Fusion, image_encoder, text_encoder, cache: FeatureCache,
                  split: str, progress: bool = True, also: Sequence[Fusion] = ()) -> "Workspace":
        """What a trained model (and the models ``also``: a re-ranker) reads of a data set: its images' views (all of
        them, for any gallery choice) and the texts of one split (``cirlab eval``)."""
        ds = data if isinstance(data, Dataset) else Dataset(data)
        models = [model, *also]
        views = tuple(sorted({v for m in models for v in (*m.image_views, *m.gallery_views)}))
        images, failed = image_table(cache, image_encoder, ds.gallery(), views, progress)
        triplets = {split: ds.triplets(split)}
        texts = text_table(cache, text_encoder, [t.text for t in triplets[split]],
                           tuple(sorted({v for m in models for v in m.text_views})), progress)
        return cls(ds, cache, image_encoder, text_encoder, images, texts, triplets, failed, progress)

    @property
    def dims(self) -> FeatureDims:
        return FeatureDims.of(self.image_encoder, self.text_encoder)

    def gallery_ids(self, split: str | None) -> list[str]:
        """The encoded images of a split (``None``: of the whole data set)."""
        return [i for i in self.dataset.gallery(split).ids if i in self.images.row]

    def queries(self, model: Fusion, split: str | None = None) -> QuerySide:
        """The query side for ``model``: the encoded references and texts; for a method that reads each text with its
        reference (``Fusion.writes_query_texts``), its texts of ``split``'s queries (None: every split's); for a
        method that makes its queries' inputs itself (``Fusion.reads_raw_queries``: DQU), its unified queries."""
        if model.writes_query_texts:
            every = [t for s, ts in self.triplets.items() if split in (None, s) for t in ts]
            return written_queries(model, self.images, self.text_encoder, [(t.reference, t.text) for t in every],
                                   self.progress)
        if not model.reads_raw_queries:
            return QuerySide(self.images, self.texts)
        from cirlab.training.unify import fit_captioner, unify_queries

        captions = self.dataset.captions
        if not len(model.captioner_map):
            train_ids = self.gallery_ids("train") if "train" in self.triplets else list(self.images.keys)
            fit_captioner(model, self.cache, self.text_encoder, self.images, captions, train_ids, self.progress,
                          self.image_encoder)
        setting = (model.unify, model.captions, hash(model.vocab_bytes.numpy().tobytes()))
        if setting not in self._unified:
            paths = dict(zip(self.dataset.gallery().ids, self.dataset.gallery().paths))
            every = [t for ts in self.triplets.values() for t in ts]
            self._unified[setting] = unify_queries(model, self.cache, self.image_encoder, self.text_encoder, self.images,
                                                   paths, captions, every, self.progress)
        return self._unified[setting]

    def add_split(self, name: str, triplets: list[Triplet]) -> str:
        """Further queries over the data set's images, evaluated as the split ``name`` (with ``gallery_split``
        naming the split whose images they rank: paraphrases of a split's queries); their new texts are encoded
        into the text table."""
        self.triplets[name] = triplets
        self.add_texts([t.text for t in triplets])
        self._unified.clear()  # DQU unifies every split's queries: these too
        return name

    def add_texts(self, texts: Sequence[str]) -> int:
        """Encode the texts the text table lacks into it (through the feature cache); how many were new."""
        new = sorted(set(texts) - set(self.texts.row))
        if new:
            extra = text_table(self.cache, self.text_encoder, new, tuple(self.texts.views), self.progress)
            self.texts = FeatureTable(self.texts.keys + extra.keys, {v: np.concatenate([x, extra.views[v]])
                                                                     for v, x in self.texts.views.items()})
        return len(new)

    def text_variants(self, split: str, augment, seed: int) -> dict[str, list[str]]:
        """Each text of ``split``'s triplets in ``augment``'s variants (``data.perturb``; none a text of the
        paraphrase bank, which measures what training never saw), encoded into the text table."""
        from cirlab.data.paraphrase import training_variants

        held_out = [t for name, ts in self.triplets.items() if name != split and "~" not in name for t in ts]
        variants = training_variants(augment, self.dataset.name, self.triplets[split], held_out, seed)
        self.add_texts([v for vs in variants.values() for v in vs])
        return variants

    def unlabelled(self, split: str, model: Fusion) -> Unlabelled:
        """What the zero-shot protocol lets ``model``'s preparation read (docs/zero-shot.md), through
        ``Dataset.zero_shot`` (made from images.jsonl alone): the images of ``split`` (the training split) and their
        captions; no triplet, no image or caption of another split. A workspace opened on that view reads it as is."""
        zs = self.dataset if "zero_shot" in self.dataset.meta \
            else self.dataset.zero_shot(split, captions=model.reads == "captions")
        ids = [i for i in zs.by_id if i in self.images.row]
        views = tuple(sorted(set(model.image_views) | set(model.gallery_views)))
        image_views = self.images.tensors(self.images.rows(ids), views) if model.reads == "images" else {}
        captions = sorted({zs.captions[i] for i in ids if zs.captions.get(i)}) if model.reads == "captions" else []
        pooled = torch.as_tensor(self.cache.text_features(self.text_encoder, captions, ("pooled",),
                                                          progress=self.progress)["pooled"]) if captions \
            else torch.zeros(0, self.text_encoder.dim)
        return Unlabelled(image_views, captions, pooled)

    def fit_text_head(self, model: Fusion, train_split: str = "train", test_split: str | None = "test"):
        """A text-to-image head for ``model`` on the captions of the training images (``training.align``);
        None where fewer than 8 of them have a caption. Its Recall@K is measured on ``test_split``'s images.
        Synthetic images (EmojiEdit's mirror pairs) are left out: their captions are made up, not names."""
        captions = {i: c for i, c in self.dataset.captions.items()
                    if not self.dataset.by_id[i].get("attributes", {}).get("synthetic")}
        splits = {x for r in self.dataset.images for x in record_splits(r)}
        train_ids, train_caps = caption_pairs(captions, self.gallery_ids(train_split if train_split in splits else None))
        if len(train_ids) < 8:
            return None
        test_ids, test_caps = caption_pairs(captions, self.gallery_ids(test_split)) if test_split in splits else ([], [])
        texts = text_table(self.cache, self.text_encoder, train_caps + test_caps, ("pooled",), self.progress)

        def pairs(ids, caps):
            with torch.inference_mode():
                views = to_device(self.images.tensors(self.images.rows(ids), model.gallery_views), module_device(model))
                images = model.embed_gallery(views).cpu()  # the head is small: it fits on the CPU
            return torch.from_numpy(texts.views["pooled"][texts.rows(caps)]).float(), images.clone()

        held_out = pairs(test_ids, test_caps) if test_ids else None
        return fit_text_head(*pairs(train_ids, train_caps), model.embed_dim, held_out=held_out)

    def evaluate(self, model: Fusion, split: str, exclude_reference: bool | None = None,
                 gallery_split: str | None | bool = True, backend: str | None = None, audit: bool = False,
                 rerank: Reranker | None = None) -> Rankings:
        """Recall@K on ``split``; the gallery is that split's images (``gallery_split=True``), another
        split's, or the whole data set's (``None``). The reference is excluded from its ranking as the
        data set's protocol says (``None``), or as given. ``backend``: an index backend to rank through
        instead of exact search. ``audit``: with the modality audit (``eval.audit``). ``rerank``: a second model
        reorders each query's first candidates (``cirlab.rerank``)."""
        if exclude_reference is None:
            exclude_reference = self.dataset.exclude_reference
        gallery = self.gallery_ids(split if gallery_split is True else gallery_split)
        queries = self.queries(model, split)
        second = dict(rerank=rerank, rerank_queries=self.queries(rerank.model, split)) if rerank else {}
        if not audit:
            return evaluate(model, self.triplets[split], self.images, queries, gallery,
                            exclude_reference=exclude_reference, backend=backend, **second)
        blank = blank_queries(model, queries, self.triplets[split], self.text_encoder,
                              self.texts if model.reads_raw_queries else None, self.progress)
        return evaluate_audited(model, self.triplets[split], self.images, queries, gallery, blank,
                                exclude_reference=exclude_reference, backend=backend, **second)


def train_method(ws: Workspace, method: str, config: str | Path | dict | None = None, out: str | Path | None = None,
                 progress: bool = True, train_split: str = "train", val_split: str | None = "val",
                 reuse: bool = False, text_head: bool = True, state_path: str | Path | None = None,
                 resume: bool = False, log_path: str | Path | None = None, pseudo: str | Path | None = None,
                 pseudo_config: dict | None = None) -> tuple[Fusion, TrainResult | None, dict]:
    """Train ``method`` on ``ws``; save to ``out``. With ``reuse``, a checkpoint at ``out`` trained on the
    same data, encoders and config is loaded instead of retrained. With ``text_head``, a text-to-image
    head is fitted afterwards on the training images' captions (where the data set has them).
    ``state_path`` / ``resume`` / ``log_path``: see :func:`train_fusion` (the log also gets a PNG plot).
    ``pseudo``: a stage-1 model (``stage1.pt`` or its folder) that makes pseudo triplets for paper 004's
    augmentation (``training.pseudo``; options in ``pseudo_config``); it must share this run's encoders."""
    cfg = method_config(method, config)
    data_id = ws.dataset.identity
    if fusion_methods.get(cfg["method"]).zero_shot:  # no triplet read: assembled, and prepared from
        # the training images or captions where the method reads them
        train_cfg = TrainConfig.from_dict(cfg["train"])
        seed_everything(train_cfg.seed)  # a mapping's initial weights too
        model, cfg["model"] = zero_shot_fusion(cfg["method"], ws.image_encoder, ws.text_encoder, cfg["model"])
        result = prepare_zero_shot(model, ws.unlabelled(train_split, model), ws.text_encoder, train_cfg, progress,
                                   ws.placement) if model.reads else TrainResult()
        meta = {"config": cfg, "data": data_id, "train": result.to_dict(), "zero_shot": True}
        if out:
            save_checkpoint(out, model, cfg["model"], cfg["train"], ws.image_encoder, ws.text_encoder, meta)
        return model, result, meta
    if train_split not in ws.triplets:
        why = " (image-caption data trains stage 1 only, with the align preset)" \
            if ws.dataset.meta.get("captions_only") else ""
        raise CirlabError(f"data set {ws.dataset.name} has no {train_split!r} triplets to train a fusion on{why}")
    rules = TextAugment.rules(TrainConfig.from_dict(cfg["train"]).text_augment)
    if reuse and out and Path(out).is_file():
        try:
            meta = read_checkpoint(out)["meta"]
            same_pseudo = meta.get("pseudo", {}).get("stage1") == (str(Path(pseudo).resolve()) if pseudo else None)
            if (meta.get("config") == cfg and meta.get("data") == data_id and same_pseudo
                    and meta.get("text_augment_rules") == rules and (not text_head or "text_head" in meta)):
                model, meta = load_checkpoint(out, ws.image_encoder, ws.text_encoder)
                return model, None, meta
        except CirlabError:
            pass  # stale or foreign file: retrain over it
    train_cfg = TrainConfig.from_dict(cfg["train"])
    seed_everything(train_cfg.seed)  # the initial weights too: a run must not depend on what ran before it
    model = build_fusion(cfg["method"], ws.dims, **cfg["model"])
    variants = _text_variants(ws, model, train_split, train_cfg)
    queries = ws.queries(model)  # DQU fits its captioner here, before training
    if val_split and val_split in ws.triplets and ws.triplets[val_split]:
        def validate(m: Fusion) -> dict[int, float]:
            return ws.evaluate(m, val_split).recall
    else:
        validate = None
    extra, pseudo_set, pcfg = None, None, None
    if pseudo:
        from cirlab.config import PseudoConfig
        from cirlab.training.pseudo import make_pseudo_triplets

        pcfg = PseudoConfig.from_dict(pseudo_config)
        scorer, _ = load_checkpoint(stage1_model_path(pseudo), ws.image_encoder, ws.text_encoder)
        pseudo_set = make_pseudo_triplets(scorer, ws.triplets[train_split], ws.images, ws.texts,
                                          ws.gallery_ids(train_split), pcfg)
        extra = pseudo_set.triplets
    result = train_fusion(model, ws.triplets[train_split], ws.images, queries, train_cfg, progress, validate,
                          state_path, resume, log_path, extra, pcfg.every if pcfg else 3, ws.placement, variants)
    if not ranks().main:  # a data-parallel run: rank 0 writes (training.parallel)
        return model, result, {"config": cfg, "data": data_id, "train": result.to_dict()}
    if log_path:
        from cirlab.eval.report import training_curves_png

        training_curves_png(Path(log_path).with_suffix(".png"), result.history, f"{cfg['method']} on {ws.dataset.name}")
    texts = [t.text for t in ws.triplets[train_split]]  # for spelling correction: the words and which follow which
    meta = {"config": cfg, "data": data_id, "train": result.to_dict(), "vocabulary": vocabulary(texts),
            "word_pairs": word_pairs(texts), **({"text_augment_rules": rules} if rules else {})}
    if pseudo_set is not None:
        meta["pseudo"] = {"stage1": str(Path(pseudo).resolve()), **pcfg.__dict__, **pseudo_set.stats()}
    fitted = ws.fit_text_head(model, train_split) if text_head else None
    if text_head:
        meta["text_head"] = fitted[1].to_dict() if fitted else None  # None: the data has no captions
    if out:
        save_checkpoint(out, model, cfg["model"], cfg["train"], ws.image_encoder, ws.text_encoder, meta,
                        text_head=head_state(fitted[0]) if fitted else None)
    return model, result, meta


def _text_variants(ws: Workspace, model: Fusion, split: str, cfg: TrainConfig) -> dict[str, list[str]] | None:
    """The training texts' augmented variants, encoded (``cfg.text_augment``), or None without augmentation."""
    augment = TextAugment.parse(cfg.text_augment)
    if not augment:
        return None
    if model.writes_query_texts or model.reads_raw_queries:
        raise CirlabError(f"{model.name} makes its own query texts from each raw text, so --text-augment (which reads "
                          "the encoded text table) cannot reach it; train it without")
    return ws.text_variants(split, augment, cfg.seed)
