"""Stage 1 (paper 004): adapt the encoders to the domain before a fusion is trained on them.

The model is paper 004's stage-1 fusion, ``phi = L2(x_r + t_m)`` (cirlab's ``sum``: our encoders
differ in width, so each side has a linear projection into one space), trained with the batch
classification loss at logit scale 100. ``tune`` picks what adapts: ``none`` (only the
projections), ``text``, ``image`` or ``both`` (004's ablation). ``image_blocks`` MBConv blocks plus
the head convolution of EfficientNet-Lite train, or ``"all"`` of it (stem included: end-to-end),
and ``text_layers`` transformer layers of the text model. The image encoder is shared: its tuned
weights make both the reference (query) and the gallery (target) vectors.

Without ``augment`` the frozen part of the image network runs once per image and its output is
kept in memory (the fast path). With ``augment`` (``scale=0.2,blur=1.5,noise=0.03``, see
``training/augment.py``) stage 1 keeps the images' pixels in memory at the network's input size
and every batch reads them afresh: augmented, through the frozen trunk (no gradient) and the tuned
tail. Validation reads them unaugmented. The text model runs forward on every batch, with
gradients stopping at the first trainable layer. ``train.accumulate`` splits a batch into
micro-batches when it does not fit in memory, and ``gradient_checkpointing`` recomputes the tuned
image layers' activations in the backward pass instead of keeping them. A ``clip:`` encoder tunes
either tower whole (``"all"``) or its last layers (preset ``clip_ft``: paper 004's recipe).

Stage 1 is also where the encoders learn the domain through CAFF's tasks (paper 001), each
switched on by a weight in ``tasks``: ``composed`` (004's objective above), ``retrieval``
(image-caption symmetric InfoNCE: with only this task stage 1 is image-text *alignment*, a small
CLIP on our offline encoders), ``attributes`` (a multi-label head on the image vector, labels from
the images' ``attributes``) and ``category`` (residual adapters on both sides pulling an image and
its category's text together). The auxiliary tasks use the images of each composed batch.

Outputs, in one folder: ``image.pt`` / ``text.pt`` (the tuned encoders; use them as
``tuned:/folder/image.pt``), ``stage1.pt`` (the stage-1 ``sum`` model on those encoders, a normal
cirlab checkpoint: it scores pseudo triplets and can be evaluated) and ``stage1.json``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from cirlab.checkpoint import save_checkpoint
from cirlab.data.features import image_table, text_table
from cirlab.data.paraphrase import training_variants
from cirlab.data.perturb import TextAugment
from cirlab.data.triplets import Dataset
from cirlab.devices import Placement, loader_workers, placed, tensor_to
from cirlab.encoders import build_image_encoder, build_text_encoder, fit_image_encoder
from cirlab.encoders.base import new_encoder
from cirlab.encoders.cache import FeatureCache
from cirlab.encoders.tuned import load_tuned, save_tuned
from cirlab.errors import CirlabError
from cirlab.eval.evaluate import gallery_index, rank, ranked
from cirlab.eval.metrics import DEFAULT_KS, recall_at_k
from cirlab.files import atomic_write_text
from cirlab.fusion import FeatureDims, build_fusion
from cirlab.images import UnreadableImage, decode_images
from cirlab.training.augment import Augment
from cirlab.training.stage1_config import Stage1Config, stage1_config
from cirlab.training.stage1_tasks import Batch, TaskData, stage1_tasks
from cirlab.training.trainer import TrainResult, epoch_wordings, fit, seed_everything

def once_each(keys, encode) -> torch.Tensor:
    """``encode`` run on the distinct ``keys`` only (a batch repeats images and texts), rows back in ``keys``' order."""
    unique = sorted(set(keys))
    where = {k: n for n, k in enumerate(unique)}
    return encode(unique)[torch.as_tensor([where[k] for k in keys])]


