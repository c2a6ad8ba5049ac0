"""``cirlab train``: stage 1 (``training.stage1``), stage 2 (``experiment.train_method``), or both."""

from __future__ import annotations

import argparse
import contextlib
import os
from dataclasses import fields
from pathlib import Path

from cirlab.cli import common
from cirlab.config import PseudoConfig, TrainConfig
from cirlab.errors import CirlabError
from cirlab.training.stage1_config import Stage1Config


def add_parser(sub) -> None:
    t = sub.add_parser("train", parents=[common.quiet(), common.encoders(), common.cache(), common.runtime(),
                                         common.precision()],
                       help="train a fusion method on a data set's train split")
    t.add_argument("--method", default="combiner", help="a registered method, see 'cirlab methods' (default: %(default)s)")
    t.add_argument("--data", type=Path, required=True,
                   help="dataset folder (with dataset.json; trains on 'train', picks the best epoch on 'val'), "
                        "or a triplet JSONL file (all of it is trained on); for --stage 1 also an image-caption "
                        'JSONL file ({"image": "path", "caption": "..."} lines; 10%% of the images held out)')
    t.add_argument("--images", type=Path, default=None,
                   help="with a JSONL --data: the image folder its ids are relative to (default: 'images' beside it)")
    t.add_argument("--config", type=Path, default=None, help="JSON file overriding the method's model/train options")
    t.add_argument("--image-head", default=None, metavar="SPEC",
                   help="how images are embedded on both sides (model.image_head): pooled (the pooled vector alone), "
                        "attnpool (attention pooling over the region map), grid[:cells=3], colour, or a sum such as "
                        "attnpool+colour (default: the method's config)")
    t.add_argument("--out", type=Path, required=True,
                   help="output folder (model.pt is written there) or a .pt path; beside it go <name>-metrics.jsonl "
                        "(every epoch's loss, learning rate and validation recall), <name>-metrics.png (their plot) "
                        "and <name>-state.pt (the training state --resume continues from)")
    o = t.add_argument_group("training options (each overrides the method's config, see 'cirlab methods --configs'; "
                             "with --stage 1 stage 1's train options; with --stage both, stage 2's)")
    for f in TrainConfig.flags():  # the flags, their types and their help come from the dataclass
        o.add_argument("--" + f.name.replace("_", "-"), dest=f.name, type=common.FIELD_TYPES[f.type], default=None,
                       choices=f.metadata["choices"],
                       help=f"{f.metadata['help']} (default {f.default}, unless the method's config sets it)")
    t.add_argument("--stage", choices=["1", "2", "both"], default="2",
                   help="1: fine-tune the encoders (paper 004's stage 1: sum fusion, batch classification loss at "
                        "logit scale 100) and write the tuned encoders to --out; 2 (default): train the fusion "
                        "--method on frozen encoders; both: stage 1 into OUT/stage1, then stage 2 on its encoders")
    s1 = t.add_argument_group("stage 1 (defaults: Stage1Config in cirlab/training/stage1_config.py)")
    for f in Stage1Config.flags():  # the flags, their types and their help come from the dataclass
        name = Stage1Config.flag_name(f)
        kind = ({"action": "store_true"} if f.type == "bool" else
                {"type": _blocks, "metavar": "N|all"} if f.type == "int | str" else
                {"type": str, "choices": f.metadata["choices"], "metavar": "SPEC" if f.name == "augment" else None})
        s1.add_argument("--" + name, dest=name.replace("-", "_"), default=None,
                        help=f"{f.metadata['help']} (default {f.default!r})", **kind)
    s1.add_argument("--zero-shot", dest="zero_shot", action="store_true",
                    help="the zero-shot protocol: read only the training split's images and their captions (no "
                         "triplet, no modification text, no other split; 10%% of those images held out to measure "
                         "caption -> image recall); with --stage1-config align this trains an aligned image-text "
                         "pair without a single triplet (docs/zero-shot.md)")
    s1.add_argument("--stage1-config", dest="stage1_config", default=None,
                    help="a preset (clip_cd: paper 004's composed objective, the default; clip_ft: the same with "
                         "paper 004's CLIP recipe, both towers whole, AdamW lr 2e-6, weight decay 0.01, batch 64; "
                         "caff: paper 001's domain "
                         "tasks, image-caption retrieval + attribute prediction + category similarity; align: "
                         "image-text alignment of the projections only) or a JSON file overriding any of Stage1Config's "
                         "fields (tune, image_blocks, text_layers, augment, embed_dim, head_lr_scale, tasks "
                         "{composed, retrieval, attributes, category: weights}, train)")
    s2 = t.add_argument_group("stage 2 on stage-1 encoders, and pseudo triplets (paper 004)")
    s2.add_argument("--stage1", type=Path, default=None,
                    help="a stage-1 folder: train on the encoders it tuned (sets --image-encoder/--text-encoder)")
    s2.add_argument("--augment", action="store_true",
                    help="add pseudo triplets: a reference or target replaced by a similar training image, kept "
                         "when the stage-1 model scores the pseudo query-target pair above --alpha")
    for f in fields(PseudoConfig):
        s2.add_argument("--" + _pseudo_dest(f.name).replace("_", "-"), dest=_pseudo_dest(f.name),
                        type=common.FIELD_TYPES[f.type], default=None, help=f"{f.metadata['help']} (default {f.default})")
    t.add_argument("--resume", action="store_true",
                   help="continue from <name>-state.pt after its last finished epoch (same config and data; "
                        "--epochs may grow); the result equals an uninterrupted run")
    t.add_argument("--nproc", type=int, default=1,
                   help="train stage 2 data-parallel in N processes on this machine (torchrun --standalone; gloo on "
                        "the CPU, NCCL on GPUs, one GPU a rank): each takes its share of every batch. Several "
                        "machines: start 'torchrun ... -m cirlab.cli train ...' on each instead (default: 1)")
    t.add_argument("--dist-timeout", type=float, default=None, metavar="SECONDS",
                   help="with --nproc or torchrun: the seconds a rank may wait for the others in a collective, and "
                        "that a rank's heartbeat may be silent, before the run ends naming the rank (default 300)")
    t.add_argument("--log", type=Path, default=None,
                   help="the metrics log (.csv for CSV, else JSON lines; default: <name>-metrics.jsonl beside --out)")
    t.set_defaults(func=run)


