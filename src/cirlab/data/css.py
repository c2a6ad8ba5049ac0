"""A CSS-like synthetic benchmark (after TIRG's CSS, Vo et al. 2019), regenerated from its recipe.

Scenes of 1-5 objects on a 3x3 grid; an object is a shape (rectangle, circle, triangle), one of
TIRG's eight colours, a size (small, large) and a grid cell. A modification adds, removes or
changes one object, and names objects by the *smallest unique description* within the scene
("remove cyan object", "make bottom-right gray object purple", "make circle brown"). Adds are
often underspecified ("add brown object"): every gallery scene that satisfies the text is a
correct target, not only the one that was drawn.

- Each source scene gets up to three modifications (as in CSS, where a source has several).
- **Scene identity** is a canonical signature (objects sorted by cell); scenes with the same
  signature are one image, so identity is exact.
- **Novel compositions**: a seeded set of (shape, colour) pairs never occurs in the train and
  val splits (not in a source, a target, nor a text); the test split uses every pair, and a
  test triplet is marked ``composition: novel`` when its target holds a held-out pair.
- **Images**: ``images/`` at the encoder's resolution (224 px, drawn at 4x and downsampled:
  antialiased) and ``images64/`` at TIRG's 64 px. Each image's caption describes its scene (for
  image-text alignment); its attributes list the objects.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

from cirlab.data.phrasing import check_version, reword_css
from cirlab.data.triplets import Triplet, write_triplets
from cirlab.errors import CirlabError
from cirlab.files import atomic_write_text

SHAPES = ("rectangle", "circle", "triangle")
COLOURS = {"gray": (87, 87, 87), "red": (244, 35, 35), "blue": (42, 75, 215), "green": (29, 205, 20),
           "brown": (129, 74, 25), "purple": (129, 38, 192), "cyan": (41, 208, 208), "yellow": (255, 238, 51)}
SIZES = {"small": 4, "large": 8}  # half-sizes in px on the 64 px canvas (TIRG's loader)
ROWS, COLS = ("top", "center", "bottom"), ("left", "center", "right")
CELLS = tuple(f"{r}-{c}" for r in ROWS for c in COLS)
SPLIT_FRACTIONS = {"train": 0.7, "val": 0.1, "test": 0.2}
# Named configurations: triplets per split. ``large`` has a test gallery of over 10,000 scenes, where R@10
# is not saturated by a scene's few siblings; ``small`` is ``--size 4000``.
CONFIGS = {"small": {"train": 2800, "val": 400, "test": 800},
           "large": {"train": 16000, "val": 1000, "test": 8000}}
HELD_OUT_PAIRS = 6
MODS_PER_SOURCE = 3
VERSION = 1


@dataclass(frozen=True, order=True)
class Obj:
    cell: int
    shape: str
    colour: str
    size: str

    def has(self, attrs: dict) -> bool:
        return all(getattr(self, k) == v for k, v in attrs.items())


Scene = tuple  # tuple[Obj, ...], sorted by cell


def signature(scene: Scene) -> str:
    """The canonical identity of a scene: its objects in cell order."""
    return "|".join(f"{CELLS[o.cell]}:{o.size}:{o.colour}:{o.shape}" for o in sorted(scene)) or "empty"


def scene_id(scene: Scene) -> str:
    return "css-" + hashlib.sha1(signature(scene).encode()).hexdigest()[:12]


def describe(attrs: dict) -> str:
    """Words for a (partial) object description in TIRG's order: cell, size, colour, shape."""
    words = [CELLS[attrs["cell"]]] if "cell" in attrs else []
    words += [attrs[k] for k in ("size", "colour") if k in attrs]
    words.append(attrs.get("shape", "object"))
    return " ".join(words)


EDIT_PATTERNS = [("add", re.compile(r"^add (?P<object>.+?)(?: to (?P<cell>\S+))?$")),
                 ("remove", re.compile(r"^remove (?P<object>.+)$")),
                 ("change", re.compile(r"^make (?P<object>.+?) (?P<value>a \S+|\S+)$"))]


def parse_edit(text: str) -> tuple[str, dict] | None:
    """A text of the generator's own grammar (``add <object>[ to <cell>]``, ``remove <object>``, ``make <object>
    <value>``) as its edit and slots (``object``, ``cell``, ``value``); None for any other text."""
    for edit, pattern in EDIT_PATTERNS:
        m = pattern.match(text)
        if m:
            return edit, {k: v for k, v in m.groupdict().items() if v}
    return None


