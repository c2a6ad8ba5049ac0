"""Spelling correction of a query's text, at query time.

A word is corrected only when it is known neither to the model (the words of its training texts, which a checkpoint
records) nor to English (the frequency list pyspellchecker ships): a word it knows is never touched, so a text in the
training phrasing is searched as it was typed. Words of another script or with accents, contractions and words of
one or two letters are left as typed too: an English speller cannot judge them ("s'il te plaît" stays). An unknown
word becomes the most likely known word within two edits: the model's own words first ("womna" -> "woman", "skni"
-> "skin" rather than "ski"); then the one the model's training texts put most often between the words around it
("medium ight skin" -> "light", not "right"); then one that keeps the typed first letter ("wman" -> "woman", not
"man").
What changed is returned, so that the reply and the page can say "searched for: ...".
"""

from __future__ import annotations

import re
from collections import Counter
from itertools import pairwise
from typing import Iterable

WORD = re.compile(r"[^\W\d_]+(?:['’][^\W\d_]+)*")  # letters of any script, with their apostrophes ("s'il")
SHORT = 3  # shorter words are left as typed: too little to go on ("il", "ok")
LONG = 12  # longer unknown words are looked up within one edit only (two would be slow and rarely right)


def vocabulary(texts: Iterable[str]) -> list[str]:
    """The words of ``texts``, lower case, sorted: what a checkpoint records of its training texts."""
    return sorted({w.lower() for t in texts for w in WORD.findall(t)})


def word_pairs(texts: Iterable[str], limit: int = 20_000) -> dict[str, int]:
    """How often each two words follow each other in ``texts`` (lower case, ``"skin tone"``), the ``limit`` most
    frequent: what a checkpoint records beside its vocabulary, for :class:`Speller` to read a word in context."""
    counts = Counter(f"{a} {b}" for t in texts for a, b in pairwise(w.lower() for w in WORD.findall(t)))
    return dict(sorted(counts.most_common(limit)))


def correctable(word: str) -> bool:
    """Whether the English speller can judge ``word``: plain ASCII letters, no apostrophe, at least :data:`SHORT`
    long (a word of another language, a contraction or a short word is left as typed)."""
    return len(word) >= SHORT and word.isascii() and word.isalpha()


class Speller:
    """Corrects the words of a query known neither to the model (``known``: its training words) nor to English.
    ``pairs``: how often each two words follow each other in the model's training texts (:func:`word_pairs`), which
    picks between candidates by the words around them ("medium ight skin" -> "light", not "right")."""

    def __init__(self, known: Iterable[str] = (), pairs: dict[str, int] | None = None) -> None:
        from cirlab.optional import need

        spellchecker = need("spellchecker", "text", "spelling correction")
        self.known = {w.lower() for w in known}
        self.pairs = dict(pairs or {})
        self.checker = spellchecker.SpellChecker(distance=2)
        top = max(self.checker.word_frequency.dictionary.values(), default=1)
        # the model's own words outrank every English word at the same distance
        self.checker.word_frequency.load_json({w: top + 1 for w in self.known})
        self._short = spellchecker.SpellChecker(distance=1)
        self._short.word_frequency.load_json({w: top + 1 for w in self.known})
        self._seen: dict[tuple, str] = {}  # corrections made (an unknown word within two edits takes ~0.1 s)

    def knows(self, word: str) -> bool:
        return word.lower() in self.known or word.lower() in self.checker

    def word(self, word: str, before: str = "", after: str = "") -> str:
        """``word`` itself if known (or not :func:`correctable`), else its correction (its case kept: capitalised, or
        all capitals); ``before`` / ``after``: the words around it, lower case."""
        if not correctable(word) or self.knows(word):
            return word
        key = (word.lower(), before, after) if self.pairs else (word.lower(),)
        found = self._seen.get(key)
        if found is None:
            found = self.likeliest(word.lower(), before, after)
            if len(self._seen) > 100_000:
                self._seen.clear()
            self._seen[key] = found
        if found == word.lower():
            return word
        return found.upper() if word.isupper() and len(word) > 1 else found.capitalize() if word[:1].isupper() else found

    def likeliest(self, word: str, before: str = "", after: str = "") -> str:
        """The known word nearest ``word`` (lower case; within one edit past :data:`LONG` letters, else two), or
        ``word`` where none is. The model's own words first; then the one its training texts put most often between
        ``before`` and ``after``; then one that keeps the typed first letter (slips rarely hit it: "wman" -> "woman",
        not the more frequent "man"); then the more frequent in English, the closest in length and the first in the
        alphabet, so that every process gives the same answer."""
        checker = self._short if len(word) > LONG else self.checker
        found = checker.candidates(word)
        if not found:
            return word

        def context(c: str) -> int:
            return self.pairs.get(f"{before} {c}", 0) + self.pairs.get(f"{c} {after}", 0)

        return min(found, key=lambda c: (c not in self.known, -context(c), c[:1] != word[:1], -checker[c],
                                         abs(len(c) - len(word)), c))

    def correct(self, text: str) -> tuple[str, list[dict]]:
        """The text with each unknown word corrected, and what changed: ``[{"from": ..., "to": ...}]``. A word is read
        between the word before it (as corrected) and the word after it (as typed)."""
        changes: list[dict] = []
        found = list(WORD.finditer(text))
        out, end, before = [], 0, ""
        for n, m in enumerate(found):
            after = found[n + 1].group(0).lower() if n + 1 < len(found) else ""
            new = self.word(m.group(0), before, after)
            if new != m.group(0):
                changes.append({"from": m.group(0), "to": new})
            out += [text[end:m.start()], new]
            end, before = m.end(), new.lower()
        return "".join(out) + text[end:], changes
