"""Multi-turn search measured with a simulated user (docs/evaluation.md#multi-turn-search).

A simulated user holds a hidden target image of the test gallery, whose attributes it knows (the data set's image
records). A session starts from a random gallery image. Each turn, the user:

1. looks at the results shown (the top ``shown``, default the top-1) and takes the one closest to the target (fewest
   edits away; the higher ranked on a tie) as the next reference;
2. compares that image's attributes with the target's;
3. says one templated edit, in the data set's own grammar, that moves towards the target (after Guo et al.'s dialog
   simulator, which says a relative caption). Each data set's user lives with its data set (``data.emojiedit``
   ``EmojiUser``, ``data.css`` ``CssUser``), found through ``data.user``. :class:`Wording` can make it speak like
   people instead: the same edit in a shape of the paraphrase bank, or its own words perturbed (typos, synonyms...).

The next search is composed from the session's turns by its history mode (:mod:`cirlab.session`), the reference left
out of its ranking. A session ends when the target is at rank 1.

Measured per turn T = 1..``turns``: the share of sessions whose target was at rank 1 by turn T, and within the top 10
by turn T; the mean number of turns to reach rank 1 (of the sessions that did), and the share that never did.
"""

from __future__ import annotations

import itertools
import random
import statistics
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from cirlab.data.paraphrase import paraphrases
from cirlab.data.perturb import TextAugment
from cirlab.data.triplets import Triplet
from cirlab.data.user import simulated_user
from cirlab.devices import module_device
from cirlab.errors import CirlabError
from cirlab.eval.evaluate import compose_queries, embed_gallery, gallery_index, query_rescoring, ranked, ranked_ids
from cirlab.eval.metrics import first_hits
from cirlab.index.scoring import ProductScoring
from cirlab.session import Turn, check_mode, combine_each, plan

TOP = 10  # the "within the top 10" of the success curves
STARTS = ("random", "editable")


@dataclass(frozen=True)
class Wording:
    """How the simulated user words each edit: ``own``, the data set's own phrasings (those it was trained on);
    ``bank``, a shape of the paraphrase bank for the same edit, drawn each turn (never a training text); or a
    perturbation spec (``data.perturb.TextAugment``, e.g. ``typos=0.05`` or ``synonyms=0.5,frames=0.5``) applied to
    its own words. Its draws use their own generator, so the sessions' targets and starts are those of ``own``."""

    spec: str = "own"

    def __post_init__(self) -> None:
        if self.spec in ("own", "bank"):
            return
        try:
            perturbs = bool(TextAugment.parse(self.spec))
        except CirlabError as e:
            perturbs, why = False, f" ({e})"
        else:
            why = " (it changes nothing)"
        if not perturbs:
            raise CirlabError(f"the simulated user's words {self.spec!r}: use own, bank, or a perturbation such as "
                              f"typos=0.05{why}")

    def speaker(self, user, seed: int) -> Callable[[str, str, str, str], str]:
        """``say(text, kind, current, target)``: the user's own text of an edit, worded this way."""
        if self.spec == "own":
            return lambda text, kind, current, target: text
        rng = random.Random(f"{seed}|words|{self.spec}")
        if self.spec == "bank":
            def say(text: str, kind: str, current: str, target: str) -> str:
                if kind in user.text_only:  # a search by words alone has no edit to paraphrase
                    return text
                edit = Triplet(current, text, [target], user.attributes(current, target, kind))
                return rng.choice(paraphrases(user.name, edit)[1])
            return say
        augment = TextAugment.parse(self.spec)
        return lambda text, kind, current, target: augment(text, rng).strip() or text


@dataclass(frozen=True)
class MultiTurn:
    """How a bench measures multi-turn search: ``sessions`` per model, history mode, number of results shown and
    wording, at most ``turns`` each, the user looking at the top ``shown`` (each measured) and wording its edits as
    each of ``words`` says (:class:`Wording`), each session starting as ``start`` says (:func:`run_sessions`)."""

    sessions: int = 200
    turns: int = 10
    shown: tuple[int, ...] = (1,)
    modes: tuple[str, ...] = ("last", "text", "mean")
    start: str = "random"
    words: tuple[str, ...] = ("own",)

    def __post_init__(self) -> None:
        for shown in self.shown or (0,):
            check_setting(self.sessions, self.turns, shown, self.start)
        if not self.modes or not self.words:
            raise CirlabError("name at least one history mode and one wording")
        for mode in self.modes:
            check_mode(mode)
        for words in self.words:
            Wording(words)

    def settings(self) -> list[tuple[str, str, int, str]]:
        """(label, history mode, shown, words) of each measured setting: the label is the mode, with the results
        shown where several counts are measured, and the wording where it is not only the user's own."""
        return [(mode + (f", top {n}" if len(self.shown) > 1 else "")
                 + (f", words {w}" if self.words != ("own",) else ""), mode, n, w)
                for w in self.words for n in self.shown for mode in self.modes]