def _blocks(text: str) -> int | str:
    """``--image-blocks``: a whole number, or ``all``."""
    if text == "all":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of blocks or 'all'") from None


def _pseudo_dest(name: str) -> str:
    """A pseudo-triplet option's flag name: ``every`` is ``--pseudo-every``, the rest as they are."""
    return "pseudo_every" if name == "every" else name


def _given(a: argparse.Namespace) -> dict:
    """The training options given as flags."""
    return {f.name: getattr(a, f.name) for f in TrainConfig.flags() if getattr(a, f.name) is not None}


def _stage1(a: argparse.Namespace, flags_apply: bool):
    """``--stage 1``, or the first half of ``--stage both`` (the training flags then go to stage 2)."""
    from cirlab.training.stage1 import run_stage1
    from cirlab.training.stage1_config import read_stage1_config

    override = dict(read_stage1_config(a.stage1_config)) if a.stage1_config else {}
    for f in Stage1Config.flags():
        value = getattr(a, Stage1Config.flag_name(f).replace("-", "_"))
        if value is not None:
            override[f.name] = value
    if flags_apply:
        override["train"] = {**override.get("train", {}), **_given(a)}
    out = a.out if a.stage == "1" else a.out / "stage1"
    data = a.data
    if a.zero_shot:
        from cirlab.data.triplets import Dataset

        data = Dataset.open(a.data, a.images).zero_shot()
    res = run_stage1(data, out, common.feature_cache(a), a.image_encoder, a.text_encoder, override,
                     progress=not a.quiet, resume=a.resume and a.stage == "1", images=a.images,
                     placement=a.placement)
    print(res.summary())
    return res


def model_path(out: Path) -> Path:
    """Where ``--out`` puts the stage-2 checkpoint: the file itself (``*.pt``), or ``model.pt`` in the folder."""
    return out if out.suffix == ".pt" else out / "model.pt"


def run(a: argparse.Namespace) -> int:
    """One process, the launcher of ``--nproc`` ranks, or one of the ranks (started by torchrun)."""
    from cirlab.training.parallel import DIST_TIMEOUT, join, launched, leave, run_ranks, without_nproc

    timeout = DIST_TIMEOUT if a.dist_timeout is None else a.dist_timeout
    if a.nproc != 1 and not launched():
        _data_parallel_stage(a)
        out = model_path(a.out)
        return run_ranks(a.nproc, without_nproc(a.argv), out.with_name(out.stem + "-ranks.log"), timeout)
    if not launched():
        return _run(a)
    if a.placement.device.type == "cuda":  # one GPU a rank
        from cirlab.devices import Placement

        a.placement = Placement.resolve(f"cuda:{os.environ.get('LOCAL_RANK', '0')}", a.runtime, a.precision,
                                        a.encoder_precision)
    r = join(a.placement.device, timeout)
    try:
        _data_parallel_stage(a)
        if r.main:
            return _run(a)
        a.quiet = True
        with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):  # rank 0 reports
            return _run(a)
    except RuntimeError as e:  # gloo and NCCL say a collective's timeout in their own words
        if "timed out" not in str(e).lower() and "timeout" not in str(e).lower():
            raise
        raise CirlabError(f"rank {r.rank} of {r.world}: a collective waited over {timeout:g} s for the other ranks "
                          "(one is stopped, swapped out or hung; --dist-timeout sets the limit)") from None
    finally:
        leave()