class ImageSide:
    """Image vectors for stage 1, from one row of ``data`` per image: frozen pooled features (``blocks``
    0), the frozen trunk's outputs run through the trainable tail, or (``augment`` given) the images'
    normalised pixels, augmented while ``training``, then trunk and tail."""

    def __init__(self, encoder, ids: list[str], data, blocks: int | str, augment: Augment | None = None,
                 device: torch.device = torch.device("cpu")) -> None:
        self.encoder, self.blocks, self.data, self.augment, self.device = encoder, blocks, data, augment, device
        self.row = {i: n for n, i in enumerate(ids)}
        self.training = False
        if augment is not None:  # the normalised values of a white background and of black
            from PIL import Image

            self.white, self.black = (encoder.pixels([Image.new("RGB", (4, 4), c)])[0, :, 0, 0].to(device)
                                      for c in ((255, 255, 255), (0, 0, 0)))

    def pooled(self, ids) -> torch.Tensor:
        """Pooled vectors of ``ids``; an image repeated in the batch runs through the network once."""
        def encode(rows: list[int]) -> torch.Tensor:
            x = tensor_to(self.data[torch.as_tensor(rows)], self.device).float()
            if self.augment is not None:
                if self.training:
                    x = self.augment(x, self.white, self.black)
                x = self.encoder.trunk_of_pixels(x, self.blocks)
            if self.blocks:
                x = self.encoder.tail(x, self.blocks)
            return x

        return once_each([self.row[i] for i in ids], encode)


# the frozen layers' outputs kept for reuse, at most this many values (4 bytes each): EmojiEdit's texts and their
# augmented wordings take about 60M; a text past the bound runs through the frozen layers each time it is read
FROZEN_STATES_MAX = 256 * 2**20


class TextSide:
    """Text vectors for stage 1: cached pooled vectors (a frozen text model), or a tuning model's, where the layers
    before the tuned ones run once a text (``frozen_states``; kept up to :data:`FROZEN_STATES_MAX` values) and only
    the tuned ones run on every batch."""

    def __init__(self, encoder, table=None, device: torch.device = torch.device("cpu"), layers: int | str = 0) -> None:
        self.encoder, self.table, self.device, self.layers = encoder, table, device, layers
        self.frozen: dict[str, torch.Tensor] = {}
        self.kept = 0

    def pooled(self, texts) -> torch.Tensor:
        if self.table is None:  # a text repeated in the batch runs through the model once
            partial = isinstance(self.layers, int) and self.layers > 0 and hasattr(self.encoder, "frozen_states")
            return once_each(list(texts), self._tail if partial else self.encoder.pooled_with_grad)
        return tensor_to(torch.from_numpy(self.table.views["pooled"][self.table.rows(list(texts))]), self.device).float()

    def _tail(self, texts: list[str]) -> torch.Tensor:
        missing = [t for t in texts if t not in self.frozen]
        states = dict(zip(missing, self.encoder.frozen_states(missing, self.layers))) if missing else {}
        for text, value in states.items():
            if self.kept + value.numel() <= FROZEN_STATES_MAX:
                self.frozen[text] = value
                self.kept += value.numel()
        return self.encoder.pooled_from_frozen([self.frozen.get(t, states.get(t)) for t in texts], self.layers)


class Stage1Model(nn.Module):
    """The ``sum`` fusion plus the encoder layers being tuned (kept in eval mode: BatchNorm statistics
    and dropout stay as pretrained; only weights move)."""

    def __init__(self, fusion, image_parts: dict, text_parts: dict, images: ImageSide | None = None) -> None:
        super().__init__()
        self.fusion = fusion
        self.image_tuned = nn.ParameterList(image_parts.values())
        self.text_tuned = nn.ParameterList(text_parts.values())
        self.frozen_modules: list[nn.Module] = []
        self.aux = nn.ModuleDict()  # the domain tasks' heads
        self.images = images  # augments while training

    def train(self, mode: bool = True):
        super().train(mode)
        for m in self.frozen_modules:
            m.eval()
        if self.images is not None:
            self.images.training = mode
        return self


