"""How people word an edit differently, as seeded perturbations of a modification text.

One spec (``TextAugment``) serves both sides: training reads each text in several augmented variants
(``cirlab train --text-augment``), and evaluation asks the same queries perturbed (``cirlab eval --perturb``, the
``robustness`` measurement). Each kind is a probability or a rate; the empty spec changes nothing:

- ``typos=R``: each letter slips with probability R (a share of the characters): swapped with the next, dropped,
  doubled, or struck as a keyboard neighbour (QWERTY, the neighbours computed from the rows' geometry);
- ``frames=P``: with probability P the text is wrapped in a request frame or gets a filler ("could you ...",
  "i'd like ...", "..., please");
- ``synonyms=P``: each word WordNet gives a synonym of its most frequent sense (``data.wordnet``: Debian's
  ``wordnet-base``) is replaced with probability P, by a common word (the English frequency list pyspellchecker
  ships) that is not a form of it;
- ``relatives=P``: each word of the texts (a data set's own words) that WordNet relates to words people use for
  it, in the sense its neighbours among the texts' words pick out ("pale" for "light", whose antonym "dark" is a
  word of the texts too; "male" for "man"), is replaced with probability P by one of them (:func:`relatives_in`);
- ``order=P``: with probability P a trailing phrase moves to the front where the grammar allows ("to top-left, add
  a red circle", "instead, dark skin");
- ``drop=P``: each function word (an article, a pronoun, a helper verb; never a negation) is dropped with
  probability P, keeping at least one word;
- ``case=P``: with probability P the case or the punctuation changes (a capital, shouting, a full stop, a hyphen
  as a space).

Training settings ride in the same spec: ``variants=N`` (variants made of each training text, encoded once) and
``keep=P`` (the chance that a triplet reads its own text in an epoch). A variant is a function of the spec, the seed
and the text alone, so a run is reproducible and the variants are cached as texts are.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import dataclass, fields
from functools import lru_cache
from typing import Iterable, Sequence

from cirlab.data.triplets import Triplet
from cirlab.errors import CirlabError
from cirlab.registry import dataclass_options

ROWS = ("qwertyuiop", "asdfghjkl", "zxcvbnm")
STAGGER = (0.0, 0.25, 0.75)  # how far each row sits right of the one above, in keys
NEGATIONS = frozenset({"no", "not", "nor", "never", "without", "none", "nothing"})
DROPPABLE = frozenset("a an the it its this that one ones is are be been please just so do some".split())
VERB_FRAMES = ("please {}", "can you {}", "could you {}?", "i want you to {}", "i'd like you to {}", "would you {}")
OTHER_FRAMES = ("i'd like {}", "i want {}", "how about {}", "what about {}", "i'm looking for {}", "maybe {}")
FILLERS = ("{}, please", "{} please", "{}, thanks", "hmm, {}", "ok so {}", "actually, {}")
PREPOSITIONS = ("to", "into", "onto", "on", "in", "at", "from", "with")
TRAILING = ("instead", "please", "now")
MIN_FREQUENCY = 1000  # a synonym as common as this in the frequency list at least
# What a spec makes: bump when the same spec, seed and text give other variants (a new kind's rule, a list changed).
# A model trained with augmentation records it, and a reused run (``reuse=True``: the demo, stage 1) must match.
# 2: relatives (session 9) and a hyphenated value kept whole.
RULES = 2


@lru_cache(maxsize=1)
def keyboard_neighbours() -> dict[str, str]:
    """Each letter's neighbours on a QWERTY keyboard: the keys beside it on its row, and those above and below
    whose centres lie within three quarters of a key of its own."""
    where = {c: (r, col + STAGGER[r]) for r, row in enumerate(ROWS) for col, c in enumerate(row)}
    out = {}
    for c, (r, x) in where.items():
        out[c] = "".join(d for d, (s, y) in where.items() if d != c and (
            (s == r and abs(y - x) == 1) or (abs(s - r) == 1 and abs(y - x) <= 0.75)))
    return out


def slip(text: str, rate: float, rng: random.Random) -> str:
    """``text`` with each letter slipped with probability ``rate``: swapped with the next letter, dropped, doubled or
    struck as a keyboard neighbour."""
    chars, out, n = list(text), [], 0
    while n < len(chars):
        c = chars[n]
        if not c.isalpha() or rng.random() >= rate:
            out.append(c)
            n += 1
            continue
        kind = rng.choice(("swap", "drop", "double", "neighbour"))
        if kind == "swap" and n + 1 < len(chars) and chars[n + 1].isalpha():
            out += [chars[n + 1], c]
            n += 2
            continue
        if kind == "double":
            out += [c, c]
        elif kind == "neighbour" and c.lower() in keyboard_neighbours():
            near = rng.choice(keyboard_neighbours()[c.lower()])
            out.append(near.upper() if c.isupper() else near)
        elif kind != "drop":
            out.append(c)
        n += 1
    return "".join(out) or text


@lru_cache(maxsize=1)
def word_frequency():
    """The English word frequencies pyspellchecker ships (its ``en`` list)."""
    from cirlab.optional import need

    return need("spellchecker", "text", "synonym and spelling work").SpellChecker().word_frequency


@lru_cache(maxsize=1)
def offensive_words() -> frozenset[str]:
    """The offensive words of the list better-profanity ships: never generated, whatever a lexicon relates."""
    from importlib.resources import files

    from cirlab.optional import need

    need("better_profanity", "text", "relatives for --text-augment")
    lines = (files("better_profanity") / "profanity_wordlist.txt").read_text().splitlines()
    return frozenset(line.strip().lower() for line in lines if line.strip() and " " not in line.strip())


def vocabulary(texts: Iterable[str]) -> list[str]:
    """The content words of the texts, lower-cased and sorted: those relatives are found for, and never become."""
    words = {w for t in texts for w in re.findall(r"[a-z]+", t.lower())}
    return sorted(w for w in words if len(w) >= 3 and w not in DROPPABLE and w not in NEGATIONS)


def relatives_in(texts: Iterable[str]) -> dict[str, tuple[str, ...]]:
    """Each word of the texts -> WordNet's relatives of it in the senses the texts' other words pick out
    (``WordNet.relatives_among``), kept where they are common words, not words of the texts (no value of a data set
    turns into another), not a form of the word, not offensive, and related to that one word of the texts alone
    ("adult" is both a man and a woman: dropped)."""
    from cirlab.data.wordnet import wordnet

    vocab = vocabulary(texts)
    known, freq, offensive = set(vocab), word_frequency(), offensive_words()
    found = {w: [r for r in wordnet().relatives_among(w, known) if r not in known and r not in offensive
                 and can_stand_for(r, w, freq)] for w in vocab}
    owners = Counter(r for rs in found.values() for r in rs)
    return {w: tuple(r for r in rs if owners[r] == 1) for w, rs in found.items() if any(owners[r] == 1 for r in rs)}


@lru_cache(maxsize=4096)
def synonyms_of(word: str) -> tuple[str, ...]:
    """WordNet's synonyms of ``word`` (``data.wordnet``) that are common words and not a form of it."""
    from cirlab.data.wordnet import wordnet

    if len(word) < 3 or not word.isalpha() or word in DROPPABLE or word in NEGATIONS:
        return ()
    freq = word_frequency()
    return tuple(s for s in wordnet().synonyms(word) if can_stand_for(s, word, freq))


