"""Reports people look at: a Markdown recall table and an HTML grid of queries and results."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Sequence

from cirlab.files import atomic_write, atomic_write_text
from cirlab.images import load_image
from cirlab.optional import pyplot


def _recall_rows(rows: dict[str, dict[int, float]], ks: Sequence[int],
                 extra: dict[str, dict] | None) -> tuple[list[str], list[list[str]]]:
    """Header and cells shared by the Markdown and HTML renderings of a recall table."""
    extra = extra or {}
    extra_cols = sorted({c for v in extra.values() for c in v})
    head = ["method", *(f"R@{k}" for k in ks), *extra_cols]
    body = [[name, *(f"{rec[k]:.1f}" for k in ks), *(str(extra.get(name, {}).get(c, "")) for c in extra_cols)]
            for name, rec in rows.items()]
    return head, body


def recall_table(rows: dict[str, dict[int, float]], ks: Sequence[int] = (1, 5, 10, 50),
                 extra: dict[str, dict] | None = None) -> str:
    """A Markdown table: one row per method, one column per Recall@K (and any extra columns)."""
    head, body = _recall_rows(rows, ks, extra)
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines)


def recall_table_html(rows: dict[str, dict[int, float]], ks: Sequence[int] = (1, 5, 10, 50),
                      extra: dict[str, dict] | None = None) -> str:
    """The same table as :func:`recall_table`, as HTML."""
    head, body = _recall_rows(rows, ks, extra)
    th = "".join(f"<th>{html.escape(c)}</th>" for c in head)
    tr = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in body)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{tr}</tbody></table>"


def thumbnail_uri(path: str | Path, size: int = 96) -> str:
    """A small PNG as a data URI, so the page is one self-contained file."""
    im = load_image(path)
    im.thumbnail((size, size))
    buf = BytesIO()
    im.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


@dataclass
class QueryResult:
    reference: str
    text: str
    results: list[tuple[str, float, bool]]  # (image path, score, is a ground-truth target)
    targets: list[str] = field(default_factory=list)  # target paths, shown when not retrieved
    title: str = ""


_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5rem;color:#222}
.q{border:1px solid #ddd;border-radius:8px;padding:.8rem;margin-bottom:1rem}
.row{display:flex;flex-wrap:wrap;gap:.6rem;align-items:flex-start}
figure{margin:0;text-align:center;font-size:.8rem}
figure img{width:96px;height:96px;object-fit:contain;border:3px solid transparent;border-radius:6px;background:#fff}
figure.gt img{border-color:#1a9c3a}
figure.ref img{border-color:#777}
.text{font-size:1.1rem;margin:.4rem 0}
footer{color:#666;font-size:.8rem;margin-top:2rem}
table{border-collapse:collapse;margin-bottom:1rem}td,th{border:1px solid #ddd;padding:.25rem .6rem;text-align:right}
td:first-child,th:first-child{text-align:left}
"""