@dataclass
class Stage1Result:
    out: Path
    image_spec: str
    text_spec: str
    train: TrainResult
    seconds: dict = field(default_factory=dict)
    val_recall: dict = field(default_factory=dict)  # composed Recall@K of the stage-1 model on the val split
    tasks: dict = field(default_factory=dict)  # the task weights that ran
    skipped: dict = field(default_factory=dict)  # tasks asked for that the data cannot feed, and why
    alignment: dict = field(default_factory=dict)  # caption -> image Recall@K before/after, train and val images

    def summary(self) -> str:
        """What ``cirlab train --stage 1`` prints: time, tasks, validation and alignment recall, the specs."""
        rec = "  ".join(f"R@{k} {v:.1f}" for k, v in self.val_recall.items())
        tasks = ", ".join(f"{k} {w:g}" for k, w in self.tasks.items())
        skipped = "".join(f"; skipped {k}: {why}" for k, why in self.skipped.items())
        align = "".join(f"\ncaption -> image recall, {split} images ({r['images']}): "
                        + "  ".join(f"R@{k} {r['before'][k]:.1f} -> {r['after'][k]:.1f}" for k in r["after"])
                        for split, r in self.alignment.items())
        return (f"stage 1 ({len(self.train.history)} epochs, {self.seconds['total']:.0f} s: "
                f"{self.seconds['features']:.0f} s features, {self.seconds['train']:.0f} s training; tasks "
                f"{tasks}{skipped}); val {rec or '(no val split)'}{align}\nencoders: --image-encoder {self.image_spec} "
                f"--text-encoder {self.text_spec}\nstage-1 model: {self.out / 'stage1.pt'}; metrics: "
                f"{self.out / 'stage1-metrics.jsonl'} and .png")

    def to_dict(self) -> dict:
        return {"out": str(self.out), "image_spec": self.image_spec, "text_spec": self.text_spec,
                "train": self.train.to_dict(), "seconds": self.seconds, "val_recall": self.val_recall,
                "tasks": self.tasks, "skipped_tasks": self.skipped, "alignment": self.alignment}


def _trunk_outputs(encoder, ids: list[str], paths: dict, blocks: int | str, progress: bool, batch: int = 32,
                   pixels: bool = False, device: torch.device = torch.device("cpu")):
    """The frozen trunk's output (``pixels``: the normalised input) for each readable image, float16, one
    CPU tensor (computed on ``device``); and the ids kept."""
    kept, parts = [], []
    what = "pixels" if pixels else "frozen trunk"
    bar = tqdm(total=len(ids), desc=f"stage 1: {what} of {encoder.spec}", disable=not progress, unit="img")
    for s, loaded in zip(range(0, len(ids), batch), decode_images([paths[i] for i in ids], batch,
                                                                  loader_workers(device))):
        chunk = [i for i, im in zip(ids[s:s + batch], loaded) if not isinstance(im, UnreadableImage)]
        images = [im for im in loaded if not isinstance(im, UnreadableImage)]
        if images:
            with torch.inference_mode():
                x = encoder.pixels(images)
                if not pixels:
                    x = encoder.trunk_of_pixels(tensor_to(x, device), blocks).cpu()
                parts.append(x.to(torch.float16))
            kept += chunk
        bar.update(len(ids[s:s + batch]))
    bar.close()
    if not parts:
        raise CirlabError("no readable training image for stage 1")
    return kept, torch.cat(parts)


def stage1_encoders(folder: str | Path) -> tuple[str, str]:
    """The image and text encoder specs a stage-1 folder tuned (from its ``stage1.json``)."""
    info = Path(folder) / "stage1.json"
    if not info.is_file():
        raise CirlabError(f"{folder} holds no stage1.json: it is not a folder stage 1 wrote")
    specs = json.loads(info.read_text())
    return specs["image_spec"], specs["text_spec"]


@dataclass
class Tuning:
    """The encoders stage 1 runs, and the parameters of each that it tunes (``blocks``/``layers`` 0: frozen)."""

    image: object
    text: object
    image_parts: dict
    text_parts: dict
    blocks: int | str
    layers: int | str


@dataclass
class Stage1Data:
    """What stage 1 trains and validates on: the images' and texts' sides, the tasks' data, the triplets of the
    splits used (no training triplets in an image-caption file, ``caption_mode``) and the validation split's
    gallery."""

    images: ImageSide
    texts: TextSide
    tasks: TaskData
    triplets: dict
    caption_mode: bool
    val_split: str | None
    val_gallery: list[str]
    augment: Augment
    variants: dict = field(default_factory=dict)  # training text -> its augmented wordings (``train.text_augment``)