def can_stand_for(other: str, word: str, freq) -> bool:
    """Whether ``other`` may replace ``word`` in a generated text: a common word (``freq``: :func:`word_frequency`)
    of three letters or more, not a function word, and not a form of ``word``."""
    return (freq[other] >= MIN_FREQUENCY and len(other) >= 3 and other not in DROPPABLE
            and not (other.startswith(word[:4]) or word.startswith(other[:4])))


def frame(text: str, rng: random.Random) -> str:
    """A request frame around ``text`` (an imperative gets "could you ...", a bare edit "i'd like ..."), or a filler."""
    words = text.split()
    if rng.random() < 0.5:
        return rng.choice(FILLERS).format(text)
    from cirlab.data.wordnet import wordnet

    verb = bool(words) and wordnet().dominant(words[0].lower()) == "verb"
    return rng.choice(VERB_FRAMES if verb else OTHER_FRAMES).format(text)


def reorder(text: str, rng: random.Random) -> str:
    """A trailing phrase moved to the front where the grammar allows: a trailing "instead" / "please" / "now", or a
    prepositional phrase after the verb's object ("add a red circle to top-left" -> "to top-left, add a red circle");
    the text itself where neither is there."""
    words = text.split()
    if len(words) > 1 and words[-1].lower() in TRAILING:
        return f"{words[-1]}, {' '.join(words[:-1])}"
    cuts = [n for n, w in enumerate(words) if w.lower() in PREPOSITIONS and 2 <= n < len(words) - 1]
    if not cuts:
        return text
    n = rng.choice(cuts)
    return f"{' '.join(words[n:])}, {' '.join(words[:n])}"


def drop_words(text: str, p: float, rng: random.Random) -> str:
    words = text.split()
    kept = [w for w in words if not (w.lower() in DROPPABLE and rng.random() < p)]
    return " ".join(kept) if kept else text


def recase(text: str, rng: random.Random) -> str:
    kind = rng.choice(("capital", "shout", "stop", "hyphen", "bang"))
    if kind == "capital":
        return text[:1].upper() + text[1:]
    if kind == "shout":
        return text.upper()
    if kind == "hyphen":
        return text.replace("-", " ")
    return text.rstrip(".!?") + ("." if kind == "stop" else "!")


def substitute(text: str, p: float, rng: random.Random, options_of=None) -> str:
    """Each word with a synonym (or what ``options_of`` gives for it) replaced by one with probability ``p`` (case and
    punctuation around it kept). With ``options_of`` (relatives), a part of a hyphenated word is never replaced: it
    is one value ("medium-dark", "down-left")."""
    word_pattern = r"(?<![A-Za-z-])[A-Za-z]+(?![A-Za-z-])" if options_of else r"[A-Za-z]+"
    options_of = options_of or synonyms_of

    def swap(m: re.Match) -> str:
        word = m.group(0)
        options = options_of(word.lower())
        if not options or rng.random() >= p:
            return word
        new = rng.choice(options)
        return new.capitalize() if word[:1].isupper() else new

    return re.sub(word_pattern, swap, text)


