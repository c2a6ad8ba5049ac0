"""Stage 1's tasks: one registered class each, with one interface (what the data must hold, the heads
the task adds, its loss on a batch), as open_clip's tasks and sentence-transformers' losses are.

- ``composed`` (paper 004): the batch classification loss of the stage-1 ``sum`` fusion on triplets;
- ``retrieval`` (paper 001, and image-text alignment): image-caption symmetric InfoNCE;
- ``attributes`` (paper 001): a multi-label head on the image vector, labels from the images' attributes;
- ``category`` (paper 001): residual adapters on both sides pulling an image and its category's name together.

A task's weight in the stage-1 config switches it on; a task the data cannot feed says why
(:meth:`Stage1Task.skip_reason`) and is skipped. Losses are added in the registry's order.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from cirlab.registry import Registry
from cirlab.training.losses import batch_infonce

stage1_tasks: Registry = Registry("stage-1 task")


def attribute_labels(attributes) -> set[str]:
    """``key=value`` labels of an image's attributes (nested objects and lists walked)."""
    out: set[str] = set()

    def walk(d: dict) -> None:
        for k, v in d.items():
            if isinstance(v, (str, int, bool)):
                out.add(f"{k}={v}")
            elif isinstance(v, dict):
                walk(v)
            elif isinstance(v, list):
                for x in v:
                    walk(x) if isinstance(x, dict) else out.add(f"{k}={x}")

    if isinstance(attributes, dict):
        walk(attributes)
    return out


def image_category(record: dict) -> str | None:
    """The category an image belongs to: its ``category``, else its attributes' category / base."""
    attrs = record.get("attributes") if isinstance(record.get("attributes"), dict) else {}
    value = record.get("category") or attrs.get("category") or attrs.get("base")
    return str(value) if value else None


class Adapter(nn.Module):
    """A residual adapter ``L2(v + W2 ReLU(W1 v))`` (CAFF's category-similarity adapters)."""

    def __init__(self, dim: int, hidden: int = 256) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, dim))
        nn.init.zeros_(self.net[2].weight)
        nn.init.zeros_(self.net[2].bias)

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(v + self.net(v), dim=-1)


@dataclass
class TaskData:
    """What the tasks read of the data set, prepared once: captions, the training images and their
    categories and attribute labels."""

    name: str
    caption_mode: bool  # image-caption data: no triplets
    train_split: str
    captions: dict[str, str]
    train_ids: set[str]
    records: dict[str, dict]
    categories: dict[str, str] = field(default_factory=dict)
    category_names: list[str] = field(default_factory=list)
    vocab: list[str] = field(default_factory=list)  # attribute labels of at least two training images

    def __post_init__(self) -> None:
        self.categories = {i: c for i in self.train_ids if (c := image_category(self.records.get(i, {})))}
        self.category_names = sorted(set(self.categories.values()))
        counts: dict[str, int] = {}
        for i in self.train_ids:
            for label in attribute_labels(self.records[i].get("attributes")):
                counts[label] = counts.get(label, 0) + 1
        self.vocab = sorted(k for k, c in counts.items() if c >= 2)[:1024]


@dataclass
class Batch:
    """One batch: its images' vectors out of the (tuned) image network, and for triplets the texts and
    targets. ``unique`` embeds each image of the batch once, for the tasks on single images."""

    fusion: nn.Module
    ids: list[str]  # references then targets (triplets), or the captioned images
    pooled: torch.Tensor
    images: object  # stage1.ImageSide (its ``row``: an image's row, the key that marks duplicate targets)
    texts: object  # stage1.TextSide
    triplets: tuple | None = None  # (references, texts, targets)
    _unique: tuple | None = None

    def unique(self) -> tuple[list[str], torch.Tensor]:
        if self._unique is None:
            first: dict[str, int] = {}
            for n, i in enumerate(self.ids):
                first.setdefault(i, n)
            self._unique = list(first), self.fusion.embed_gallery({"pooled": self.pooled[list(first.values())]})
        return self._unique


class Stage1Task:
    """The interface: ``skip_reason`` (None where the data can feed the task), ``modules`` (heads the
    task trains beside the fusion), ``loss`` (a scalar on a batch, or None where the batch has nothing
    for it)."""

    name = ""

    def __init__(self, data: TaskData, embed_dim: int, scale: float) -> None:
        self.data, self.embed_dim, self.scale = data, embed_dim, scale

    def skip_reason(self) -> str | None:
        return None

    def modules(self) -> dict[str, nn.Module]:
        return {}

    def loss(self, batch: Batch, heads: nn.ModuleDict) -> torch.Tensor | None:
        raise NotImplementedError


