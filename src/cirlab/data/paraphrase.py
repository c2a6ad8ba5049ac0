"""Paraphrase robustness: each test query asked in phrasings the training never used.

The bank (``paraphrases.json``, versioned with the package) holds, per data set and per edit, five phrasings of
different shapes (word order, synonyms, a longer sentence, a terse one, another wording), none of them a training
phrasing (a test checks every one against every training text). A query's paraphrases are made from what its edit
is: EmojiEdit's triplet attributes (the edited factor and its new value), CSS-like's text in the generator's own
grammar (``css.parse_edit``; a data set drawn with wider phrasings keeps it as the attribute ``canonical``).

:func:`paraphrased` gives, for each phrasing ``j``, the split's triplets with every query's text replaced by its
edit's ``j``-th phrasing: evaluating each is the paraphrase study (``cirlab bench --paraphrases``).
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from cirlab.data.css import parse_edit
from cirlab.data.emojiedit import edit_words
from cirlab.data.triplets import Triplet
from cirlab.errors import CirlabError

BANK = Path(__file__).with_name("paraphrases.json")


@lru_cache(maxsize=1)
def bank() -> dict:
    return json.loads(BANK.read_text())


PARAPHRASE_SHAPES = tuple(bank()["shapes"])  # what each phrasing's position in an edit's list stands for


def phrasing_text(dataset: str, key: str) -> str:
    """The bank's template of an edit's phrasing ``<edit>#<j>``."""
    edit, j = key.rsplit("#", 1)
    return bank()[_family(dataset)][edit][int(j)]


def phrasings(dataset: str) -> int:
    """How many phrasings each edit of ``dataset`` has in the bank (0: the bank has none for it)."""
    families = bank().get(_family(dataset), {})
    return min((len(v) for v in families.values()), default=0)


def _family(dataset: str) -> str:
    return "css" if dataset.startswith("css") else dataset


def paraphrases(dataset: str, triplet: Triplet) -> tuple[str, list[str]]:
    """The edit's name in the bank and its phrasings for this query, filled in."""
    family = _family(dataset)
    if family == "emojiedit":
        a = triplet.attributes if isinstance(triplet.attributes, dict) else {}
        if "edit" not in a:
            raise CirlabError(f"an EmojiEdit triplet without its edit attributes: {triplet.text!r}")
        edit, words = edit_words(a["edit"], a.get("to"))
        return edit, [p.replace("{v}", words) for p in bank()["emojiedit"][edit]]
    if family == "css":
        a = triplet.attributes if isinstance(triplet.attributes, dict) else {}
        parsed = parse_edit(a.get("canonical", triplet.text))
        if parsed is None:
            raise CirlabError(f"not a CSS-like edit text: {triplet.text!r}")
        edit, slots = parsed
        fill = {"object": slots["object"], "place": f" at {slots['cell']}" if slots.get("cell") else "",
                "value": slots.get("value", "")}
        return edit, [p.format(**fill) for p in bank()["css"][edit]]
    raise CirlabError(f"the paraphrase bank has no phrasings for data set {dataset!r}; it has "
                      f"{', '.join(k for k in bank() if isinstance(bank()[k], dict))}")


def paraphrased(dataset: str, triplets: list[Triplet]) -> list[list[Triplet]]:
    """For each phrasing ``j``, ``triplets`` with each text replaced by its edit's ``j``-th phrasing (the attributes
    gain ``phrasing``: ``<edit>#<j>``)."""
    out: list[list[Triplet]] = [[] for _ in range(phrasings(dataset))]
    for t in triplets:
        edit, texts = paraphrases(dataset, t)
        for j, text in enumerate(texts[:len(out)]):
            attrs = t.attributes if isinstance(t.attributes, dict) else {}
            out[j].append(Triplet(t.reference, text, t.targets, {**attrs, "phrasing": f"{edit}#{j}"}))
    return out


def bank_texts(dataset: str, triplets: list[Triplet]) -> set[str]:
    """Every text the bank makes of these queries: what training must never read (empty where the bank has no
    phrasings for the data set)."""
    if not phrasings(dataset):
        return set()
    return {t.text for phrased in paraphrased(dataset, triplets) for t in phrased}


def training_variants(augment, dataset: str, train: list[Triplet], held_out: list[Triplet],
                      seed: int) -> dict[str, list[str]]:
    """Each training text's variants under ``augment`` (a ``data.perturb.TextAugment``), none a text the bank makes of
    the ``held_out`` queries: what both training stages read, never what the bank measures with."""
    return augment.variants_of([t.text for t in train], seed, sorted(bank_texts(dataset, held_out)))
