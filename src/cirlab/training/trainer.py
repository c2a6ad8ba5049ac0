"""Training a fusion method on cached features (stage 2: encoders frozen)."""

from __future__ import annotations

import csv
import json
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from tqdm import tqdm

from cirlab.config import TrainConfig, monitor_ks
from cirlab.data.perturb import TextAugment
from cirlab.data.features import FeatureTable, QuerySide
from cirlab.data.triplets import Triplet
from cirlab.devices import Placement, autocast, grad_scaler, placed, precision_name, to_device
from cirlab.errors import CirlabError
from cirlab.files import atomic_torch_save, atomic_write_text
from cirlab.fusion.base import Fusion
from cirlab.training.losses import batch_infonce, batch_triplet
from cirlab.training.parallel import (Ranks, data_parallel, gather, ranks, shard, shard_start, share, share_tensor,
                                      summed, union_rows)

OPTIMIZERS = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam}  # the names TrainConfig accepts


@dataclass
class TrainResult:
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    triplets: int = 0
    best_epoch: int = 0
    resumed_from: int = 0  # the epoch a resumed run started after (0: a fresh run)
    device: str = "cpu"  # where it trained, and in what precision (autocast dtype)
    precision: str = "fp32"
    pseudo_epochs: list[int] = field(default_factory=list)  # the epochs trained on pseudo triplets
    step_losses: list[float] = field(default_factory=list, repr=False)  # this process's steps, not saved

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("step_losses")
        return d


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class TripletIndex:
    """Triplets as row indices into the image and text feature tables (unknown ids dropped)."""

    ref: np.ndarray
    text: np.ndarray
    target: np.ndarray
    dropped: int
    ref_gallery: np.ndarray  # the reference's row in the gallery table, -1 where it has none
    other_targets: list[np.ndarray] = field(default_factory=list)  # each triplet's other encoded targets' rows
    wordings: list[np.ndarray] = field(default_factory=list)  # each triplet's text's augmented variants' rows

    @classmethod
    def build(cls, triplets: list[Triplet], images: FeatureTable, queries: QuerySide,
              variants: dict[str, list[str]] | None = None) -> "TripletIndex":
        """Rows of each triplet's query (in ``queries``' tables) and first encoded target (in ``images``), and of its
        text's ``variants`` (``data.perturb``) where given."""
        ref, txt, tgt, ref_gallery, others, wordings, dropped = [], [], [], [], [], [], 0
        as_rows = lambda xs: np.array(xs, dtype=np.int64)  # noqa: E731
        for t in triplets:
            targets = [images.row[x] for x in t.targets if x in images.row]
            key = queries.key(t.reference, t.text)
            if key is None or not targets:
                dropped += 1
                continue
            ref.append(queries.images.row[key[0]])
            txt.append(queries.texts.row[key[1]])
            tgt.append(targets[0])
            others.append(as_rows(targets[1:]))
            ref_gallery.append(images.row.get(t.reference, -1))
            wordings.append(as_rows([queries.texts.row[v] for v in (variants or {}).get(t.text, [])
                                     if v in queries.texts.row]))
        return cls(as_rows(ref), as_rows(txt), as_rows(tgt), dropped, as_rows(ref_gallery), others, wordings)

    def reworded(self, own: np.ndarray, keep: float, seed: int, epoch: int) -> np.ndarray:
        """The text row each triplet reads this epoch: its own (``own``) with probability ``keep`` (or where it has
        no variant), else one of its variants; a function of the seed and the epoch (a resumed run draws the same)."""
        return np.array(epoch_wordings(own, self.wordings, keep, seed, epoch), dtype=np.int64)

    def __len__(self) -> int:
        return len(self.ref)


def epoch_wordings(own: Sequence, wordings: Sequence[Sequence], keep: float, seed: int, epoch: int) -> list:
    """What each training item reads this epoch (both stages): its own text (``own[n]``) with probability ``keep`` (or
    where ``wordings[n]`` is empty), else one of ``wordings[n]``; a function of the seed and the epoch alone."""
    rng = np.random.default_rng([seed, epoch])
    kept = rng.random(len(own)) < keep
    pick = rng.random(len(own))
    return [t if kept[n] or not len(w) else w[int(pick[n] * len(w))] for n, (t, w) in enumerate(zip(own, wordings))]


