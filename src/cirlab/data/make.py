"""``cirlab data make NAME``: every data set cirlab builds, behind one function."""

from __future__ import annotations

from pathlib import Path

from cirlab.errors import CirlabError

BUILT = ("emojiedit", "css")  # drawn here, offline
FROM_FILES = ("fashioniq", "shoes", "fashion200k", "cirr")  # made from a public benchmark's published files


def make_dataset(name: str, out: str | Path, seed: int = 0, size: int = 4000, config: str | None = None,
                 image_size: int = 224, annotations: str | Path | None = None, images: str | Path | None = None,
                 categories: list[str] | None = None, spelling: str | Path | None = None,
                 captions: str | Path | None = None, styles: list[str] | None = None,
                 test_style: str | None = None) -> dict:
    """Build data set ``name`` into ``out`` and return its counts. EmojiEdit and CSS-like are drawn here
    (``size`` / ``config`` / ``image_size``: CSS-like's; ``styles`` / ``test_style``: EmojiEdit's art sets);
    a public benchmark becomes a cirlab data set that points at the user's ``images``, its missing image
    ids listed in ``out/missing.txt``."""
    if (styles or test_style) and name != "emojiedit":
        raise CirlabError("art styles (--style, --test-style) are EmojiEdit's; leave them out for " + name)
    if name == "emojiedit":
        from cirlab.data.emojiedit import build_emojiedit

        return build_emojiedit(out, seed=seed, styles=styles, test_style=test_style)
    if name == "css":
        from cirlab.data.css import build_css

        return build_css(out, size=size, seed=seed, image_size=image_size, config=config)
    if name in FROM_FILES:
        from cirlab.data.benchmarks import make_benchmark_dataset

        if annotations is None or images is None:
            raise CirlabError(f"data set {name} is made from its annotation folder (as published) and its images "
                              "folder: give both")
        counts = make_benchmark_dataset(name, annotations, images, out, categories, spelling, captions, seed)
        if counts["missing"]:
            (Path(out) / "missing.txt").write_text("\n".join(counts["missing"]) + "\n")
            counts["missing"] = f"{len(counts['missing'])} image ids, listed in {Path(out) / 'missing.txt'}"
        return counts
    raise CirlabError(f"unknown data set {name!r}; this version builds: {', '.join(BUILT)}, and from a benchmark's "
                      f"files: {', '.join(FROM_FILES[:3])}")
