"""WordNet's synonyms, read from the database files a well-kept package ships (Debian's ``wordnet-base``:
``/usr/share/wordnet``), in their documented format (wndb(5WN)); no synonym table lives in cirlab's code.

``index.<pos>`` lists each lemma's synsets, its most frequent sense first, and how many of its senses were tagged in
a corpus (SemCor); ``data.<pos>`` holds each synset's words at a byte offset. A lemma's dominant part of speech is the
one with the most tagged senses: "dark" is an adjective before it is a noun, "make" a verb.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from cirlab.errors import CirlabError

POS = ("noun", "verb", "adj", "adv")


def wordnet_root() -> Path:
    """Where the WordNet database is: ``$CIRLAB_WORDNET`` or Debian's ``/usr/share/wordnet``."""
    return Path(os.environ.get("CIRLAB_WORDNET") or "/usr/share/wordnet")


class WordNet:
    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root else wordnet_root()
        if not all((self.root / f"{kind}.{pos}").is_file() for pos in POS for kind in ("index", "data")):
            raise CirlabError(f"synonyms are read from WordNet, and its database is not at {self.root}: install "
                              "Debian's wordnet-base (apt-get install wordnet-base; make wordnet), or set "
                              "CIRLAB_WORDNET to a folder with its index.* and data.* files")
        self._index: dict[str, dict[str, tuple[int, list[int]]]] = {}
        self._data: dict[str, bytes] = {}

    def index(self, pos: str) -> dict[str, tuple[int, list[int]]]:
        """lemma -> (its tagged senses, its synsets' offsets, most frequent first), of one part of speech."""
        if pos not in self._index:
            out = {}
            for line in (self.root / f"index.{pos}").read_text(encoding="latin-1").splitlines():
                if not line or line[0] == " ":  # the licence header
                    continue
                f = line.split()
                pointers = int(f[3])
                senses, tagged = int(f[4 + pointers]), int(f[5 + pointers])
                out[f[0]] = (tagged, [int(x) for x in f[6 + pointers:6 + pointers + senses]])
            self._index[pos] = out
        return self._index[pos]

    def words(self, pos: str, offset: int) -> list[str]:
        """The words of the synset at ``offset`` of ``data.<pos>``, as WordNet writes them (a proper noun capitalised,
        multi-word ones joined by ``_``)."""
        if pos not in self._data:
            self._data[pos] = (self.root / f"data.{pos}").read_bytes()
        data = self._data[pos]
        f = data[offset:data.index(b"\n", offset)].decode("latin-1").split()
        count = int(f[3], 16)
        return [f[4 + 2 * n].split("(")[0] for n in range(count)]  # adjectives may carry "(a)" markers

    def pointers(self, pos: str, offset: int) -> list[tuple[str, str, int]]:
        """The synset's pointers to other synsets as (symbol, part of speech, offset): ``@`` hypernym, ``&`` similar
        to, ``!`` antonym, ``^`` also see, and the rest wndb(5WN) lists."""
        self.words(pos, offset)  # reads data.<pos>
        data = self._data[pos]
        f = data[offset:data.index(b"\n", offset)].decode("latin-1").split(" | ")[0].split()
        at = 4 + 2 * int(f[3], 16)
        kinds = {"n": "noun", "v": "verb", "a": "adj", "s": "adj", "r": "adv"}
        return [(f[at + 1 + 4 * k], kinds[f[at + 3 + 4 * k]], int(f[at + 2 + 4 * k])) for k in range(int(f[at]))]

    def relatives_among(self, word: str, vocabulary: set[str]) -> list[str]:
        """Words for ``word`` in the sense its neighbours in ``vocabulary`` pick out: of each part of speech (noun,
        adjective), its most frequent sense whose antonym or similar adjective is another word of ``vocabulary``.
        Among "light", "dark" and "white", "light" is the colour ("pale"; its antonym is "dark"), not the radiation
        ("beam") or the weight ("airy"); "left" is the hand's ("near"), not the politics' ("liberal"). Of that
        sense, the synset's own words, its similar adjectives and its hypernyms' words; single lower-case words."""
        out: list[str] = []
        for pos in ("noun", "adj"):
            for offset in self.index(pos).get(word, (0, []))[1]:  # most frequent sense first
                pointed = self.pointers(pos, offset)
                near = {w.lower() for sym, p, o in pointed if sym in ("!", "&") for w in self.words(p, o)}
                if (near - {word}) & vocabulary:
                    kept = [(pos, offset)] + [(p, o) for sym, p, o in pointed if sym in ("&", "@")]
                    out += [w for p, o in kept for w in self.words(p, o) if w != word and w.isalpha() and w.islower()]
                    break  # the most frequent such sense only: "left" of the hand, not of politics
        return list(dict.fromkeys(out))

    def dominant(self, word: str) -> str | None:
        """The part of speech with the most tagged senses of ``word`` (its first listed, on a tie); None if WordNet
        lacks it."""
        found = [(self.index(pos)[word][0], -n, pos) for n, pos in enumerate(POS) if word in self.index(pos)]
        return max(found)[2] if found else None

    def synonyms(self, word: str, share: float = 0.25) -> list[str]:
        """Words that mean what ``word`` means most often: for each part of speech holding at least ``share`` of its
        tagged senses, the other single lower-case words (no proper noun) of its most frequent sense there, each of
        which has that same sense as its own most frequent one in its own dominant part of speech ("big" and
        "large"; not "heart" for "center", whose first sense is the organ). Empty where WordNet lacks the word."""
        tagged = {pos: self.index(pos)[word][0] for pos in POS if word in self.index(pos)}
        total = sum(tagged.values())
        out: list[str] = []
        for pos, count in tagged.items():
            if not count or count < share * total:
                continue
            first = self.index(pos)[word][1][0]
            out += [w for w in self.words(pos, first) if w != word and w.isalpha() and w.islower() and w not in out
                    and self.dominant(w) == pos and self.index(pos)[w][1][0] == first]
        return out


@lru_cache(maxsize=2)
def wordnet(root: str | None = None) -> WordNet:
    return WordNet(root)
