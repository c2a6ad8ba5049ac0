"""What the benchmark scripts share: printing a Markdown table and saving it, with its rows as JSON beside it."""

from __future__ import annotations

import json
from pathlib import Path


def save_report(text: str, out: Path | None, payload: dict) -> None:
    """Print ``text``; with ``out``, write it there and ``payload`` to the same name with ``.json``."""
    print(text)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        out.with_suffix(".json").write_text(json.dumps(payload, indent=1) + "\n")
