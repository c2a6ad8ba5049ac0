"""Spelling correction of a query's text, at query time.

A word is corrected only when it is known neither to the model (the words of its training texts, which a checkpoint
records) nor to English (the frequency list pyspellchecker ships): a word it knows is never touched, so a text in the
training phrasing is searched as it was typed. Words of another script or with accents, contractions and words of
one or two letters are left as typed too: an English speller cannot judge them ("s'il te plaît" stays). An unknown
word becomes the most likely known word within two edits, the model's own words first ("womna" -> "woman", "skni"
-> "skin" rather than "ski"). What changed is returned, so that the reply and the page can say "searched for: ...".
"""

from __future__ import annotations

import re
from typing import Iterable

WORD = re.compile(r"[^\W\d_]+(?:['’][^\W\d_]+)*")  # letters of any script, with their apostrophes ("s'il")
SHORT = 3  # shorter words are left as typed: too little to go on ("il", "ok")
LONG = 12  # longer unknown words are looked up within one edit only (two would be slow and rarely right)


def vocabulary(texts: Iterable[str]) -> list[str]:
    """The words of ``texts``, lower case, sorted: what a checkpoint records of its training texts."""
    return sorted({w.lower() for t in texts for w in WORD.findall(t)})


def correctable(word: str) -> bool:
    """Whether the English speller can judge ``word``: plain ASCII letters, no apostrophe, at least :data:`SHORT`
    long (a word of another language, a contraction or a short word is left as typed)."""
    return len(word) >= SHORT and word.isascii() and word.isalpha()


class Speller:
    def __init__(self, known: Iterable[str] = ()) -> None:
        from cirlab.optional import need

        spellchecker = need("spellchecker", "text", "spelling correction")
        self.known = {w.lower() for w in known}
        self.checker = spellchecker.SpellChecker(distance=2)
        top = max(self.checker.word_frequency.dictionary.values(), default=1)
        # the model's own words outrank every English word at the same distance
        self.checker.word_frequency.load_json({w: top + 1 for w in self.known})
        self._short = spellchecker.SpellChecker(distance=1)
        self._short.word_frequency.load_json({w: top + 1 for w in self.known})
        self._seen: dict[str, str] = {}  # corrections made (an unknown word within two edits takes ~0.1 s)

    def knows(self, word: str) -> bool:
        return word.lower() in self.known or word.lower() in self.checker

    def word(self, word: str) -> str:
        """``word`` itself if known (or not :func:`correctable`), else its correction (its case kept: capitalised, or
        all capitals)."""
        if not correctable(word) or self.knows(word):
            return word
        found = self._seen.get(word.lower())
        if found is None:
            checker = self._short if len(word) > LONG else self.checker
            found = checker.correction(word.lower()) or word.lower()
            if len(self._seen) > 100_000:
                self._seen.clear()
            self._seen[word.lower()] = found
        if found == word.lower():
            return word
        return found.upper() if word.isupper() and len(word) > 1 else found.capitalize() if word[:1].isupper() else found

    def correct(self, text: str) -> tuple[str, list[dict]]:
        """The text with each unknown word corrected, and what changed: ``[{"from": ..., "to": ...}]``."""
        changes: list[dict] = []

        def fix(m: re.Match) -> str:
            new = self.word(m.group(0))
            if new != m.group(0):
                changes.append({"from": m.group(0), "to": new})
            return new

        return WORD.sub(fix, text), changes