def caption(scene: Scene) -> str:
    if not scene:
        return "an empty canvas"
    return ", ".join(f"a {o.size} {o.colour} {o.shape} at {CELLS[o.cell]}" for o in sorted(scene))


ATTR_ORDER = ("colour", "shape", "size", "cell")


def unique_description(scene: Scene, obj: Obj, rng: random.Random) -> dict:
    """The smallest set of attributes that singles ``obj`` out in ``scene`` (a random one of the smallest)."""
    for n in range(0, 5):
        fits = [c for c in itertools.combinations(ATTR_ORDER, n)
                if [o for o in scene if o.has({k: getattr(obj, k) for k in c})] == [obj]]
        if fits:
            return {k: getattr(obj, k) for k in rng.choice(fits)}
    raise AssertionError("an object is always unique by its cell")


def satisfies_add(source: Scene, target: Scene, attrs: dict) -> bool:
    """Whether ``target`` is ``source`` plus one object with these attributes."""
    if len(target) != len(source) + 1:
        return False
    extra = Counter(target) - Counter(source)
    return sum(extra.values()) == 1 and next(iter(extra)).has(attrs) and not (Counter(source) - Counter(target))


class Generator:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        pairs = [(s, c) for s in SHAPES for c in COLOURS]
        self.held_out = set(random.Random(seed + 1).sample(pairs, HELD_OUT_PAIRS))

    def allowed(self, obj: Obj, novel_ok: bool) -> bool:
        return novel_ok or (obj.shape, obj.colour) not in self.held_out

    def random_obj(self, cell: int, novel_ok: bool) -> Obj:
        while True:
            o = Obj(cell, self.rng.choice(SHAPES), self.rng.choice(list(COLOURS)), self.rng.choice(list(SIZES)))
            if self.allowed(o, novel_ok):
                return o

    def scene(self, novel_ok: bool) -> Scene:
        cells = self.rng.sample(range(9), self.rng.randint(1, 5))
        return tuple(sorted(self.random_obj(c, novel_ok) for c in cells))

    def modify(self, scene: Scene, novel_ok: bool) -> tuple[str, Scene, str, dict] | None:
        """(text, target scene, operation, add's attribute constraint or {}), or None to redraw."""
        ops = [op for op, ok in (("add", len(scene) < 5), ("remove", len(scene) > 1), ("change", True)) if ok]
        op = self.rng.choice(ops)
        rng = self.rng
        if op == "add":
            free = [c for c in range(9) if c not in {o.cell for o in scene}]
            new = self.random_obj(rng.choice(free), novel_ok)
            keys = [k for k in ("size", "colour", "shape", "cell") if rng.random() < 0.5] or [rng.choice(ATTR_ORDER)]
            attrs = {k: getattr(new, k) for k in keys}
            where = f" to {CELLS[attrs['cell']]}" if "cell" in attrs else ""
            text = f"add {describe({k: v for k, v in attrs.items() if k != 'cell'})}{where}"
            return text, tuple(sorted(scene + (new,))), op, attrs
        obj = rng.choice(scene)
        ref = describe(unique_description(scene, obj, rng))
        rest = tuple(o for o in scene if o != obj)
        if op == "remove":
            return f"remove {ref}", rest, op, {}
        attr = rng.choice(("colour", "size", "shape"))
        values = {"colour": list(COLOURS), "size": list(SIZES), "shape": list(SHAPES)}[attr]
        value = rng.choice([v for v in values if v != getattr(obj, attr)])
        new = Obj(**{**obj.__dict__, attr: value})
        if not self.allowed(new, novel_ok):
            return None
        text = f"make {ref} {'a ' + value if attr == 'shape' else value}"
        return text, tuple(sorted(rest + (new,))), f"change-{attr}", {}