def check_setting(sessions: int, turns: int, shown: int, start: str) -> None:
    if start not in STARTS:
        raise CirlabError(f"unknown session start {start!r}: use one of {', '.join(STARTS)}")
    if min(sessions, turns, shown) < 1:
        raise CirlabError(f"sessions, turns and shown must each be at least 1, got {sessions}, {turns}, {shown}")


@dataclass
class Sessions:
    """The outcome of simulated sessions: each session's 0-based rank of its target at each turn it ran (a session
    stops at rank 0), and the edits the user said, with the turn's rank after each."""

    ranks: list[list[float]]
    turns: int
    edits: list[tuple[str, float]] = field(default_factory=list)
    # per session, its target and each turn: the reference it refined from (None: words alone), the text, and the top
    # ids it got
    dialogs: list[dict] = field(default_factory=list)

    def success(self, within: int) -> list[float]:
        """Per turn T = 1..turns, the share (%) of sessions whose target was within the top ``within`` by turn T."""
        out = []
        for t in range(1, self.turns + 1):
            out.append(100.0 * float(np.mean([any(r < within for r in s[:t]) for s in self.ranks])))
        return out

    def summary(self) -> dict[str, float]:
        """``R@1 by T`` and ``R@10 by T`` per turn, ``mean turns`` to rank 1 (sessions that got there) and ``never``
        (%): the sessions that did not within ``turns``."""
        out = {f"R@1 by {t}": v for t, v in enumerate(self.success(1), 1)}
        out.update({f"R@{TOP} by {t}": v for t, v in enumerate(self.success(TOP), 1)})
        reached = [next(t for t, r in enumerate(s, 1) if r < 1) for s in self.ranks if any(r < 1 for r in s)]
        out["mean turns"] = statistics.fmean(reached) if reached else float("nan")
        out["never"] = 100.0 * (1 - len(reached) / len(self.ranks)) if self.ranks else 0.0
        return out

    def stuck_edits(self) -> dict[str, float]:
        """Per edit kind, the share (%) of its turns after which the target was still not in the top 10."""
        by: dict[str, list[bool]] = {}
        for kind, rank in self.edits:
            by.setdefault(kind, []).append(rank >= TOP)
        return {k: 100.0 * sum(v) / len(v) for k, v in sorted(by.items())}


def run_sessions(ws, model, split: str = "test", sessions: int = 200, turns: int = 10, mode: str = "last",
                 shown: int = 1, seed: int = 0, text_head=None, start: str = "random", words: str = "own") -> Sessions:
    """``sessions`` simulated sessions (:func:`simulate`) of ``model`` over ``split``'s gallery, composed from a
    workspace's encoded tables, the history read as ``mode`` says, the user's edits worded as ``words`` says
    (:class:`Wording`). ``text_head``: the model's text-to-image head, for the turns said by words alone (else the
    method's own text projection)."""
    check_mode(mode)
    check_setting(sessions, turns, shown, start)
    if model.reads_raw_queries:
        raise CirlabError(f"{model.name} makes each query's inputs from the raw image and text: the multi-turn "
                          "benchmark composes from the encoded tables; measure another method")
    gallery_ids = ws.gallery_ids(split)
    index = gallery_index(embed_gallery(model, ws.images, gallery_ids), gallery_ids)
    calls = itertools.count(1)

    def search(histories: list[list[Turn]], k: int) -> list[list[str]]:
        vectors, scoring = _session_vectors(ws, model, [plan(h, mode) for h in histories],
                                            f"{split}~turn{next(calls)}", text_head)
        exclude = [{h[-1].reference} - {None} for h in histories]  # the turn's reference
        top, scores = ranked(index, vectors, k, exclude, scoring)
        return ranked_ids(top, scores, gallery_ids)

    return simulate(simulated_user(ws.dataset), gallery_ids, search, sessions, turns, shown, seed, start,
                    Wording(words))


Search = Callable[[list[list[Turn]], int], list[list[str]]]


