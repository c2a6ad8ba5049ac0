"""Method configs are data: ``configs/methods/<name>.json`` (model and training options) over the
training defaults, which are :class:`TrainConfig`'s fields. A user file given with ``--config``
overrides both.

Ablation *variants* (``configs/variants/<name>.json``, e.g. ``mffm-L2``) name a method and
override some of its options; they are used wherever a method name is.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from importlib import resources
from pathlib import Path

from cirlab.errors import CirlabError

DEFAULT_IMAGE_ENCODER = "efficientnet_lite0"  # the offline default encoders (encoders/)
DEFAULT_TEXT_ENCODER = "minilm"
OPTIMIZER_NAMES = ("adamw", "adam")
SCHEDULES = ("constant", "step", "cosine")


def monitor_ks(monitor: str) -> list[int]:
    """The K of a monitor such as ``R@10`` or ``R@1+R@10``."""
    try:
        ks = [int(part.strip()[2:]) for part in monitor.split("+") if part.strip().startswith("R@")]
    except ValueError:
        ks = []
    if not ks or len(ks) != len(monitor.split("+")):
        raise CirlabError(f"monitor {monitor!r} not understood; write Recall@K terms such as 'R@10' or 'R@1+R@10'")
    return ks


def check_known(cls, options: dict, what: str) -> None:
    """Refuse, in one line, options that are not fields of the config dataclass ``cls`` (``what``: their kind)."""
    known = {f.name for f in fields(cls)}
    unknown = set(options) - known
    if unknown:
        raise CirlabError(f"unknown {what} option(s) {sorted(unknown)}; known: {sorted(known)}")


def _option(default, help: str, flag: bool = True, choices: tuple | None = None):
    """A training option: its default, and the help text its ``cirlab train`` flag shows (``flag=False``:
    config files only)."""
    return field(default=default, metadata={"help": help, "flag": flag, "choices": choices})


@dataclass
class TrainConfig:
    """Optimisation settings, the one source of their defaults. A method's config file overrides any of
    them; ``cirlab train`` has a flag for each one marked ``flag`` (its help is the field's)."""

    epochs: int = _option(12, "passes over the training triplets")
    batch_size: int = _option(256, "triplets per step; the other targets of the batch are each query's negatives")
    lr: float = _option(5e-4, "peak learning rate")
    weight_decay: float = _option(0.01, "weight decay (AdamW: decoupled; Adam: an L2 term in the gradient)")
    logit_scale: float = _option(30.0, "InfoNCE's logit scale (the inverse temperature)", flag=False)
    seed: int = _option(0, "seed of the initial weights, the batch order and dropout")
    select_best: bool = _option(True, "with a validation split: keep the epoch of the best validation score",
                                flag=False)
    patience: int = _option(0, "early stopping: stop after this many epochs without a better validation score "
                               "(0: off)")
    reference_negatives: bool = _option(False, "the batch's reference images join its negatives: the image a query "
                                               "starts from is often the nearest wrong answer (an emoji facing "
                                               "the other way)", flag=False)
    hard_negatives: int = _option(0, "hard-negative mining: each query's K nearest training-gallery images under the "
                                     "model (its vectors refreshed at every epoch's start), other than its targets, "
                                     "join the batch's negatives (0: off)")
    triplet_weight: float = _option(0.0, "weight of the triplet loss added to InfoNCE (mffm)", flag=False)
    triplet_margin: float = _option(0.2, "the triplet loss's margin, on cosine similarities", flag=False)
    optimizer: str = _option("adamw", "optimiser", choices=OPTIMIZER_NAMES)
    schedule: str = _option("constant", "learning-rate schedule per step: constant; step (x step-gamma once "
                                        "step-at of training is done; mffm's paper drops x0.1 at half); cosine "
                                        "(to zero at the end)", choices=SCHEDULES)
    warmup_epochs: float = _option(0.0, "linear warm-up from ~0 to the peak rate over this many epochs "
                                        "(fractions allowed)")
    step_at: float = _option(0.5, "step schedule: the fraction of training where the rate drops")
    step_gamma: float = _option(0.1, "step schedule: the factor the rate drops by")
    grad_clip: float = _option(0.0, "clip the gradients' global L2 norm to this (0: off)")
    accumulate: int = _option(1, "split each batch into this many micro-batches, one backward pass each, and take "
                                 "one optimiser step on their summed gradients: memory of batch-size / accumulate "
                                 "(each micro-batch's queries see only its own targets as negatives)")
    text_augment: str = _option("", "augment the training modification texts, e.g. "
                                    "typos=0.05,frames=0.3,synonyms=0.3,order=0.3,drop=0.1,case=0.2 (variants=N "
                                    "wordings of each text, encoded once; keep=P: the chance a triplet reads its "
                                    "own text in an epoch; cirlab.data.perturb)")
    text_consistency: float = _option(0.0, "with --text-augment: weight of a consistency loss that pulls the composed "
                                           "query of a reworded text towards the same query in its own text (1 - "
                                           "cosine, the own query held fixed), beside the retrieval loss (0: off)")
    monitor: str = _option("R@1+R@10", "the validation score for the best epoch and early stopping, e.g. 'R@10' "
                                       "or 'R@1+R@10'")

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        check_known(cls, d, "training")
        cfg = cls(**d)
        cfg.check()
        return cfg

    @classmethod
    def flags(cls) -> list:
        """The fields ``cirlab train`` offers as flags."""
        return [f for f in fields(cls) if f.metadata.get("flag")]

    def check(self) -> None:
        """One-line errors for values no run could use."""
        if self.optimizer not in OPTIMIZER_NAMES:
            raise CirlabError(f"optimizer {self.optimizer!r} unknown; use one of {', '.join(OPTIMIZER_NAMES)}")
        if self.schedule not in SCHEDULES:
            raise CirlabError(f"schedule {self.schedule!r} unknown; use {', '.join(SCHEDULES)}")
        if self.hard_negatives < 0:
            raise CirlabError(f"hard_negatives must be 0 (off) or more, not {self.hard_negatives}")
        if self.epochs < 1 or self.batch_size < 2 or self.lr <= 0:
            raise CirlabError(f"need epochs >= 1, batch_size >= 2 and lr > 0 (got {self.epochs}, {self.batch_size}, {self.lr})")
        if self.text_consistency < 0 or (self.text_consistency and not self.text_augment):
            raise CirlabError("text_consistency must be 0 or more, and needs text_augment: it pulls reworded queries "
                              "towards their own text's")
        if not 0 < self.step_at < 1 or self.warmup_epochs < 0 or self.grad_clip < 0:
            raise CirlabError("need 0 < step_at < 1, warmup_epochs >= 0 and grad_clip >= 0")
        if self.accumulate < 1 or self.batch_size < 2 * self.accumulate:
            raise CirlabError(f"accumulate {self.accumulate} must be 1 or more, with at least 2 triplets per "
                              f"micro-batch (batch_size {self.batch_size})")
        monitor_ks(self.monitor)

    def lr_factor(self, step: int, total: int, per_epoch: int) -> float:
        """The learning rate's multiplier at optimiser step ``step`` of ``total``."""
        warm = self.warmup_epochs * per_epoch
        if warm and step < warm:
            return (step + 1) / warm
        if self.schedule == "step":
            return self.step_gamma if step >= self.step_at * total else 1.0
        if self.schedule == "cosine":
            t = (step - warm) / max(total - warm, 1)
            return 0.5 * (1.0 + math.cos(math.pi * min(max(t, 0.0), 1.0)))
        return 1.0




@dataclass
class PseudoConfig:
    """Paper 004's pseudo triplets (``training.pseudo``), the one source of their defaults; ``cirlab train``
    has a flag for each (``--s-max``... ``--pseudo-every``), its help the field's."""

    s_max: int = _option(4, "substitutes per image at most")
    eps_l: float = _option(0.90, "lowest cosine of a substitute")
    eps_u: float = _option(0.995, "highest cosine of a substitute: closer is a near duplicate")
    alpha: float = _option(0.6, "the stage-1 score a pseudo triplet must exceed")
    every: int = _option(3, "real-triplet epochs before each pseudo-triplet epoch")

    @classmethod
    def from_dict(cls, d: dict | None) -> "PseudoConfig":
        check_known(cls, d or {}, "pseudo-triplet")
        cfg = cls(**(d or {}))
        if not (cfg.s_max >= 1 and -1 <= cfg.eps_l <= cfg.eps_u <= 1 and cfg.every >= 1):
            raise CirlabError("pseudo triplets need s_max >= 1, eps_l <= eps_u within [-1, 1] and every >= 1")
        return cfg


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
    cfg = {"method": method, "model": {}, "train": asdict(TrainConfig())}
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