def draw(scene: Scene, size: int, supersample: int = 4):
    """The scene on a white canvas of ``size`` px (TIRG's 64 px geometry, scaled; antialiased)."""
    from PIL import Image, ImageDraw

    big = size * supersample
    s = big / 64.0
    im = Image.new("RGB", (big, big), (255, 255, 255))
    d = ImageDraw.Draw(im)
    for o in scene:
        r, c = divmod(o.cell, 3)
        cx, cy, h = (16 + 16 * c) * s, (16 + 16 * r) * s, SIZES[o.size] * s
        colour = COLOURS[o.colour]
        if o.shape == "rectangle":
            d.rectangle([cx - h, cy - h, cx + h, cy + h], fill=colour)
        elif o.shape == "circle":
            d.ellipse([cx - h, cy - h, cx + h, cy + h], fill=colour)
        else:
            d.polygon([(cx, cy - h), (cx - h, cy + h), (cx + h, cy + h)], fill=colour)
    return im.resize((size, size), Image.LANCZOS) if supersample > 1 else im


def split_sizes(size: int = 4000, config: str | None = None) -> dict[str, int]:
    """Triplets per split: a named configuration (``CONFIGS``), or ``size`` split 70/10/20."""
    if config is not None:
        if config not in CONFIGS:
            raise CirlabError(f"unknown css configuration {config!r}; choose one of: {', '.join(CONFIGS)}")
        return dict(CONFIGS[config])
    if size < 10:
        raise CirlabError(f"size must be at least 10 triplets, got {size}")
    return {split: max(1, round(size * frac)) for split, frac in SPLIT_FRACTIONS.items()}