def simulate(user, gallery_ids: list[str], search: Search, sessions: int = 200, turns: int = 10, shown: int = 1,
             seed: int = 0, start: str = "random", words: Wording = Wording()) -> Sessions:
    """``sessions`` simulated sessions over ``gallery_ids``, each with its own target and a random start, at most
    ``turns`` turns each. ``search(histories, k)``: the top ``k`` gallery ids of each running session (its turns so
    far, the last one new; that turn's reference left out), whatever answers it: the bench's encoded
    tables (:func:`run_sessions`) or the HTTP server (``benchmarks/multi_turn_http.py``). ``start``: ``random``,
    another gallery image; ``editable``, another gallery image from which the data set's own edits reach the target
    (EmojiEdit: one of the same emoji; CSS-like: any). ``words``: how the user words each edit."""
    check_setting(sessions, turns, shown, start)
    rng, say = random.Random(seed), words.speaker(user, seed)
    targets, answers, starts = draw_sessions(user, gallery_ids, sessions, rng, start)
    history: list[list[Turn]] = [[] for _ in targets]
    reference, ranks, edits = list(starts), [[] for _ in targets], []
    dialogs = [{"target": t, "start": s, "turns": []} for t, s in zip(targets, starts)]
    active = list(range(len(targets)))
    for _ in range(turns):
        said = []
        for n in active:
            text, kind = user.edit(reference[n], targets[n], rng)
            text = say(text, kind, reference[n], targets[n])
            history[n].append(Turn(None if kind in user.text_only else reference[n], text))
            said.append(kind)
        ids = search([history[n] for n in active], max(TOP, shown))
        hit = first_hits(ids, [answers[n] for n in active])
        for n, row, r, kind in zip(active, ids, hit, said):
            ranks[n].append(float(r))
            edits.append((kind, float(r)))
            dialogs[n]["turns"].append({"reference": history[n][-1].reference, "text": history[n][-1].text,
                                        "edit": kind, "top": row[:max(3, shown)], "rank": float(r)})
            candidates = [x for x in row[:shown] if x not in answers[n]]
            if candidates:
                reference[n] = min(candidates, key=lambda x: user.distance(x, targets[n]))
        active = [n for n in active if ranks[n][-1] > 0]
        if not active:
            break
    return Sessions(ranks, turns, edits, dialogs)


def draw_sessions(user, gallery_ids: list[str], sessions: int, rng: random.Random,
                  start: str = "random") -> tuple[list[str], list[list[str]], list[str]]:
    """Each session's target, the images the user cannot tell from it (its answers), and its start, drawn from
    ``rng`` as :func:`simulate` draws them (the same seed gives the same sessions)."""
    if len(gallery_ids) < 2:
        raise CirlabError(f"the gallery has {len(gallery_ids)} encoded images: a session needs two")
    targets = [gallery_ids[j] for j in rng.sample(range(len(gallery_ids)), min(sessions, len(gallery_ids)))]
    same: dict = {}
    for g in gallery_ids:
        same.setdefault(user.key(g), []).append(g)
    answers = [same[user.key(t)] for t in targets]  # every image the user cannot tell from its target
    starts = []
    for t, found in zip(targets, answers):
        pool = [g for g in gallery_ids if g not in found and (start == "random" or user.editable(g, t))]
        starts.append(rng.choice(pool or [g for g in gallery_ids if g not in found]))
    return targets, answers, starts


def _session_vectors(ws, model, plans: list[list[Turn]], split: str,
                     text_head=None) -> tuple[np.ndarray, ProductScoring | None]:
    """Each session's query vector: its plan's queries composed from the workspace's tables (new texts encoded; a
    turn without a reference read by ``text_head``, else by the method's own text projection), then combined
    (:func:`cirlab.session.combine`); and the method's own re-scoring where every plan is one composed query (as the
    service does: a combined vector has no parts to re-score)."""
    flat = [q for p in plans for q in p]
    composed = [n for n, q in enumerate(flat) if q.reference is not None]
    alone = [n for n, q in enumerate(flat) if q.reference is None]
    triplets = [Triplet(flat[n].reference, flat[n].text or "", [flat[n].reference]) for n in composed]
    queries = ws.queries(model, ws.add_split(split, triplets))
    vectors = np.zeros((len(flat), model.embed_dim), np.float32)
    if composed:
        vectors[composed] = compose_queries(model, queries, triplets)
    if alone:
        vectors[alone] = text_vectors(ws, model, [flat[n].text for n in alone], text_head)
    if all(len(p) == 1 for p in plans) and not alone:
        return vectors, query_rescoring(model, queries, triplets)
    return np.stack(combine_each(vectors, [len(p) for p in plans])), None


@torch.inference_mode()
def text_vectors(ws, model, texts: list[str], text_head=None) -> np.ndarray:
    """Text-only query vectors in ``model``'s gallery space: through a text-to-image head, or the method's own text
    projection (what ``Pipeline.compose_many`` does for a query without a reference)."""
    pooled = torch.as_tensor(ws.cache.text_features(ws.text_encoder, texts, ("pooled",), progress=False)["pooled"])
    head = text_head if text_head is not None else model.project_text
    return head(pooled.float().to(module_device(model))).float().cpu().numpy()