@dataclass(frozen=True)
class TextAugment:
    typos: float = 0.0
    frames: float = 0.0
    synonyms: float = 0.0
    relatives: float = 0.0
    order: float = 0.0
    drop: float = 0.0
    case: float = 0.0
    variants: int = 4  # training: variants of each text, encoded once
    keep: float = 0.5  # training: the chance a triplet reads its own text in an epoch

    @staticmethod
    def rules(spec: str | None) -> int | None:
        """The version of the rules that turn ``spec`` into texts (:data:`RULES`), or None where it changes
        nothing: a training run records it so that a reused model was trained on the texts this code makes."""
        return RULES if TextAugment.parse(spec) else None

    @classmethod
    def parse(cls, spec: str | None) -> "TextAugment":
        """``"typos=0.05,frames=0.3"`` -> ``TextAugment(typos=0.05, frames=0.3)``; ``""`` or None: no change."""
        options = dataclass_options(cls, spec, "text augmentation")
        values: dict = {}
        for key, text in options.items():
            try:
                values[key] = int(text) if key == "variants" else float(text)
            except ValueError:
                raise CirlabError(f"text augmentation {key}={text!r} must be a number") from None
        aug = cls(**values)
        rates = {f.name: getattr(aug, f.name) for f in fields(cls) if f.name != "variants"}
        bad = [k for k, v in rates.items() if not 0 <= v <= 1]
        if bad or aug.variants < 1:
            raise CirlabError(f"text augmentation {spec!r} out of range: {', '.join(bad) or 'variants'} must be "
                              "within [0, 1] (variants: 1 or more)")
        return aug

    @property
    def spec(self) -> str:
        default = TextAugment()
        return ",".join(f"{f.name}={getattr(self, f.name):g}" for f in fields(self)
                        if getattr(self, f.name) != getattr(default, f.name))

    def __bool__(self) -> bool:
        return any((self.typos, self.frames, self.synonyms, self.relatives, self.order, self.drop, self.case))

    def __call__(self, text: str, rng: random.Random, related: dict | None = None) -> str:
        """One perturbed wording of ``text``: relatives (``related``: :func:`relatives_in` of the texts it is one
        of), synonyms, dropped words, order, frame, case, then typos."""
        out = text
        if self.relatives and related:
            out = substitute(out, self.relatives, rng, lambda w: related.get(w, ()))
        if self.synonyms:
            out = substitute(out, self.synonyms, rng)
        if self.drop:
            out = drop_words(out, self.drop, rng)
        if self.order and rng.random() < self.order:
            out = reorder(out, rng)
        if self.frames and rng.random() < self.frames:
            out = frame(out, rng)
        if self.case and rng.random() < self.case:
            out = recase(out, rng)
        if self.typos:
            out = slip(out, self.typos, rng)
        return out

    def perturb(self, text: str, seed: int = 0, draw: int = 0, related: dict | None = None) -> str:
        """The ``draw``-th perturbed wording of ``text`` under ``seed``: a function of the spec, the seed and the text
        alone (and, for ``relatives``, of the texts it is one of: ``related``)."""
        return self(text, random.Random(f"{self.spec}|{seed}|{draw}|{text}"), related)

    def variants_of(self, texts: Iterable[str], seed: int = 0, avoid: Sequence[str] = ()) -> dict[str, list[str]]:
        """Up to :attr:`variants` distinct wordings of each text other than itself (and other than any text in
        ``avoid``: an evaluation bank's), for training."""
        avoid_set, texts = set(avoid), list(dict.fromkeys(texts))
        related = relatives_in(texts) if self.relatives else None
        out = {}
        for text in texts:
            found: list[str] = []
            for draw in range(4 * self.variants):
                v = self.perturb(text, seed, draw, related)
                if v != text and v.strip() and v not in avoid_set and v not in found:
                    found.append(v)
                if len(found) == self.variants:
                    break
            out[text] = found
        return out


def perturbed(triplets: Sequence[Triplet], augment: TextAugment, seed: int = 0) -> list[Triplet]:
    """The triplets with each query's text perturbed once (``seed``): the same queries, worded as ``augment`` says.
    Each query draws its own wording: the n-th query that reads a text takes that text's n-th draw, so the queries
    that share a text (a data set's few phrasings) are not all worded alike, and a query's wording does not depend
    on the queries of other texts."""
    seen: Counter[str] = Counter()
    related = relatives_in(t.text for t in triplets) if augment.relatives else None
    out = []
    for t in triplets:
        out.append(Triplet(t.reference, augment.perturb(t.text, seed, seen[t.text], related), t.targets,
                           t.attributes))
        seen[t.text] += 1
    return out
