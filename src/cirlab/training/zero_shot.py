"""Preparing a zero-shot method (``fusion.zero_shot``) within the zero-shot protocol (docs/zero-shot.md): what it may
read is the training split's images and their captions, never a triplet.

- a training-free method (``reads`` empty) is only assembled;
- the text-shift proxy keeps the training captions as its caption bank;
- Pic2Word and LinCIR train their mapping to a pseudo-word (``fusion.zero_shot.MappedPseudoWord.task``): InfoNCE
  between the prompt read with the mapped pseudo-word and its target, through the frozen text encoder, so gradients
  reach the mapping only.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from cirlab.config import TrainConfig
from cirlab.devices import Placement, placed, to_device
from cirlab.errors import CirlabError
from cirlab.fusion.base import Views
from cirlab.fusion.zero_shot import MappedPseudoWord, ZeroShot, ZeroShotTextShift
from cirlab.training.losses import batch_infonce
from cirlab.training.trainer import OPTIMIZERS, TrainResult, seed_everything


@dataclass
class Unlabelled:
    """What the zero-shot protocol lets a run read: the training images' views and their captions (with the text
    encoder's pooled vectors of the captions)."""

    image_views: Views
    captions: list[str]
    caption_pooled: torch.Tensor


def prepare_zero_shot(model: ZeroShot, data: Unlabelled, text_encoder, cfg: TrainConfig, progress: bool = True,
                      placement: Placement | None = None) -> TrainResult:
    """Make ``model`` ready from ``data`` as its ``reads`` says; returns what training there was."""
    result = TrainResult()
    if model.reads == "captions" and not data.captions:
        raise CirlabError(f"{model.name} reads the training images' captions, and this data set has none: use a data "
                          "set whose images.jsonl gives a caption for its training images")
    if model.reads == "images" and not len(data.image_views.get("pooled", ())):
        raise CirlabError(f"{model.name} trains on the training images, and this data set has none encoded")
    if isinstance(model, ZeroShotTextShift):
        model.set_bank(data.captions, data.caption_pooled)
    elif isinstance(model, MappedPseudoWord):
        result = train_pseudo_word(model, data, text_encoder, cfg, progress, placement)
    return result


def train_pseudo_word(model: MappedPseudoWord, data: Unlabelled, text_encoder, cfg: TrainConfig,
                      progress: bool = True, placement: Placement | None = None) -> TrainResult:
    """``cfg.epochs`` passes of InfoNCE (``cfg.logit_scale``) over the method's task in batches of ``cfg.batch_size``
    (AdamW or Adam at ``cfg.lr``), seeded by ``cfg.seed``; the text encoder stays frozen."""
    device = placed(placement).device
    seed_everything(cfg.seed)
    model.to(device)
    with torch.no_grad():
        task = model.task(to_device(data.image_views, device), data.captions, data.caption_pooled.to(device))
    if len(task.inputs) < 2:
        raise CirlabError(f"{model.name} needs at least 2 training examples, got {len(task.inputs)}")
    params = list(model.mapping.parameters())
    opt = OPTIMIZERS[cfg.optimizer](params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    result = TrainResult(triplets=0, device=str(device))
    start = time.perf_counter()
    generator = torch.Generator().manual_seed(cfg.seed)
    steps = range(cfg.epochs)
    for epoch in tqdm(steps, desc=f"training {model.name}", disable=not progress):
        model.train()
        order = torch.randperm(len(task.inputs), generator=generator)
        losses = []
        for s in range(0, len(order) - 1, cfg.batch_size):
            rows = order[s:s + cfg.batch_size]
            if len(rows) < 2:
                continue
            x = task.inputs[rows]
            if task.noise:
                x = F.normalize(x + task.noise * F.normalize(torch.randn(x.shape, generator=generator), dim=-1)
                                .to(x.device), dim=-1)
            tokens = model.mapping(x)
            u = model.project_text(text_encoder.pooled_with_grad([task.prompts[i] for i in rows.tolist()], tokens))
            loss = batch_infonce(u, task.targets[rows], cfg.logit_scale)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        result.history.append({"epoch": epoch + 1, "loss": float(np.mean(losses))})
    model.eval()
    result.seconds = time.perf_counter() - start
    result.best_epoch = cfg.epochs
    return result