def run_stage1(data: str | Path | Dataset, out: str | Path, cache: FeatureCache, image_spec: str, text_spec: str,
               config: Stage1Config | dict | None = None, progress: bool = True, train_split: str = "train",
               val_split: str | None = "val", resume: bool = False, images: str | Path | None = None,
               placement: Placement | None = None, reuse: bool = False) -> Stage1Result:
    """Fine-tune per ``config`` (a :class:`Stage1Config`, or a dict of overrides of its defaults) on a data set's
    training triplets (or, for image-caption data, its captioned training images); keep the epoch of best
    validation recall; write the tuned encoders and the stage-1 model to ``out``. ``images``: the image folder of a
    JSONL ``data``. ``placement``: where and how the steps run (:func:`cirlab.training.trainer.fit`; None: the
    defaults'); the tuned encoders train there, the frozen ones infer there, and every file written holds CPU
    tensors. ``reuse``: a finished run in ``out`` of the same config on the same data is read back, not rerun."""
    cfg = stage1_config(config)
    placement = placed(placement)
    ds = data if isinstance(data, Dataset) else Dataset.open(data, images)
    out = Path(out)
    if reuse and not resume and (done := finished_stage1(out, cfg, ds, image_spec, text_spec)):
        return done
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    seed_everything(cfg.train.seed)
    tuning = prepare_encoders(cfg, image_spec, text_spec, ds, cache, train_split, placement, progress)
    sides = prepare_data(cfg, ds, tuning, cache, train_split, val_split, placement.device, progress)
    tasks, skipped = stage1_task_set(cfg, sides.tasks, ds.name)
    seconds = {"features": time.perf_counter() - t0}
    t1 = time.perf_counter()
    model, result, alignment = train_stage1(cfg, ds, tuning, sides, tasks, out, resume, placement, progress)
    seconds["train"] = time.perf_counter() - t1
    image_enc, text_enc = save_stage1(cfg, ds, tuning, model.fusion, result, skipped, tasks, sides.augment, out)
    seconds["total"] = time.perf_counter() - t0
    # the kept weights' validation recall, as fit recorded it: the best epoch's row, else the last one's
    kept = result.history[result.best_epoch - 1 if cfg.train.select_best and result.best_epoch else -1]
    val_recall = {int(k[6:]): v for k, v in kept.items() if k.startswith("val_R@")}
    res = Stage1Result(out, image_enc.spec, text_enc.spec, result, seconds, val_recall,
                       {name: cfg.tasks[name] for name in tasks}, skipped, alignment)
    rules = TextAugment.rules(cfg.train.text_augment)
    atomic_write_text(out / "stage1.json", json.dumps({"config": cfg.to_dict(), "data": ds.identity,
                                                       "base_specs": [image_spec, text_spec], **res.to_dict(),
                                                       **({"text_augment_rules": rules} if rules else {})}, indent=1))
    return res


def finished_stage1(out: Path, cfg: Stage1Config, ds: Dataset, image_spec: str, text_spec: str) -> Stage1Result | None:
    """The run recorded in ``out/stage1.json`` if it used ``cfg`` on ``ds`` from these encoders and its files are
    all there; else None."""
    try:
        done = json.loads((out / "stage1.json").read_text())
    except (OSError, ValueError):
        return None
    files = ["stage1.pt"] + ["image.pt"] * cfg.tunes_image + ["text.pt"] * cfg.tunes_text
    same = json.loads(json.dumps({"config": cfg.to_dict(), "data": ds.identity}))  # as read back from JSON
    if (not isinstance(done, dict) or done.get("config") != same["config"] or done.get("data") != same["data"]
            or done.get("base_specs") != [image_spec, text_spec] or not all((out / f).is_file() for f in files)
            or done.get("text_augment_rules") != TextAugment.rules(cfg.train.text_augment)):
        return None
    train = TrainResult(**{k: v for k, v in done["train"].items() if k in TrainResult.__dataclass_fields__})
    return Stage1Result(out, done["image_spec"], done["text_spec"], train, done["seconds"],
                        {int(k): v for k, v in done["val_recall"].items()}, done["tasks"], done["skipped_tasks"],
                        done["alignment"])


