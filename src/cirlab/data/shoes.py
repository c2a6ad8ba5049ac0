"""Shoes (Dialog-based interactive image retrieval's relative captions) from its annotation folder.

The triplets whose reference and target are both in ``eval_im_names.txt`` (``train_im_names.txt``
for train), over those images, the reference excluded. Reported: R@1/10/50.
"""

from __future__ import annotations

from pathlib import Path

from cirlab.data.public import BenchmarkQuery, BenchmarkSplit, correct_spelling, find_images, keep_present, read_json
from cirlab.errors import CirlabError

def load_shoes(annotations: str | Path, images: str | Path, spelling: str | Path | None = None,
               split: str = "test") -> BenchmarkSplit:
    """``test``: the eval image list and its triplets; ``train``: the train list and its triplets."""
    ann, root = Path(annotations), Path(images)
    if split not in ("train", "test"):
        raise CirlabError(f"Shoes split {split!r} unknown; use 'train' or 'test'")
    records = read_json(ann / "relative_captions_shoes.json")
    eval_path = ann / ("eval_im_names.txt" if split == "test" else "train_im_names.txt")
    if not eval_path.is_file():
        raise CirlabError(f"{eval_path} not found: the Shoes annotation folder holds {eval_path.name}")
    names = eval_path.read_text().split()
    evalset = set(names)
    fix = {k.lower(): v for k, v in read_json(Path(spelling)).items()} if spelling else {}
    queries = [BenchmarkQuery(r["ReferenceImageName"], correct_spelling(r["RelativeCaption"], fix) if fix
                              else r["RelativeCaption"], [r["ImageName"]])
               for r in records if r["ImageName"] in evalset and r["ReferenceImageName"] in evalset]
    found, missing = find_images(root, evalset)
    kept, names, skipped = keep_present(queries, names, found)
    return BenchmarkSplit(f"shoes-{split}", kept, names, found, True, (1, 10, 50),
                          {"exclude_reference": True, "spelling": bool(fix)}, missing, skipped)
