"""A multi-turn search session: how the turns so far become the query of the next search.

A user refines: each turn is a reference (the result they picked, or none) and a modification text. The history
mode says what the next search reads of the turns (docs/evaluation.md#multi-turn-search):

- ``last``: the last turn alone, (its reference, its text): the history is not read;
- ``text``: the last reference with every text of the session so far, in order, joined by " and " (a text said twice
  counts once): earlier wishes are restated, so a result that lost one is pulled back;
- ``mean``: every turn's own composed query (its reference, its text), their vectors averaged and normalised.

:func:`plan` gives the queries to compose and :func:`combine` their vectors' combination. The HTTP service
(``POST /search`` with ``history``) and the simulated-user benchmark (``eval.multiturn``) both go through them, so a
served session and a measured one are the same query.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, Sequence, TypeVar

import numpy as np

from cirlab.errors import CirlabError

HISTORY_MODES = ("last", "text", "mean")
MAX_TURNS = 20  # a session's history beyond this is refused: each turn is composed again in the mean mode
JOIN = " and "

R = TypeVar("R")  # what a reference is to the caller: a gallery id, a file path, an image


@dataclass(frozen=True)
class Turn(Generic[R]):
    """One turn of a session: the reference it started from (None: a text-only turn) and what the user said."""

    reference: R | None
    text: str | None


def check_mode(mode: str) -> str:
    if mode not in HISTORY_MODES:
        raise CirlabError(f"unknown history mode {mode!r}: use one of {', '.join(HISTORY_MODES)}")
    return mode


def plan(turns: Sequence[Turn], mode: str = "last") -> list[Turn]:
    """The queries to compose for the next search of a session whose turns (oldest first, the new one last) are
    ``turns``: one query, or one per turn (``mean``)."""
    check_mode(mode)
    if not turns:
        raise CirlabError("a session needs at least one turn")
    if len(turns) > MAX_TURNS:
        raise CirlabError(f"a session's history is limited to {MAX_TURNS} turns, got {len(turns)}: start a new session")
    last = turns[-1]
    if mode == "last":
        return [last]
    if mode == "mean":
        return [t for t in turns if t.reference is not None or t.text]
    texts = list(dict.fromkeys(t.text for t in turns if t.text))
    return [Turn(last.reference, JOIN.join(texts) if texts else None)]


def combine(vectors: Sequence[np.ndarray]) -> np.ndarray:
    """One query vector from a plan's composed vectors: the one itself, or their mean, normalised."""
    if len(vectors) == 1:
        return np.asarray(vectors[0], np.float32)
    mean = np.mean(np.stack(vectors).astype(np.float32), axis=0)
    return (mean / max(float(np.linalg.norm(mean)), 1e-12)).astype(np.float32)


def combine_each(vectors: Sequence, sizes: Sequence[int]) -> list:
    """Each plan's vector from the composed vectors of all plans, in order (``sizes``: each plan's query count):
    :func:`combine` of its slice, or the first error among its queries where one failed (a server's batch)."""
    out, at = [], 0
    for size in sizes:
        mine = list(vectors[at:at + size])
        failed = next((v for v in mine if isinstance(v, Exception)), None)
        out.append(failed if failed is not None else combine(mine))
        at += size
    return out
