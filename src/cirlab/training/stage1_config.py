"""Stage 1's settings (:class:`Stage1Config`), the one source of their defaults, and its presets
(``configs/stage1/<name>.json``: clip_cd, clip_ft, caff, align), each a partial override of them.

``cirlab train --stage 1`` has a flag for each field marked ``flag`` (its help is the field's), and
``--stage1-config`` takes a preset or a JSON file with any of the fields (``tasks`` and ``train`` merged key by
key over the defaults).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from importlib import resources
from pathlib import Path

from cirlab.config import TrainConfig, _option, check_known, read_config
from cirlab.errors import CirlabError
from cirlab.training.augment import Augment
from cirlab.training.stage1_tasks import stage1_tasks

TUNE_CHOICES = ("none", "text", "image", "both")
# stage 1's optimisation: paper 004's batch classification loss at logit scale 100, AdamW with a cosine schedule
STAGE1_TRAIN = {"epochs": 6, "batch_size": 64, "lr": 1e-4, "weight_decay": 0.01, "logit_scale": 100.0,
                "optimizer": "adamw", "schedule": "cosine", "warmup_epochs": 0.5, "select_best": True,
                "monitor": "R@1+R@10"}


@dataclass
class Stage1Config:
    """What stage 1 tunes, on which tasks, and how it trains."""

    tune: str = _option("both", "which encoder adapts: none (only the projections train), text, image or both",
                        choices=TUNE_CHOICES)
    image_blocks: int | str = _option(2, "fine-tune the last N MBConv blocks (+ head convolution) of "
                                         "EfficientNet-Lite (or a CLIP tower's last N layers), or all of it from the "
                                         "stem")
    text_layers: int | str = _option(1, "fine-tune the last N transformer layers of the text model, or all of it")
    augment: str = _option("", "train the image encoder from augmented images, read every batch: scale=S (shrink "
                               "and move), blur=SIGMA (pixels), noise=STD (share of the range), e.g. "
                               "scale=0.2,blur=1.5 (empty: none; the frozen trunk's output is then computed once)",
                       flag="image-augment")
    gradient_checkpointing: bool = _option(False, "recompute the tuned image layers' activations in the backward "
                                                  "pass (less memory, more time)")
    embed_dim: int = _option(512, "the width of the stage-1 sum model's shared space", flag=False)
    head_lr_scale: float = _option(10.0, "the projections and the tasks' heads learn at this times lr (the tuned "
                                         "encoder layers at lr)", flag=False)
    tasks: dict = field(default_factory=lambda: {"composed": 1.0, "retrieval": 0.0, "attributes": 0.0,
                                                 "category": 0.0},
                        metadata={"help": "the weight of each task in the loss (0: off): composed (paper 004's "
                                          "objective), retrieval (image-caption alignment), attributes, category "
                                          "(paper 001's domain tasks)", "flag": False, "choices": None})
    train: TrainConfig = field(default_factory=lambda: TrainConfig(**STAGE1_TRAIN),
                               metadata={"help": "the optimisation (TrainConfig's fields; stage 1's defaults: "
                                                 f"{STAGE1_TRAIN})", "flag": False, "choices": None})

    @classmethod
    def from_dict(cls, override: dict | None = None) -> "Stage1Config":
        """The defaults with ``override`` on top (its ``tasks`` and ``train`` merged key by key); checked."""
        override = dict(override or {})
        check_known(cls, override, "stage-1")
        base = cls()
        override["tasks"] = {**base.tasks, **override.get("tasks", {})}
        override["train"] = TrainConfig.from_dict({**STAGE1_TRAIN, **override.get("train", {})})
        cfg = cls(**override)
        cfg.check()
        return cfg

    @classmethod
    def flags(cls) -> list:
        """The fields ``cirlab train --stage 1`` offers as flags."""
        return [f for f in fields(cls) if f.metadata.get("flag")]

    @staticmethod
    def flag_name(f) -> str:
        """A field's flag, without the dashes: its name, or the one its metadata gives (``augment`` is
        ``image-augment``, beside stage 2's ``--augment``)."""
        return f.metadata["flag"] if isinstance(f.metadata["flag"], str) else f.name.replace("_", "-")

    def check(self) -> None:
        """One-line errors for values no run could use."""
        if self.tune not in TUNE_CHOICES:
            raise CirlabError(f"tune {self.tune!r} unknown; use one of {', '.join(TUNE_CHOICES)}")
        for key in ("image_blocks", "text_layers"):
            n = getattr(self, key)
            if n != "all" and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
                raise CirlabError(f"{key} {n!r}: give a number of final layers (1 or more) or \"all\"")
        if Augment.parse(self.augment) and not self.tunes_image:
            raise CirlabError("augmentation changes the images the image encoder reads: it needs tune image or both")
        if self.train.text_consistency:
            raise CirlabError("stage 1 does not apply text_consistency (stage 2's --text-consistency); its "
                              "text_augment rewords the composed task's texts")
        unknown = set(self.tasks) - set(stage1_tasks.names())
        if unknown:
            raise CirlabError(f"unknown stage-1 task(s) {sorted(unknown)}; tasks: {', '.join(stage1_tasks.in_order())}")

    @property
    def tunes_image(self) -> bool:
        return self.tune in ("image", "both")

    @property
    def tunes_text(self) -> bool:
        return self.tune in ("text", "both")

    def to_dict(self) -> dict:
        return asdict(self)


def stage1_presets() -> list[str]:
    """The shipped stage-1 presets (``configs/stage1/<name>.json``): clip_cd, clip_ft, caff, align."""
    folder = resources.files("cirlab") / "configs" / "stage1"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".json"))


def read_stage1_config(name_or_path: str | Path) -> dict:
    """A preset by name, or a JSON file: the overrides it holds."""
    preset = resources.files("cirlab") / "configs" / "stage1" / f"{name_or_path}.json"
    path = Path(name_or_path)
    if not path.is_file() and preset.is_file():
        return read_config(preset)
    if not path.is_file():
        raise CirlabError(f"stage-1 config {name_or_path} is neither a file nor a preset ({', '.join(stage1_presets())})")
    return read_config(path)


def stage1_config(config: Stage1Config | dict | None = None) -> Stage1Config:
    """``config`` as a :class:`Stage1Config`: one as it is, or a dict of overrides over the defaults."""
    return config if isinstance(config, Stage1Config) else Stage1Config.from_dict(config)