def prepare_encoders(cfg: Stage1Config, image_spec: str, text_spec: str, ds: Dataset, cache: FeatureCache,
                     train_split: str, placement: Placement, progress: bool) -> Tuning:
    """The encoders: a new instance of each one that tunes (its tuned parameters trainable, on the device), the
    shared inference instance of a frozen one."""
    image_enc = new_encoder("image", image_spec) if cfg.tunes_image else build_image_encoder(image_spec, placement)
    image_enc = fit_image_encoder(image_enc, lambda: ds.gallery(train_split).paths or ds.gallery().paths, cache.root,
                                  progress)
    text_enc = new_encoder("text", text_spec) if cfg.tunes_text else build_text_encoder(text_spec, placement)
    for enc, tuned in ((image_enc, cfg.tunes_image), (text_enc, cfg.tunes_text)):
        if tuned and not hasattr(enc, "tunable"):
            raise CirlabError(f"{enc.spec} cannot be fine-tuned here (supported: efficientnet_lite*, clip:, minilm, hf "
                              "text models)")
    blocks, layers = (cfg.image_blocks if cfg.tunes_image else 0), (cfg.text_layers if cfg.tunes_text else 0)
    if cfg.tunes_image and cfg.gradient_checkpointing:
        if not hasattr(image_enc, "checkpointing"):
            raise CirlabError(f"{image_enc.spec} has no gradient checkpointing here (efficientnet_lite*, clip: do)")
        image_enc.checkpointing = True
    image_parts = image_enc.tunable(blocks) if cfg.tunes_image else {}
    text_parts = text_enc.tunable(layers) if cfg.tunes_text else {}
    for p in list(image_parts.values()) + list(text_parts.values()):
        p.requires_grad_(True)
    for enc, tuned in ((image_enc, cfg.tunes_image), (text_enc, cfg.tunes_text)):
        if tuned:
            enc.model.to(placement.device)
    return Tuning(image_enc, text_enc, image_parts, text_parts, blocks, layers)


def prepare_data(cfg: Stage1Config, ds: Dataset, tuning: Tuning, cache: FeatureCache, train_split: str,
                 val_split: str | None, device: torch.device, progress: bool) -> Stage1Data:
    """The images stage 1 reads (the frozen trunk's outputs, the pixels where it augments, else cached pooled
    vectors) and the texts (cached, or run through a tuned text model every batch)."""
    triplets = {s: ds.triplets(s) for s in (train_split, val_split) if s and s in ds.splits}
    caption_mode = train_split not in triplets  # an image-caption file: alignment and the other image tasks
    gallery = ds.gallery()
    paths = dict(zip(gallery.ids, gallery.paths))
    val_gallery = ds.gallery(val_split).ids if val_split in triplets or caption_mode else []
    if caption_mode:
        needed = sorted(set(ds.gallery(train_split).ids) | set(val_gallery))
    else:
        needed = sorted({x for t in triplets[train_split] for x in (t.reference, *t.targets[:1])} | set(val_gallery)
                        | {t.reference for t in triplets.get(val_split, [])})
    needed = [i for i in needed if i in paths]
    image_enc = tuning.image
    augment = Augment.parse(cfg.augment) if cfg.tunes_image else Augment()
    if augment and not hasattr(image_enc, "trunk_of_pixels"):
        raise CirlabError(f"{image_enc.spec} cannot be trained from augmented images (supported: efficientnet_lite*, "
                          "clip:)")
    if cfg.tunes_image:
        kept, trunk = _trunk_outputs(image_enc, needed, paths, tuning.blocks, progress, pixels=bool(augment),
                                     device=device)
        images = ImageSide(image_enc, kept, trunk, tuning.blocks, augment if augment else None, device)
    else:
        table, _ = image_table(cache, image_enc, gallery.subset(needed), ("pooled",), progress)
        images = ImageSide(image_enc, table.keys, torch.from_numpy(table.views["pooled"]), 0, device=device)
    data = TaskData(ds.name, caption_mode, train_split, {i: c for i, c in ds.captions.items() if i in images.row},
                    set(ds.gallery(train_split).ids) & set(images.row), ds.by_id)
    variants = _text_variants(cfg, ds, train_split, triplets.get(train_split, []))
    all_texts = [t.text for ts in triplets.values() for t in ts] + list(data.captions.values()) + data.category_names
    all_texts += [v for vs in variants.values() for v in vs]
    table = None if cfg.tunes_text else text_table(cache, tuning.text, all_texts, ("pooled",), progress)
    return Stage1Data(images, TextSide(tuning.text, table, device, tuning.layers), data, triplets, caption_mode, val_split,
                      val_gallery, augment, variants)


def _text_variants(cfg: Stage1Config, ds: Dataset, train_split: str, train: list) -> dict[str, list[str]]:
    """The training texts' augmented wordings (``train.text_augment``; none a text of the paraphrase bank), as stage 2
    draws them: each epoch a triplet reads its own text with probability ``keep``, else one of these."""
    augment = TextAugment.parse(cfg.train.text_augment)
    if not augment or not train:
        return {}
    others = [t for s in ds.splits if s != train_split for t in ds.triplets(s)]
    return training_variants(augment, ds.name, train, others, cfg.train.seed)


