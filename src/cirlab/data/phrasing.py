"""Wider phrasing grammars for the data sets cirlab draws (``phrasings.json``, by version).

Version 1 is each generator's own few phrasings (EmojiEdit: four an edit; CSS-like: TIRG's one grammar). A later
version adds, for each edit, one phrasing of each of the file's ``shapes`` (terse, declarative, "should", notation,
negation, a longer sentence): ``cirlab data make NAME --phrasings N`` draws every text of the data set, in every
split, from the wider list, and records the version in ``dataset.json``. The scenes, the targets and the edits stay
those of version 1; only the words change. No phrasing equals a text of the paraphrase bank (a test checks every
one), so the bank stays a held-out test of wording.
"""

from __future__ import annotations

import json
import random
from functools import lru_cache
from pathlib import Path

from cirlab.errors import CirlabError

GRAMMARS = Path(__file__).with_name("phrasings.json")


@lru_cache(maxsize=1)
def _file() -> dict:
    return json.loads(GRAMMARS.read_text())


def versions() -> list[int]:
    """The phrasing versions this cirlab draws: 1 (the generators' own) and every version of the file."""
    return [1, *sorted(int(k) for k in _file() if k.isdigit())]


def check_version(version: int) -> int:
    if version not in versions():
        raise CirlabError(f"unknown phrasing version {version}; this cirlab has {', '.join(map(str, versions()))}")
    return version


def extra_phrasings(dataset: str, version: int) -> dict:
    """What version ``version`` adds to data set ``dataset``'s own phrasings (empty for version 1)."""
    check_version(version)
    return {} if version == 1 else _file()[str(version)][dataset]


def reword_css(edit: str, slots: dict, rng: random.Random, version: int) -> str | None:
    """A CSS-like edit (``add`` / ``remove`` / ``change`` with its ``object``, ``cell`` and ``value`` slots) in a
    phrasing of version ``version`` drawn with ``rng``; None where the version adds nothing (keep the text)."""
    extra = extra_phrasings("css", version)
    if not extra:
        return None
    place = rng.choice(extra["places"]).format(cell=slots["cell"]) if slots.get("cell") else ""
    return rng.choice(extra[edit]).format(object=slots["object"], place=place, value=slots.get("value") or "")
