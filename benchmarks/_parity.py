"""What the parity scripts share: a worktree of an earlier revision and a small CSS-like data set, made once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def base_and_data(base: str, work: Path) -> tuple[Path, Path]:
    """The worktree of revision ``base`` under ``work`` and a small CSS-like data set there (400 triplets, 64 px)."""
    repo = Path(__file__).resolve().parent.parent
    old = work / f"worktree-{base}"
    if not old.is_dir():
        subprocess.run(["git", "-C", str(repo), "worktree", "add", "--detach", str(old), base], check=True,
                       capture_output=True)
    data = work / "css"
    if not (data / "dataset.json").is_file():
        subprocess.run([sys.executable, "-m", "cirlab.cli", "data", "make", "css", "--size", "400", "--image-size", "64",
                        "--out", str(data)], check=True, capture_output=True)
    return old, data


def save_parity(title: str, command: str, intro: str, base: str, label: str, before: dict, after: dict, out: Path) -> None:
    """The two sides' hashes as a table (``label``: this tree's column), saved with ``_report.save_report``."""
    from _report import save_report

    lines = [f"# {title}", "", f"Command: `{command}`", "", intro, "", f"| output | {base} | {label} | same |",
             "|---|---|---|---|"]
    lines += [f"| {k} | `{before[k]}` | `{after[k]}` | {'yes' if before[k] == after[k] else '**no**'} |" for k in before]
    save_report("\n".join(lines) + "\n", out, {"base": base, "before": before, "after": after,
                                               "identical": before == after})