def stage1_task_set(cfg: Stage1Config, data: TaskData, name: str) -> tuple[dict, dict]:
    """The tasks with a weight that this data can feed (in the registry's order: heads are built and losses added
    in it), and those it cannot, with why."""
    tasks, skipped = {}, {}
    for task_name in stage1_tasks.in_order():
        if cfg.tasks.get(task_name):
            task = stage1_tasks.get(task_name)(data, cfg.embed_dim, cfg.train.logit_scale)
            why = task.skip_reason()
            if why:
                skipped[task_name] = why
            else:
                tasks[task_name] = task
    if not tasks:
        raise CirlabError(f"no stage-1 task can run on {name}: {skipped or 'every task weight is 0'}")
    return tasks, skipped


def train_stage1(cfg: Stage1Config, ds: Dataset, tuning: Tuning, sides: Stage1Data, tasks: dict, out: Path,
                 resume: bool, placement: Placement, progress: bool) -> tuple["Stage1Model", TrainResult, dict]:
    """The stage-1 model (the ``sum`` fusion, the tuned layers, the tasks' heads) trained by :func:`fit`; and the
    caption -> image recall before and after, on the training and validation images that have captions."""
    images, texts, captions = sides.images, sides.texts, sides.tasks.captions
    if sides.caption_mode:  # one training item per captioned training image
        usable = sorted(i for i in sides.tasks.train_ids if i in captions)
    else:
        usable = [(t.reference, t.text, next(x for x in t.targets if x in images.row))
                  for t in sides.triplets[sides.tasks.train_split]
                  if t.reference in images.row and any(x in images.row for x in t.targets)]
    said = {"texts": None}  # this epoch's wording of each item (text augmentation), else its own
    if len(usable) < 2:
        raise CirlabError(f"only {len(usable)} usable training {'image' if sides.caption_mode else 'triplet'}(s) for "
                          "stage 1")
    device = placement.device
    fusion = build_fusion("sum", FeatureDims.of(tuning.image, tuning.text), embed_dim=cfg.embed_dim).to(device)
    model = Stage1Model(fusion, tuning.image_parts, tuning.text_parts, images)
    model.frozen_modules += [enc.model for enc, tuned in ((tuning.image, cfg.tunes_image), (tuning.text, cfg.tunes_text))
                             if tuned]
    for task in tasks.values():
        model.aux.update(task.modules())

    def batch_loss(rows: np.ndarray) -> torch.Tensor:
        if sides.caption_mode:
            ids, triples = [usable[r] for r in rows], None
        else:
            triples = tuple(zip(*(usable[r] for r in rows)))
            if said["texts"] is not None:
                triples = (triples[0], tuple(said["texts"][r] for r in rows), triples[2])
            ids = list(triples[0]) + list(triples[2])  # one pass of the tail for references and targets
        batch = Batch(fusion, ids, images.pooled(ids), images, texts, triples)
        loss = torch.zeros((), device=device)
        for name, task in tasks.items():
            term = task.loss(batch, model.aux)
            if term is not None:
                loss = loss + cfg.tasks[name] * term
        return loss

    validate = None
    if sides.val_split in sides.triplets and sides.triplets[sides.val_split]:
        val = [t for t in sides.triplets[sides.val_split] if t.reference in images.row]
        val_ids = [g for g in sides.val_gallery if g in images.row]

        @torch.no_grad()
        def validate(_module) -> dict[int, float]:
            return _recall(fusion, images, texts, val, val_ids, ds.exclude_reference)

    aligned = {"train": sorted(i for i in sides.tasks.train_ids if i in captions),
               "val": sorted(i for i in sides.val_gallery if i in captions and i in images.row)}
    aligned = {k: v for k, v in aligned.items() if v}
    before = {k: _text_to_image_recall(fusion, images, texts, v, captions) for k, v in aligned.items()}
    groups = [{"params": list(fusion.parameters()) + list(model.aux.parameters()), "lr_scale": cfg.head_lr_scale}]
    if tuning.image_parts or tuning.text_parts:
        groups.append({"params": list(tuning.image_parts.values()) + list(tuning.text_parts.values()),
                       "lr_scale": 1.0})
    def on_epoch(epoch: int) -> None:  # a function of the seed and the epoch: a resumed run draws the same
        if sides.variants and not sides.caption_mode:
            own = [text for _, text, _ in usable]
            said["texts"] = epoch_wordings(own, [sides.variants.get(t, []) for t in own],
                                           TextAugment.parse(cfg.train.text_augment).keep, cfg.train.seed, epoch)

    result = fit(model, len(usable), batch_loss, cfg.train, progress, validate, out / "stage1-state.pt", resume,
                 out / "stage1-metrics.jsonl", desc=f"stage 1 ({cfg.tune})", param_groups=groups,
                 placement=placement, on_epoch=on_epoch)
    alignment = {k: {"images": len(v), "before": before[k],
                     "after": _text_to_image_recall(fusion, images, texts, v, captions)} for k, v in aligned.items()}
    from cirlab.eval.report import training_curves_png

    training_curves_png(out / "stage1-metrics.png", result.history, f"stage 1, tune {cfg.tune}, on {ds.name}")
    return model, result, alignment