def build_css(out: str | Path, size: int = 4000, seed: int = 0, image_size: int = 224,
              config: str | None = None, phrasings: int = 1) -> dict:
    """Write ``size`` triplets (70/10/20 train/val/test), or those of a named ``config``, with their
    scenes' images; return counts. ``phrasings``: the phrasing grammar's version (:mod:`cirlab.data.phrasing`);
    above 1, each text is drawn from the wider grammar and the generator's own text kept as ``canonical``."""
    sizes = split_sizes(size, config)
    check_version(phrasings)
    words = random.Random(f"{seed}-phrasings-{phrasings}")  # apart from the scenes' draw: the same scenes
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    gen = Generator(seed)
    scenes: dict[str, tuple[Scene, str]] = {}  # id -> (scene, split)
    drawn: dict[str, list[tuple]] = defaultdict(list)  # split -> (source, text, target, op, add attrs)
    for split, want in sizes.items():
        novel_ok, seen = split == "test", set()
        while len(drawn[split]) < want:
            source = gen.scene(novel_ok)
            for _ in range(MODS_PER_SOURCE):  # like CSS: a source has several modifications
                mod = gen.modify(source, novel_ok)
                if mod is None or (signature(source), mod[0]) in seen or len(drawn[split]) >= want:
                    continue
                text, target, op, attrs = mod
                if any(scenes.get(scene_id(sc), (None, split))[1] != split for sc in (source, target)):
                    break  # a scene belongs to one split's gallery: draw another source
                seen.add((signature(source), text))
                for sc in (source, target):
                    scenes[scene_id(sc)] = (sc, split)
                drawn[split].append((source, text, target, op, attrs))
    by_split: dict[str, list[tuple[str, Scene]]] = defaultdict(list)
    for sid, (sc, split) in scenes.items():
        by_split[split].append((sid, sc))
    counts: dict = {"images": {}, "triplets": {}, "underspecified": {}, "novel": 0}
    for split, items in drawn.items():
        # gallery scenes by what remains without one of their objects: an add's candidates are the scenes
        # filed under its source's signature (linear in the gallery, not quadratic)
        minus_one: dict[str, list[tuple[str, Scene]]] = defaultdict(list)
        for sid, sc in by_split[split]:
            for n in range(len(sc)):
                minus_one[signature(sc[:n] + sc[n + 1:])].append((sid, sc))
        triplets = []
        for source, text, target, op, attrs in items:
            if op == "add":  # credit every gallery scene of the split that satisfies the text
                targets = sorted({sid for sid, sc in minus_one[signature(source)] if satisfies_add(source, sc, attrs)})
            else:
                targets = [scene_id(target)]
            a = {"edit": op.split("-")[0], "operation": op}
            reworded = reword_css(*parse_edit(text), words, phrasings)
            if reworded is not None:
                text, a["canonical"] = reworded, text
            if split == "test":
                novel = any((o.shape, o.colour) in gen.held_out for o in target)
                a["composition"] = "novel" if novel else "seen"
                counts["novel"] += novel
            triplets.append(Triplet(scene_id(source), text, targets, a))
        write_triplets(out / f"{split}.jsonl", triplets)
        counts["triplets"][split] = dict(Counter(t.attributes["edit"] for t in triplets))
        counts["underspecified"][split] = sum(len(t.targets) > 1 for t in triplets)
    for folder in ("images", "images64"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    with open(out / "images.jsonl", "w") as f:
        for sid, (sc, split) in sorted(scenes.items()):
            for folder, px in (("images", image_size), ("images64", 64)):
                dst = out / folder / f"{sid}.png"
                if not dst.is_file():
                    draw(sc, px, supersample=4 if px > 64 else 1).save(dst)
            f.write(json.dumps({"id": sid, "file": f"{sid}.png", "split": split, "caption": caption(sc),
                                "signature": signature(sc),
                                "attributes": {"objects": [o.__dict__ for o in sc]}}) + "\n")
    counts["images"] = dict(Counter(split for _, split in scenes.values()))
    meta = {"name": "css", "version": VERSION, "seed": seed, "size": sum(sizes.values()), "config": config,
            **({"phrasings": phrasings} if phrasings > 1 else {}), "images": "images",
            "images_64px": "images64", "splits": {s: f"{s}.jsonl" for s in SPLIT_FRACTIONS},
            "held_out_pairs": sorted(" ".join(p[::-1]) for p in gen.held_out), "counts": counts}
    atomic_write_text(out / "dataset.json", json.dumps(meta, indent=2))
    return counts


def scene(record: dict) -> tuple[Obj, ...]:
    """A CSS-like image's scene from its record's ``attributes.objects``."""
    return tuple(sorted(Obj(**o) for o in (record.get("attributes") or {}).get("objects", [])))


class CssUser:
    """CSS-like's simulated user. Scenes are objects in a 3x3 grid; an edit is TIRG's grammar: ``add <size> <colour>
    <shape> to <cell>`` for an object the target has in an empty cell, ``remove <object>`` for one it lacks, ``make
    <object> <value>`` for one attribute (colour, size or shape) of an object in the same cell. The object is named by
    the fewest attributes that single it out, as the data set's texts do."""

    name = "css"
    text_only = ()

    def __init__(self, records: dict[str, dict]) -> None:
        self.scenes = {i: {o.cell: o for o in scene(r)} for i, r in records.items()}

    def key(self, image: str) -> frozenset:
        return frozenset(self.scenes[image].values())

    def editable(self, a: str, b: str) -> bool:
        return True

    def distance(self, a: str, b: str) -> int:
        x, y = self.scenes[a], self.scenes[b]
        return sum(1 if (c in x) != (c in y) else
                   sum(getattr(x[c], k) != getattr(y[c], k) for k in ("colour", "size", "shape"))
                   for c in set(x) | set(y))

    def steps(self, a: str, b: str) -> int:
        """The edits the user says from ``a`` to ``b`` if every search returns what it asked: one an edit."""
        return self.distance(a, b)

    def attributes(self, current: str, target: str, kind: str) -> dict:
        """The edit ``kind`` as a triplet's attributes (its text says the rest, in the generator's grammar)."""
        return {"edit": kind.split("-")[0], "operation": kind}

    def edit(self, current: str, target: str, rng: random.Random) -> tuple[str, str]:
        x, y = self.scenes[current], self.scenes[target]
        now = tuple(sorted(x.values()))
        options: list[tuple[str, str]] = []
        for c in sorted(set(x) | set(y)):
            if c not in x:
                o = y[c]
                options.append((f"add {describe({'size': o.size, 'colour': o.colour, 'shape': o.shape})} "
                                f"to {CELLS[c]}", "add"))
            elif c not in y:
                options.append((f"remove {describe(unique_description(now, x[c], rng))}", "remove"))
            else:
                for k in ("colour", "size", "shape"):
                    value = getattr(y[c], k)
                    if getattr(x[c], k) != value:
                        name = describe(unique_description(now, x[c], rng))
                        options.append((f"make {name} {'a ' + value if k == 'shape' else value}", f"change-{k}"))
        if not options:
            raise CirlabError(f"images {current} and {target} hold the same scene: there is no edit between them")
        return rng.choice(options)