def write_metrics_log(path: str | Path, history: list[dict]) -> Path:
    """The epochs' metrics: CSV where the name ends in .csv, else JSON lines."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".csv":
        keys = list(dict.fromkeys(k for row in history for k in row))
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, keys)
            w.writeheader()
            w.writerows(history)
    else:
        atomic_write_text(path, "".join(json.dumps(row) + "\n" for row in history))
    return path


def embedded_rows(model: Fusion, images: FeatureTable, rows: np.ndarray, device: torch.device,
                  r: Ranks) -> tuple[torch.Tensor, torch.Tensor]:
    """Gallery rows (the same on every rank) embedded with gradients, each rank its share, gathered; and the rows
    as keys: extra negatives for :func:`batch_infonce`."""
    mine = shard(rows, r)
    vectors = model.embed_gallery(to_device(images.tensors(mine, model.gallery_views), device))
    return gather(vectors, r), torch.from_numpy(rows)


def reference_negatives(model: Fusion, images: FeatureTable, index: TripletIndex, b: np.ndarray,
                        device: torch.device, r: Ranks = Ranks()) -> tuple[torch.Tensor, torch.Tensor]:
    """The gallery vectors of the (global) batch's reference images (those the gallery table holds), and their rows
    as keys: extra negatives for :func:`batch_infonce`."""
    rows = index.ref_gallery[b]
    return embedded_rows(model, images, np.unique(rows[rows >= 0]), device, r)


@torch.no_grad()
def gallery_snapshot(model: Fusion, images: FeatureTable, device: torch.device, chunk: int = 4096) -> torch.Tensor:
    """Every image of the gallery table embedded by the model as it is now, in eval mode, without gradients:
    what :func:`mined_negatives` searches."""
    was_training = model.training
    model.eval()
    parts = [model.embed_gallery(to_device(images.tensors(np.arange(s, min(s + chunk, len(images))),
                                                          model.gallery_views), device)).float()
             for s in range(0, len(images), chunk)]
    model.train(was_training)
    return torch.cat(parts)


def mined_negatives(model: Fusion, images: FeatureTable, snapshot: torch.Tensor, query: torch.Tensor,
                    index: TripletIndex, b: np.ndarray, k: int, device: torch.device,
                    r: Ranks = Ranks()) -> tuple[torch.Tensor, torch.Tensor]:
    """Hard negatives: the ``k`` gallery images nearest each query of batch ``b`` (this rank's share: ``query``) in
    the ``snapshot`` (other than its targets), their union over the ranks embedded again with gradients, and their
    rows as keys: extra negatives for :func:`batch_infonce`."""
    sims = query.detach().float() @ snapshot.t()
    sims[torch.arange(len(b)), torch.from_numpy(index.target[b]).to(sims.device)] = float("-inf")
    for i, t in enumerate(b):
        if len(index.other_targets[t]):
            sims[i, torch.from_numpy(index.other_targets[t]).to(sims.device)] = float("-inf")
    rows = sims.topk(min(k, sims.shape[1] - 1), dim=1).indices.unique().cpu().numpy()
    return embedded_rows(model, images, union_rows(rows, r), device, r)


def text_consistency(model: Fusion, reference: dict, query: torch.Tensor, texts: FeatureTable, read: np.ndarray,
                     own: np.ndarray) -> torch.Tensor | None:
    """1 - cosine between each reworded query (``query``, from the text rows ``read``) and the same query in its own
    text (rows ``own``; held fixed, the teacher), over the batch's reworded triplets; None where none was reworded."""
    reworded = torch.from_numpy(read != own).to(query.device)
    if not bool(reworded.any()):
        return None
    with torch.no_grad():
        teacher = model(reference, to_device(texts.tensors(own, model.text_views), query.device))
    cosine = torch.nn.functional.cosine_similarity(query.float(), teacher.float(), dim=-1)
    return (1 - cosine)[reworded].mean()


def train_fusion(model: Fusion, triplets: list[Triplet], images: FeatureTable, queries: QuerySide,
                 cfg: TrainConfig, progress: bool = True,
                 validate: Callable[[Fusion], dict[int, float]] | None = None,
                 state_path: str | Path | None = None, resume: bool = False,
                 log_path: str | Path | None = None, pseudo: list[Triplet] | None = None,
                 pseudo_every: int = 3, placement: Placement | None = None,
                 variants: dict[str, list[str]] | None = None) -> TrainResult:
    """Stage 2: train a fusion method on cached features with the batch InfoNCE loss (plus the
    triplet loss where ``triplet_weight`` > 0), through :func:`fit`.

    ``images`` holds the target (gallery) images; ``queries`` the query halves of the triplets.
    ``pseudo``: pseudo triplets (``training.pseudo``), one epoch on them after every
    ``pseudo_every`` epochs on the real ones (paper 004's schedule). ``placement``: see :func:`fit`.
    """
    from cirlab.training.pseudo import pseudo_epochs

    cfg.check()
    seed_everything(cfg.seed)
    placement = placed(placement)
    device = placement.device
    real = TripletIndex.build(triplets, images, queries, variants)
    own_texts, keep = real.text, TextAugment.parse(cfg.text_augment).keep
    if len(real) < 2:
        raise CirlabError(f"only {len(real)} usable training triplet(s): need at least 2 whose images and texts are encoded")
    fake = TripletIndex.build(pseudo, images, queries) if pseudo else None
    plan = pseudo_epochs(cfg.epochs, pseudo_every) if fake is not None and len(fake) >= 2 else [False] * cfg.epochs
    current = {"index": real, "snapshot": None}

    r = ranks()

    def on_epoch(epoch: int) -> None:
        current["index"] = fake if plan[epoch] else real
        if variants:
            real.text = real.reworded(own_texts, keep, cfg.seed, epoch)
        if cfg.hard_negatives:  # computed once, on rank 0, and sent to the others
            snapshot = gallery_snapshot(model, images, device) if r.main else \
                torch.empty((len(images), model.embed_dim), device=device)
            current["snapshot"] = share_tensor(snapshot, r)

    def batch_loss(b: np.ndarray) -> torch.Tensor:
        """The loss of global batch ``b``: this rank's queries against every rank's columns (one process: all)."""
        index, mine = current["index"], shard(b, r)
        reference = to_device(queries.images.tensors(index.ref[mine], model.image_views), device)
        query = model(reference, to_device(queries.texts.tensors(index.text[mine], model.text_views), device))
        consistency = text_consistency(model, reference, query, queries.texts, index.text[mine], own_texts[mine]) \
            if index is real and variants and cfg.text_consistency else None
        target = gather(model.embed_gallery(to_device(images.tensors(index.target[mine], model.gallery_views),
                                                      device)), r)
        keys = torch.from_numpy(index.target[b])
        columns, column_keys = target, keys
        if cfg.reference_negatives:
            negatives, negative_keys = reference_negatives(model, images, index, b, device, r)
            columns, column_keys = torch.cat([columns, negatives]), torch.cat([column_keys, negative_keys])
        if cfg.hard_negatives:
            negatives, negative_keys = mined_negatives(model, images, current["snapshot"], query, index, mine,
                                                       cfg.hard_negatives, device, r)
            columns, column_keys = torch.cat([columns, negatives]), torch.cat([column_keys, negative_keys])
        start = shard_start(len(b), r)
        loss = batch_infonce(query, columns, cfg.logit_scale, column_keys, start)
        if cfg.triplet_weight:
            loss = loss + cfg.triplet_weight * batch_triplet(query, target, cfg.triplet_margin, keys, start)
        if consistency is not None:
            loss = loss + cfg.text_consistency * consistency
        # weighted by this rank's share: the gradients DistributedDataParallel averages are the whole batch's
        return loss * (len(mine) * r.world / len(b)) if r.parallel else loss

    result = fit(model, [len(fake) if p else len(real) for p in plan], batch_loss, cfg, progress, validate,
                 state_path, resume, log_path, desc=f"training {model.name}", on_epoch=on_epoch,
                 placement=placement)
    result.triplets = len(real)
    result.pseudo_epochs = [e + 1 for e, p in enumerate(plan) if p]
    return result


@dataclass
class Precision:
    """Where the steps run: the device, the autocast dtype (None: fp32) and the gradient scaler (fp16 only)."""

    device: torch.device
    dtype: torch.dtype | None
    scaler: torch.amp.GradScaler

    @classmethod
    def of(cls, placement: Placement) -> "Precision":
        return cls(placement.device, placement.dtype, grad_scaler(placement.device, placement.dtype))


def _backward(batch_loss: Callable[[np.ndarray], torch.Tensor], rows: np.ndarray, parts: int,
              amp: Precision) -> torch.Tensor:
    """Backward passes for a batch, in ``parts`` micro-batches (each weighted by its share of the rows so the
    gradients add up to a batch mean), forward under autocast; the batch's loss, detached."""
    pieces = [p for p in np.array_split(rows, min(parts, len(rows) // 2)) if len(p)]
    total = torch.zeros((), device=amp.device)
    for piece in pieces:
        with autocast(amp.device, amp.dtype):
            loss = batch_loss(piece).float() * (len(piece) / len(rows))
        amp.scaler.scale(loss).backward()
        total = total + loss.detach()
    return total


def fit(module: torch.nn.Module, items: int | list[int], batch_loss: Callable[[np.ndarray], torch.Tensor], cfg: TrainConfig,
        progress: bool = True, validate: Callable | None = None, state_path: str | Path | None = None,
        resume: bool = False, log_path: str | Path | None = None, desc: str = "training",
        on_epoch: Callable[[int], None] | None = None, param_groups: list[dict] | None = None,
        placement: Placement | None = None) -> TrainResult:
    """The one optimisation loop of both stages: ``items`` training examples (or a count per epoch) shuffled each epoch,
    ``batch_loss(rows)`` the loss of a batch; the configured optimiser over the module's trainable
    parameters, per-step schedule with warm-up, gradient clipping.

    ``validate(module)`` returns Recall@K after each epoch; with ``select_best`` the weights of the
    best epoch (by ``monitor``) are kept, with ``patience`` training stops early.

    ``state_path``: after every epoch the whole training state (weights, optimiser, schedule,
    random generators, history, best epoch) is saved there; with ``resume`` a run continues from
    it and takes exactly the steps the uninterrupted run would have taken. ``log_path``: the
    metrics of every epoch (CSV or JSON lines), rewritten after each epoch. ``on_epoch(epoch)`` runs
    before each epoch's steps. ``param_groups``: ``[{"params": [...], "lr_scale": s}, ...]`` where parts
    learn at ``s`` times ``lr`` (stage 1: new projection heads faster than pretrained layers).

    ``placement.device`` (None: the defaults' placement) is where the module trains; ``batch_loss`` puts its
    inputs there. ``placement.precision`` (``auto``, ``fp32``, ``bf16``, ``fp16``; see :mod:`cirlab.devices`)
    runs the forward passes under autocast, fp16 with a gradient scaler. Saved states are CPU tensors.
    """
    cfg.check()
    amp = Precision.of(placed(placement))
    module.to(amp.device)
    r = ranks()
    step_loss = batch_loss
    if r.parallel:  # data-parallel: batch_loss takes this rank's share of each batch (training.parallel)
        if cfg.accumulate > 1:
            raise CirlabError("accumulate splits a batch inside one process; in a data-parallel run each rank "
                              "already takes its share of the batch: use accumulate 1 (or a smaller batch per rank)")
        step_loss = data_parallel(module, batch_loss, amp.device)
    groups = param_groups or [{"params": list(module.parameters()), "lr_scale": 1.0}]
    groups = [{"params": [q for q in g["params"] if q.requires_grad], "lr": cfg.lr * g.get("lr_scale", 1.0)}
              for g in groups]
    params = [q for g in groups for q in g["params"]]
    opt = OPTIMIZERS[cfg.optimizer](groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sizes = list(items) if isinstance(items, (list, tuple)) else [items] * cfg.epochs
    if len(sizes) != cfg.epochs:
        raise ValueError(f"{len(sizes)} epoch sizes for {cfg.epochs} epochs")

    def batches(n: int) -> int:
        return sum(1 for s in range(0, n, cfg.batch_size) if n - s >= max(2, r.world))

    per_epoch = batches(sizes[0])
    total = sum(batches(n) for n in sizes)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: cfg.lr_factor(step, total, per_epoch))
    rng = np.random.default_rng(cfg.seed)
    result = TrainResult(triplets=sizes[0], device=str(amp.device), precision=precision_name(amp.dtype))
    best_score, best_state, stale, first_epoch, spent = float("-inf"), None, 0, 0, 0.0
    monitor = monitor_ks(cfg.monitor)
    state_path = Path(state_path) if state_path else None
    if resume:
        first_epoch, best_score, best_state, stale, spent = _restore(state_path, module, opt, sched, rng, cfg, result,
                                                                      sizes[0], amp)
    start = time.perf_counter()
    bar = tqdm(range(first_epoch, cfg.epochs), desc=desc, disable=not progress or not r.main, initial=first_epoch,
               total=cfg.epochs)
    for epoch in bar:
        if cfg.patience and stale >= cfg.patience:
            break
        if on_epoch is not None:
            on_epoch(epoch)
        module.train()
        order = rng.permutation(sizes[epoch])
        total_loss, batches, epoch_start = 0.0, 0, time.perf_counter()
        for s in range(0, len(order), cfg.batch_size):
            b = order[s:s + cfg.batch_size]
            if len(b) < max(2, r.world):
                continue
            opt.zero_grad(set_to_none=True)
            loss = _backward(step_loss, b, cfg.accumulate, amp)
            if r.parallel:  # each rank's loss is weighted by its share times the ranks: their mean is the batch's
                loss = summed(loss, r) / r.world
            if cfg.grad_clip:
                amp.scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            scale = amp.scaler.get_scale() if amp.scaler.is_enabled() else 1.0
            amp.scaler.step(opt)
            amp.scaler.update()
            if not amp.scaler.is_enabled() or amp.scaler.get_scale() >= scale:  # fp16 overflow: the step was skipped
                sched.step()
            value = float(loss.detach())
            result.step_losses.append(value)
            total_loss += value
            batches += 1
        row: dict = {"epoch": epoch + 1, "loss": total_loss / max(batches, 1), "lr": opt.param_groups[0]["lr"],
                     "seconds": round(time.perf_counter() - epoch_start, 3)}
        if validate is not None:
            module.eval()
            recall = share(validate(module) if r.main else None, r)  # once, on rank 0
            row.update({f"val_R@{k}": v for k, v in recall.items()})
            score = sum(recall.get(k, 0.0) for k in monitor)
            if score > best_score:
                best_score, stale = score, 0
                result.best_epoch = epoch + 1
                if cfg.select_best:
                    best_state = {k: v.detach().clone() for k, v in module.state_dict().items()}
            else:
                stale += 1
        result.history.append(row)
        bar.set_postfix(loss=f"{row['loss']:.3f}")
        if log_path and r.main:
            write_metrics_log(log_path, result.history)
        if state_path and r.main:
            atomic_torch_save({"kind": "cirlab-train-state", "epoch": epoch + 1, "config": asdict(cfg),
                          "triplets": sizes[0], "model": module.state_dict(), "optimizer": opt.state_dict(),
                          "scheduler": sched.state_dict(), "numpy_rng": rng.bit_generator.state,
                          "torch_rng": torch.get_rng_state(), "python_rng": random.getstate(),
                          "history": result.history, "best_epoch": result.best_epoch, "best_score": best_score,
                          "best_state": best_state, "stale": stale, "scaler": amp.scaler.state_dict(),
                          "cuda_rng": torch.cuda.get_rng_state_all() if amp.device.type == "cuda" else None,
                          "seconds": spent + time.perf_counter() - start}, state_path)
    if best_state is not None:
        module.load_state_dict(best_state)
    module.eval()
    result.seconds = spent + time.perf_counter() - start
    return result


def _restore(path: Path | None, model, opt, sched, rng, cfg: TrainConfig, result: TrainResult, triplets: int,
             amp: Precision):
    """Load a training state saved by :func:`fit` into the run's objects."""
    if path is None or not path.is_file():
        raise CirlabError(f"nothing to resume: no training state at {path}; start the run afresh first (resume off)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # a truncated or foreign file
        raise CirlabError(f"{path} is not a readable training state ({type(e).__name__}); start the run again") from None
    if not isinstance(state, dict) or state.get("kind") != "cirlab-train-state":
        raise CirlabError(f"{path} is not a cirlab training state")
    saved = {k: v for k, v in state["config"].items() if k != "epochs"}
    now = {k: v for k, v in asdict(cfg).items() if k != "epochs"}
    if saved != now or state["triplets"] != triplets:
        diff = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k)) or ["the training triplets"]
        raise CirlabError(f"{path} was saved by a run with other settings ({', '.join(diff)}); resume with the "
                          "same config and data (only epochs may grow)")
    try:
        model.load_state_dict(state["model"])
    except RuntimeError:
        raise CirlabError(f"{path} holds weights of another model; resume with the method it was saved by") from None
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    rng.bit_generator.state = state["numpy_rng"]
    torch.set_rng_state(state["torch_rng"])
    random.setstate(state["python_rng"])
    if state.get("scaler"):
        amp.scaler.load_state_dict(state["scaler"])
    if state.get("cuda_rng") is not None and amp.device.type == "cuda":
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    result.history = list(state["history"])
    result.best_epoch = state["best_epoch"]
    result.resumed_from = state["epoch"]
    return state["epoch"], state["best_score"], state["best_state"], state["stale"], state["seconds"]