def save_stage1(cfg: Stage1Config, ds: Dataset, tuning: Tuning, fusion, result: TrainResult, skipped: dict,
                tasks: dict, augment: Augment, out: Path) -> tuple[object, object]:
    """Write the tuned encoders (``image.pt``, ``text.pt``) and the stage-1 model (``stage1.pt``) on them; the
    encoders as read back from those files (a frozen one as it was)."""
    text_augment = TextAugment.parse(cfg.train.text_augment)
    meta = {"stage1": {"tune": cfg.tune, "image_blocks": tuning.blocks, "text_layers": tuning.layers, "data": ds.name,
                       "augment": augment.spec, **({"text_augment": text_augment.spec} if text_augment else {}),
                       "tasks": {name: cfg.tasks[name] for name in tasks}, "skipped_tasks": skipped,
                       **({"zero_shot": ds.meta["zero_shot"]} if "zero_shot" in ds.meta else {})}}
    image_enc, text_enc = tuning.image, tuning.text
    if cfg.tunes_image:
        save_tuned(out / "image.pt", "image", image_enc, tuning.blocks, meta)
        image_enc = load_tuned(out / "image.pt", "image")
    if cfg.tunes_text:
        save_tuned(out / "text.pt", "text", text_enc, tuning.layers, meta)
        text_enc = load_tuned(out / "text.pt", "text")
    train = cfg.to_dict()["train"]
    save_checkpoint(out / "stage1.pt", fusion, {"embed_dim": cfg.embed_dim}, train, image_enc, text_enc,
                    {"config": {"method": "sum", "model": {"embed_dim": cfg.embed_dim}, "train": train},
                     "data": {"name": ds.name}, "train": result.to_dict(), **meta})
    return image_enc, text_enc


def _recall(fusion, images: ImageSide, texts: TextSide, triplets, gallery_ids: list[str], exclude_reference: bool,
            batch: int = 256) -> dict[int, float]:
    """Recall@K of the stage-1 model on a split (the same ranking as evaluation elsewhere: exact top-k)."""
    g = torch.cat([fusion.embed_gallery({"pooled": images.pooled(gallery_ids[s:s + batch])}).cpu()
                   for s in range(0, len(gallery_ids), batch)]).numpy()
    q = torch.cat([fusion.compose({"pooled": images.pooled([t.reference for t in triplets[s:s + batch]])},
                                  {"pooled": texts.pooled([t.text for t in triplets[s:s + batch]])}).cpu()
                   for s in range(0, len(triplets), batch)]).numpy()
    return rank(q, g, gallery_ids, triplets, DEFAULT_KS, exclude_reference, keep=max(DEFAULT_KS)).recall


@torch.no_grad()
def _text_to_image_recall(fusion, images: ImageSide, texts: TextSide, ids: list[str], captions: dict[str, str],
                          ks=(1, 5, 10)) -> dict[int, float]:
    """Caption -> image Recall@K in the stage-1 space (``L2(W_t c)`` against ``L2(W_i x)``); an image
    whose caption another image shares counts any of them as a hit."""
    if not ids:
        return {}
    g = torch.cat([fusion.embed_gallery({"pooled": images.pooled(ids[s:s + 256])}) for s in range(0, len(ids), 256)])
    caps = [captions[i] for i in ids]
    t = torch.cat([fusion.project_text(texts.pooled(caps[s:s + 256])) for s in range(0, len(caps), 256)])
    top, _ = ranked(gallery_index(g.cpu().numpy(), ids), t.cpu().numpy(), max(ks))
    same = {}
    for n, c in enumerate(caps):
        same.setdefault(c, []).append(n)
    return recall_at_k(top, [same[c] for c in caps], ks)
