"""One table of robustness across saved benches: each arm (a ``cirlab bench`` JSON with the ``paraphrases`` and
``robustness`` measurements) and method, the training phrasing, each shape of the paraphrase bank, the typo curve,
the rewordings, the worst of them against the training phrasing, and AO@10 under 5% typos (mean over the seeds).

    .venv/bin/python benchmarks/robustness_summary.py --arm plain=benchmarks/results/robustness/emojiedit-plain.json \\
        --arm augmented=benchmarks/results/robustness/emojiedit-augmented.json [--out FILE.md]

It reads what the benches saved; it trains nothing. Each arm's own file names its command.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
from pathlib import Path

from _report import save_report

SHAPES = ("word order", "synonyms", "longer sentence", "terse", "another wording")
PERTURBED = ("typos 2%", "typos 5%", "typos 10%", "frames", "synonyms", "order", "drop", "case")


def mean(values: list[float]) -> str:
    return f"{statistics.fmean(values):.1f}" if values else "-"


def row(label: str, method: str, runs: list[dict]) -> tuple[str, dict]:
    """The table row of one arm's method, and its numbers."""
    train = [r["robustness"]["training phrasing"] for r in runs]
    bank = {s: [r["paraphrase"][s] for r in runs if s in r.get("paraphrase", {})] for s in SHAPES}
    pert = {p: [r["robustness"][p] for r in runs if p in r["robustness"]] for p in PERTURBED}
    spelled = [r["robustness"]["typos 5% + spelling"] for r in runs if "typos 5% + spelling" in r["robustness"]]
    worst_bank = [min(r["paraphrase"][s] for s in SHAPES) / r["robustness"]["training phrasing"] for r in runs
                  if "paraphrase" in r]
    worst_all = [min([r["paraphrase"][s] for s in SHAPES if s in r.get("paraphrase", {})]
                     + [r["robustness"][p] for p in PERTURBED if p in r["robustness"]])
                 / r["robustness"]["training phrasing"] for r in runs]
    ao = [r["stability"]["typos 5% AO@10"] for r in runs if "typos 5% AO@10" in r.get("stability", {})]
    cells = [mean(train), *(mean(bank[s]) for s in SHAPES), f"{statistics.fmean(worst_bank):.2f}" if worst_bank
             else "-", *(mean(pert[p]) for p in PERTURBED[:3]), mean(spelled), *(mean(pert[p]) for p in PERTURBED[3:7]),
             f"{statistics.fmean(worst_all):.2f}", mean(ao)]
    return f"| {label} | {method} | {len(runs)} | " + " | ".join(cells) + " |", {"training": statistics.fmean(train)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arm", action="append", required=True, metavar="LABEL=PATH",
                    help="a saved bench JSON under a label (repeat; the order of the table)")
    ap.add_argument("--title", default="Robustness to people's wordings")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    head = ["arm", "method", "seeds", "training phrasing", *(f"bank: {s}" for s in SHAPES), "bank worst / training",
            "typos 2%", "typos 5%", "typos 10%", "typos 5% + spelling", "frames", "synonyms", "order", "drop",
            "worst / training", "typos 5% AO@10"]
    lines = [f"# {a.title}", "", "Command: `python benchmarks/robustness_summary.py "
             + " ".join(f"--arm {shlex.quote(arm)}" for arm in a.arm) + "`", "",
             "R@1 (%) on the test split, mean over seeds, from each arm's saved bench (its own file names the command "
             "that made it). bank: the paraphrase bank's shapes (never trained on); typos and rewordings: the "
             "robustness measurement's perturbations (seed 0); `+ spelling`: with the query-time spelling correction; "
             "worst / training: the worst bank shape (or the worst of everything) over the training phrasing.", "",
             "| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(head) - 2)]
    payload = {}
    for arm in a.arm:
        label, _, path = arm.partition("=")
        runs = json.loads(Path(path).read_text())["runs"]
        for method in dict.fromkeys(r["name"] for r in runs):
            line, numbers = row(label, method, [r for r in runs if r["name"] == method and "robustness" in r])
            lines.append(line)
            payload[f"{label}/{method}"] = {"source": path, **numbers}
    save_report("\n".join(lines) + "\n", a.out, payload)


if __name__ == "__main__":
    main()
