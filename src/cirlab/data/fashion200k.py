"""Fashion200K under TIRG's protocol.

``labels/*_test_detect_all.txt`` (``path<TAB>score<TAB>caption``) is the gallery and
``test_queries.txt`` (``source target`` paths) the queries; the text is "replace <source word> with
<target word>"; a hit is any gallery image whose caption equals the target's; the reference is
excluded. Reported: R@1/10/50.
"""

from __future__ import annotations

from pathlib import Path

from cirlab.data.public import IMAGE_SUFFIXES, BenchmarkQuery, BenchmarkSplit, find_images, keep_present
from cirlab.errors import CirlabError

def read_fashion200k_labels(annotations: str | Path, split: str) -> dict[str, str]:
    """Image path -> caption from Fashion200K's ``labels/<category>_<split>_detect_all.txt`` files
    (lines ``path<TAB>detection score<TAB>caption``); the first line of a path wins."""
    folder = Path(annotations) / "labels"
    files = sorted(folder.glob(f"*_{split}_detect_all.txt")) if folder.is_dir() else []
    if not files:
        raise CirlabError(f"no {folder}/*_{split}_detect_all.txt: pass Fashion200K's folder that holds labels/")
    captions: dict[str, str] = {}
    for f in files:
        for n, line in enumerate(f.read_text(errors="replace").splitlines(), 1):
            if not line.strip():
                continue
            parts = line.split("\t")
            if len(parts) < 3:
                raise CirlabError(f"{f}:{n}: expected 'path<TAB>score<TAB>caption', got {line[:60]!r}")
            captions.setdefault(parts[0].strip(), parts[2].strip())
    return captions


def replacement_text(source_caption: str, target_caption: str) -> str:
    """Fashion200K's modification text: the first source word missing from the target replaced by
    the first target word missing from the source ("replace red with blue")."""
    src, tgt = source_caption.split(), target_caption.split()
    old = next((w for w in src if w not in tgt), src[-1] if src else "")
    new = next((w for w in tgt if w not in src), tgt[-1] if tgt else "")
    return f"replace {old} with {new}"


def _strip_suffix(path: str) -> str:
    p = Path(path)
    return p.with_suffix("").as_posix() if p.suffix.lower() in IMAGE_SUFFIXES else p.as_posix()


def load_fashion200k(annotations: str | Path, images: str | Path, split: str = "test", seed: int = 0) -> BenchmarkSplit:
    """``test``: TIRG's test queries over every test image. ``train``: one query per training image
    whose caption differs from another's by one word (TIRG samples these pairs during training;
    here they are drawn once with ``seed``), every image with the target caption a target."""
    ann, root = Path(annotations), Path(images)
    if split not in ("train", "test"):
        raise CirlabError(f"Fashion200K split {split!r} unknown; use 'train' or 'test'")
    captions = read_fashion200k_labels(ann, split)
    ids = {_strip_suffix(p): p for p in captions}
    by_caption: dict[str, list[str]] = {}
    for i, p in ids.items():
        by_caption.setdefault(captions[p], []).append(i)
    queries: list[BenchmarkQuery] = []
    if split == "test":
        qfile = ann / "test_queries.txt"
        if not qfile.is_file():
            raise CirlabError(f"{qfile} not found: Fashion200K's folder holds test_queries.txt")
        for n, line in enumerate(qfile.read_text().splitlines(), 1):
            if not line.strip():
                continue
            parts = line.split()
            if len(parts) != 2 or parts[0] not in captions or parts[1] not in captions:
                raise CirlabError(f"{qfile}:{n}: expected two test image paths listed in labels/, got {line[:80]!r}")
            src, tgt = captions[parts[0]], captions[parts[1]]
            queries.append(BenchmarkQuery(_strip_suffix(parts[0]), replacement_text(src, tgt), list(by_caption[tgt])))
    else:
        import random

        rng = random.Random(seed)
        parents: dict[str, list[str]] = {}  # a caption with one word left out -> the captions it comes from
        for c in by_caption:
            words = c.split()
            for j in range(len(words)):
                parents.setdefault(" ".join(words[:j] + words[j + 1:]), []).append(c)
        for c, members in by_caption.items():
            words = c.split()
            others = sorted({o for j in range(len(words))  # the same words reordered is no modification
                             for o in parents.get(" ".join(words[:j] + words[j + 1:]), []) if set(o.split()) != set(words)})
            if not others:
                continue
            for ref in members:
                target = rng.choice(others)
                queries.append(BenchmarkQuery(ref, replacement_text(c, target), list(by_caption[target])))
    names = sorted(ids)
    found, missing = find_images(root, set(names), ids)
    kept, names, skipped = keep_present(queries, names, found)
    return BenchmarkSplit(f"fashion200k-{split}", kept, names, found, True, (1, 10, 50),
                          {"exclude_reference": True, "hit": "same caption as the target"}, missing, skipped,
                          {i: captions[p] for i, p in ids.items() if i in found})