def _data_parallel_stage(a: argparse.Namespace) -> None:
    """What a data-parallel run trains: stage 2 of a method that learns from triplets."""
    from cirlab.fusion import fusion_methods

    if a.stage != "2":
        raise CirlabError("--nproc trains stage 2 in data parallel; stage 1 does not split its batches yet: run "
                          "--stage 1 in one process, then --stage 2 --stage1 DIR --nproc N")
    if fusion_methods.get(a.method).zero_shot:
        raise CirlabError(f"{a.method} is a zero-shot method (no triplets, a small mapping at most): train it in one "
                          "process, without --nproc")


def _run(a: argparse.Namespace) -> int:
    from cirlab.config import method_config
    from cirlab.eval.report import recall_table
    from cirlab.experiment import Workspace, train_method
    from cirlab.fusion import fusion_methods
    from cirlab.training.parallel import main_first, ranks
    from cirlab.training.stage1 import stage1_encoders

    if a.stage == "1":
        _stage1(a, flags_apply=True)
        return 0
    if a.zero_shot:
        raise CirlabError("--zero-shot trains stage 1 only (it reads no triplets): use --stage 1")
    cfg = method_config(a.method, a.config)
    cfg["train"].update(_given(a))
    if a.image_head:
        cfg["model"]["image_head"] = a.image_head
    TrainConfig.from_dict(cfg["train"])  # a bad value is a one-line error before any encoding
    pseudo_options = {f.name: getattr(a, _pseudo_dest(f.name)) for f in fields(PseudoConfig)
                      if getattr(a, _pseudo_dest(f.name)) is not None}
    PseudoConfig.from_dict(pseudo_options)
    stage1 = _stage1(a, flags_apply=False).out if a.stage == "both" else a.stage1
    if stage1 is not None:
        a.image_encoder, a.text_encoder = stage1_encoders(stage1)
        if fusion_methods.get(cfg["method"]).zero_shot:  # its aligned space: the stage-1 model's projections
            cfg["model"]["aligned"] = str(stage1)
    if a.augment and stage1 is None:
        raise CirlabError("--augment draws pseudo triplets with a stage-1 model: give --stage1 DIR or use --stage both")
    with main_first(ranks()):  # rank 0 encodes into the feature cache, the others then read it
        ws = Workspace.for_configs(a.data, common.feature_cache(a), a.image_encoder, a.text_encoder, [cfg],
                                   progress=not a.quiet, images=a.images, placement=a.placement)
    out = model_path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    log = a.log or out.with_name(out.stem + "-metrics.jsonl")
    state = out.with_name(out.stem + "-state.pt")
    model, result, meta = train_method(ws, a.method, cfg, out=out, progress=not a.quiet, state_path=state,
                                       resume=a.resume, log_path=log, pseudo=stage1 if a.augment else None,
                                       pseudo_config=pseudo_options)
    if meta.get("zero_shot"):
        reads = fusion_methods.get(cfg["method"]).reads
        how = (f"trained its mapping on the training {reads} in {result.seconds:.1f} s" if result.history else
               f"kept the training {reads} as its bank" if reads else "no training") + ", no triplet read"
        print(f"assembled {a.method} (zero-shot: {how}) on {a.image_encoder} + {a.text_encoder}"
              f"{', aligned by ' + cfg['model']['aligned'] if cfg['model'].get('aligned') else ''}; saved {out}")
        if "test" in ws.triplets:
            print(recall_table({a.method: ws.evaluate(model, "test").recall}))
        return 0
    resumed = f" (resumed after epoch {result.resumed_from})" if result.resumed_from else ""
    print(f"trained {a.method} on {result.triplets} triplets in {result.seconds:.1f} s{resumed}; best epoch "
          f"{result.best_epoch or len(result.history)}; saved {out}\nmetrics: {log} and {log.with_suffix('.png')}; "
          f"training state (for --resume): {state}")
    if "pseudo" in meta:
        ps = meta["pseudo"]
        print(f"pseudo triplets: {ps['made']} made, {ps['kept']} kept (s_max {ps['s_max']}, cosine in "
              f"[{ps['eps_l']}, {ps['eps_u']}], score > {ps['alpha']}); trained on them in epochs {result.pseudo_epochs}")
    if "test" in ws.triplets:
        print(recall_table({a.method: ws.evaluate(model, "test").recall}))
    return 0
