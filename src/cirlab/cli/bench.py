"""``cirlab bench``: several methods over several seeds (``experiment.sweep``), tables saved."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from cirlab.cli import common
from cirlab.errors import CirlabError


def add_parser(sub) -> None:
    b = sub.add_parser("bench", parents=[common.quiet(), common.encoders(), common.cache(), common.runtime(),
                                         common.precision(), common.rerank()],
                       help="train and evaluate several methods over seeds; a mean ± std table")
    b.add_argument("--data", type=Path, required=True, help="dataset folder (with dataset.json)")
    b.add_argument("--methods", default="all",
                   help="'all' (every method that learns from triplets), 'zero-shot' (every zero-shot method: give an "
                        "aligned pair, docs/zero-shot.md), 'ablations' (every variant and its base method), or a comma "
                        "list of methods and variants (default: %(default)s)")
    b.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 per method (default: %(default)s)")
    b.add_argument("--epochs", type=int, default=None, help="override every method's epochs")
    b.add_argument("--text-augment", default=None, metavar="SPEC",
                   help="augment every method's training texts, e.g. typos=0.05,frames=0.3,synonyms=0.3 "
                        "(cirlab.data.perturb; cirlab train --text-augment)")
    b.add_argument("--text-consistency", type=float, default=None, metavar="W",
                   help="with --text-augment: the consistency loss's weight (cirlab train --text-consistency)")
    b.add_argument("--image-head", default=None, metavar="SPEC",
                   help="the image head every method uses on both sides, e.g. attnpool, grid:cells=3, attnpool+colour "
                        "(default: each method's config; pooled = the pooled vector alone)")
    b.add_argument("--measure", default="", metavar="NAME[,NAME]",
                   help="measurements beside Recall@K, a comma list: retrieval, splits, paraphrases, rerank, "
                        "robustness, multi-turn (an unknown name lists those registered); edits, composition and audit "
                        "always run; the flags below give them their options and name them too (docs/evaluation.md)")
    b.add_argument("--retrieval", default=None, metavar="SPECS",
                   help="also rank each trained model through these index backends, ';'-separated, e.g. "
                        "'exact;knn;kmeans_svm:k=15' (paper 003's KNN and K-means + SVM); measures retrieval "
                        "(default backends: exact;knn;kmeans_svm)")
    b.add_argument("--aligned", type=Path, default=None, metavar="DIR",
                   help="an aligned stage-1 model (made with --stage1-config align) that the zero-shot methods compose "
                        "in; its encoders are the bench's (docs/zero-shot.md)")
    b.add_argument("--split", default="test", help="split to report (default: %(default)s)")
    b.add_argument("--extra-splits", default=None, metavar="SPLITS",
                   help="comma list of other splits each model is also evaluated on, e.g. test-twemoji next to a "
                        "held-out art style's test; measures splits (default: every split but train, val and --split)")
    b.add_argument("--paraphrases", action="store_true",
                   help="also evaluate each model on the split's queries in every phrasing of the paraphrase bank, "
                        "none used in training (EmojiEdit, CSS-like; docs/evaluation.md#paraphrase-robustness); "
                        "the same as --measure paraphrases")
    b.add_argument("--multi-turn", action="store_true",
                   help="also measure each model in multi-turn sessions with a simulated user over the split's gallery "
                        "(EmojiEdit, CSS-like; docs/evaluation.md#multi-turn-search): tables and a plot of success "
                        "against turns; the same as --measure multi-turn")
    b.add_argument("--sessions", type=int, default=200, help="simulated sessions per model and history mode "
                                                              "(default: %(default)s)")
    b.add_argument("--turns", type=int, default=10, help="turns per session at most (default: %(default)s)")
    b.add_argument("--shown", default="1", metavar="N[,N]",
                   help="results the simulated user looks at; it refines from the one closest to its target; a comma "
                        "list measures each (default: %(default)s, the top-1)")
    b.add_argument("--history", default="last,text,mean", metavar="MODES",
                   help="history modes to measure, a comma list of last, text, mean (default: %(default)s)")
    b.add_argument("--start", default="random", choices=("random", "editable"),
                   help="each session starts from a random gallery image, or from one the data set's edits reach "
                        "the target from (EmojiEdit: the same emoji) (default: %(default)s)")
    b.add_argument("--words", default="own", metavar="WORDINGS",
                   help="how the simulated user words its edits, a ';' list, each measured: own (the data set's "
                        "phrasings), bank (the paraphrase bank's shapes, never trained on), or a perturbation of its "
                        "own words such as typos=0.05 (default: %(default)s)")
    b.add_argument("--out", type=Path, default=Path("benchmarks/results/bench"),
                   help="where the table goes (default: %(default)s)")
    b.add_argument("--name", default=None, help="file name of the table, without suffix")
    b.set_defaults(func=run)


def measures(a: argparse.Namespace) -> list:
    """The bench's measurements: those ``--measure`` names and those the older flags name, with the flags' options."""
    from cirlab.eval.multiturn import MultiTurn
    from cirlab.experiment.measures import make_measures
    from cirlab.rerank import RerankSpec
    from cirlab.session import check_mode

    names = [n for n in a.measure.split(",") if n.strip()]
    names += [n for n, given in (("paraphrases", a.paraphrases), ("multi-turn", a.multi_turn),
                                 ("retrieval", a.retrieval), ("splits", a.extra_splits),
                                 ("rerank", a.rerank is not None)) if given]
    options: dict[str, dict] = {}
    if "multi-turn" in names:
        modes = tuple(check_mode(m.strip()) for m in a.history.split(",") if m.strip())
        words = tuple(w.strip() for w in a.words.split(";") if w.strip())
        options["multi-turn"] = {"setting": MultiTurn(a.sessions, a.turns, common.int_list(a.shown, "--shown"), modes,
                                                      a.start, words)}
    if a.retrieval:
        options["retrieval"] = {"backends": [x for x in a.retrieval.split(";") if x]}
    if a.extra_splits:
        options["splits"] = {"names": [x.strip() for x in a.extra_splits.split(",") if x.strip()]}
    if "rerank" in names:
        if a.rerank is None:
            raise CirlabError("--measure rerank needs the second model: --rerank PATH[,candidates=N]")
        options["rerank"] = {"spec": RerankSpec.parse(a.rerank)}
    return make_measures(names, options)


def run(a: argparse.Namespace) -> int:
    from cirlab.experiment import expand_methods, run_bench, save_bench

    if a.aligned is not None:  # the aligned model's encoders
        from cirlab.training.stage1 import stage1_encoders

        a.image_encoder, a.text_encoder = stage1_encoders(a.aligned)
    result = run_bench(a.data, expand_methods(a.methods), a.seeds, common.feature_cache(a), a.image_encoder,
                       a.text_encoder, a.split, a.epochs, progress=not a.quiet,
                       log=lambda line: print(line, file=sys.stderr, flush=True), image_head=a.image_head,
                       placement=a.placement, aligned=a.aligned, measures=measures(a),
                       train={k: v for k, v in (("text_augment", a.text_augment),
                                                ("text_consistency", a.text_consistency)) if v is not None} or None)
    name = a.name or f"{result.dataset}-{a.methods.replace(',', '+') if len(a.methods) < 40 else 'methods'}-{a.seeds}seeds"
    path = save_bench(result, a.out, name, "cirlab " + " ".join(shlex.quote(x) for x in sys.argv[1:]))  # runs first
    print(result.table())
    for heading, table in result.sections():
        print(f"\n{heading}:\n{table}")
    print(f"saved {path} and {path.with_suffix('.json')}", file=sys.stderr)
    return 0