def write_query_grid(path: str | Path, title: str, queries: Sequence[QueryResult], intro: str = "",
                     credit: str = "") -> Path:
    """Each query: reference and text, its top results with scores, ground truth boxed in green."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><meta name='viewport' content='width=device-width'>"
             f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>"]
    if intro:
        parts.append(intro)
    for n, q in enumerate(queries, 1):
        parts.append(f"<div class='q'><h3>Query {n}{': ' + html.escape(q.title) if q.title else ''}</h3><div class='row'>")
        parts.append(f"<figure class='ref'><img src='{thumbnail_uri(q.reference)}' alt='reference'>"
                     "<figcaption>reference</figcaption></figure>")
        parts.append(f"<div class='text'>+ &ldquo;{html.escape(q.text)}&rdquo;</div></div><div class='row'>")
        for rank, (p, score, hit) in enumerate(q.results, 1):
            cls = " class='gt'" if hit else ""
            parts.append(f"<figure{cls}><img src='{thumbnail_uri(p)}' alt='result {rank}'>"
                         f"<figcaption>#{rank} {score:.3f}{' ✓' if hit else ''}</figcaption></figure>")
        missed = [t for t in q.targets if t not in {p for p, _, h in q.results if h}]
        if missed:
            parts.append("<div style='margin-left:1rem'>ground truth not in the list:</div>")
            parts += [f"<figure class='gt'><img src='{thumbnail_uri(t)}' alt='ground truth'>"
                      "<figcaption>target</figcaption></figure>" for t in missed]
        parts.append("</div></div>")
    if credit:
        parts.append(f"<footer>{credit}</footer>")
    parts.append("</body></html>")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "\n".join(parts))
    return path


def recall_curve_png(path: str | Path, curves: dict[str, Sequence[float]], title: str) -> Path | None:
    """Recall@K against K (1..len) for each named curve, one PNG (matplotlib, no display needed; None
    without it)."""
    plt = pyplot()
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for name, curve in curves.items():
        ax.plot(range(1, len(curve) + 1), curve, label=name, linewidth=1.6)
    ax.set_xlabel("K")
    ax.set_ylabel("Recall@K (%)")
    ax.set_ylim(0, 100)
    ax.set_xlim(1, max((len(c) for c in curves.values()), default=1))
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=10)
    if curves:
        ax.legend(fontsize=8, loc="lower right")
    return save_figure(fig, path)


def save_figure(fig, path: str | Path) -> Path:
    plt = pyplot()
    fig.tight_layout()
    path = Path(path)
    atomic_write(path, fig.savefig)
    plt.close(fig)
    return path


def example_queries(queries: Sequence, ranked: Sequence[Sequence[str]], scores, paths: dict, n: int = 20,
                    top: int = 8, seed: int = 0) -> list[QueryResult]:
    """``n`` queries drawn with ``seed`` (objects with ``reference``, ``text``, ``targets``), each with its
    top results (``ranked`` ids and ``scores``), the ground truth marked: the pages' qualitative figure."""
    import random

    order = sorted(random.Random(seed).sample(range(len(queries)), min(n, len(queries))))
    out = []
    for i in order:
        q, targets = queries[i], set(queries[i].targets)
        results = [(paths[x], float(scores[i][j]), x in targets) for j, x in enumerate(ranked[i][:top])]
        out.append(QueryResult(paths[q.reference], q.text, results, [paths[t] for t in q.targets if t in paths],
                               title=f"#{i} {q.reference}"))
    return out


def training_curves_png(path: str | Path, history: list[dict], title: str) -> Path | None:
    """The training loss per epoch (left axis) and the validation Recall@K (right axis), one PNG (None
    without matplotlib)."""
    plt = pyplot()
    if plt is None:
        return None
    epochs = [row["epoch"] for row in history]
    fig, ax = plt.subplots(figsize=(6.4, 4), dpi=120)
    ax.plot(epochs, [row["loss"] for row in history], color="black", linewidth=1.8, label="train loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss")
    ax.grid(alpha=0.3)
    keys = [k for k in dict.fromkeys(k for row in history for k in row) if k.startswith("val_")]
    handles, labels = ax.get_legend_handles_labels()
    if keys:
        right = ax.twinx()
        for k in keys:
            right.plot(epochs, [row.get(k, float("nan")) for row in history], linewidth=1.3, label=k.replace("_", " "))
        right.set_ylabel("validation recall (%)")
        right.set_ylim(0, 100)
        h2, l2 = right.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    ax.legend(handles, labels, fontsize=8, loc="center right")
    ax.set_title(title, fontsize=10)
    return save_figure(fig, path)


def write_reports(out: Path, name: str, title: str, curves: dict, parts: list, examples: int = 20) -> list[Path]:
    """An evaluation's Recall@K curve (``<name>-recall.png``) and its page of ``examples`` example queries
    drawn with a fixed seed (``<name>-examples.html``); ``parts``: (queries, ranked ids, scores, paths)
    of each evaluated split. Returns the files written."""
    written = []
    if curves:
        png = recall_curve_png(out / f"{name}-recall.png", curves, f"Recall@K: {title}")
        written += [png] if png else []
    if examples <= 0:
        return written
    chosen = [q for queries, ranked, scores, paths in parts if len(queries)
              for q in example_queries(queries, ranked, scores, paths, max(1, examples // len(parts)))]
    if chosen:
        written.append(write_query_grid(out / f"{name}-examples.html", f"Example queries: {title}", chosen,
                                        "<p>Each query's reference and text, then its top 8 with scores; the ground "
                                        "truth is boxed in green (and shown after the list when it was not "
                                        "retrieved).</p>"))
    return written