@stage1_tasks.register("composed")
class Composed(Stage1Task):
    """Paper 004's stage-1 objective: ``L2(x_r + t_m)`` against the target, batch classification loss."""

    name = "composed"

    def skip_reason(self) -> str | None:
        if self.data.caption_mode:
            return f"{self.data.name} has no {self.data.train_split!r} triplets (image-caption data)"
        return None

    def loss(self, batch: Batch, heads: nn.ModuleDict) -> torch.Tensor:
        refs, txts, tgts = batch.triplets
        n = len(refs)
        query = batch.fusion.compose({"pooled": batch.pooled[:n]}, {"pooled": batch.texts.pooled(txts)})
        target = batch.fusion.embed_gallery({"pooled": batch.pooled[n:]})
        keys = torch.as_tensor([batch.images.row[t] for t in tgts])
        return batch_infonce(query, target, self.scale, keys)


@stage1_tasks.register("retrieval")
class Retrieval(Stage1Task):
    """Image-caption retrieval, symmetric InfoNCE; alone, image-text alignment (a small CLIP)."""

    name = "retrieval"

    def skip_reason(self) -> str | None:
        return "fewer than 8 images with captions" if len(self.data.captions) < 8 else None

    def loss(self, batch: Batch, heads: nn.ModuleDict) -> torch.Tensor | None:
        ids, vectors = batch.unique()
        sel = [n for n, i in enumerate(ids) if i in self.data.captions and i in self.data.train_ids]
        if len(sel) < 2:
            return None
        caps = [self.data.captions[ids[n]] for n in sel]
        text_vec = batch.fusion.project_text(batch.texts.pooled(caps))
        keys = torch.as_tensor([hash(c) for c in caps])  # two images with one caption: not negatives
        return 0.5 * (batch_infonce(vectors[sel], text_vec, self.scale, keys)
                      + batch_infonce(text_vec, vectors[sel], self.scale, keys))


@stage1_tasks.register("attributes")
class Attributes(Stage1Task):
    """Multi-label prediction of the images' ``key=value`` attribute labels from the image vector."""

    name = "attributes"

    def __init__(self, data: TaskData, embed_dim: int, scale: float) -> None:
        super().__init__(data, embed_dim, scale)
        row = {k: n for n, k in enumerate(data.vocab)}
        self.multi_hot = {i: torch.zeros(len(data.vocab)) for i in data.train_ids}
        for i, v in self.multi_hot.items():
            for label in attribute_labels(data.records[i].get("attributes")):
                if label in row:
                    v[row[label]] = 1.0

    def skip_reason(self) -> str | None:
        return "fewer than 2 attribute labels" if len(self.data.vocab) < 2 else None

    def modules(self) -> dict[str, nn.Module]:
        return {"attributes": nn.Linear(self.embed_dim, len(self.data.vocab))}

    def loss(self, batch: Batch, heads: nn.ModuleDict) -> torch.Tensor | None:
        ids, vectors = batch.unique()
        sel = [n for n, i in enumerate(ids) if i in self.multi_hot]
        if not sel:
            return None
        labels = torch.stack([self.multi_hot[ids[n]] for n in sel]).to(vectors.device)
        return nn.functional.binary_cross_entropy_with_logits(heads["attributes"](vectors[sel]), labels)


@stage1_tasks.register("category")
class Category(Stage1Task):
    """CAFF's category similarity: adapted image vectors classified against their adapted category names."""

    name = "category"

    def __init__(self, data: TaskData, embed_dim: int, scale: float) -> None:
        super().__init__(data, embed_dim, scale)
        self.row = {c: n for n, c in enumerate(data.category_names)}

    def skip_reason(self) -> str | None:
        return "fewer than 2 image categories" if len(self.data.category_names) < 2 else None

    def modules(self) -> dict[str, nn.Module]:
        return {"image_adapter": Adapter(self.embed_dim), "text_adapter": Adapter(self.embed_dim)}

    def loss(self, batch: Batch, heads: nn.ModuleDict) -> torch.Tensor | None:
        ids, vectors = batch.unique()
        sel = [n for n, i in enumerate(ids) if i in self.data.categories and i in self.data.train_ids]
        if not sel:
            return None
        names = heads["text_adapter"](batch.fusion.project_text(batch.texts.pooled(self.data.category_names)))
        logits = self.scale * heads["image_adapter"](vectors[sel]) @ names.t()
        labels = torch.as_tensor([self.row[self.data.categories[ids[n]]] for n in sel], device=logits.device)
        return nn.functional.cross_entropy(logits, labels)
