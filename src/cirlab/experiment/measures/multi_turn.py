"""``multi-turn``: sessions with a simulated user over the split's gallery (``eval.multiturn``), per history mode:
success by turn, mean turns to rank 1, the share that never got there, and the edits left outside the top 10; with a
plot of success against turns."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Sequence

from cirlab.data.user import simulated_user
from cirlab.eval.multiturn import TOP, MultiTurn, run_sessions
from cirlab.experiment.measure import Measurement, Trial, mean_std, measurements


@measurements.register("multi-turn")
class MultiTurnSessions(Measurement):
    """Options: ``setting``, the sessions, turns, results shown, history modes and starts (:class:`MultiTurn`)."""

    name = "multi-turn"

    def __init__(self, setting: MultiTurn | None = None) -> None:
        self.multi_turn = setting or MultiTurn()
        self.text_only: Sequence[str] = ()

    def prepare(self, ws, split: str) -> None:
        self.text_only = simulated_user(ws.dataset).text_only  # a data set without one is refused before training

    def run(self, ws, trial: Trial) -> dict[str, dict]:
        """Simulated sessions of the model in each setting (history mode, results shown; the seed's own targets and
        starts). A user who searches by words alone gets the model's text-to-image head, fitted here on the training
        images' captions."""
        fitted = ws.fit_text_head(trial.model) if self.text_only else None
        summaries, stuck = {}, {}
        s = self.multi_turn
        for label, mode, shown, words in s.settings():
            got = run_sessions(ws, trial.model, trial.split, s.sessions, s.turns, mode, shown, trial.seed,
                               fitted[0] if fitted else None, s.start, words)
            summaries[label], stuck[label] = got.summary(), got.stuck_edits()
        return {"multi_turn": summaries, "stuck": stuck}

    def setting(self) -> dict:
        s = self.multi_turn
        return {"sessions": s.sessions, "turns": s.turns, "shown": list(s.shown), "modes": list(s.modes),
                "start": s.start, **({"words": list(s.words)} if s.words != ("own",) else {})}

    def sections(self, result) -> list[tuple[str, str]]:
        return [(f"Multi-turn search with a simulated user (docs/evaluation.md#multi-turn-search): the share (%) of "
                 f"sessions whose target was at rank 1, or within the top {TOP}, by turn T; the mean turns to rank 1 "
                 f"(of the sessions that got there) and the share that never did", success_table(result)),
                (f"Multi-turn search: per edit the user said, the share (%) of its turns after which the target was "
                 f"still outside the top {TOP} (mean over seeds)", stuck_table(result))]

    def figures(self, result, out_dir: Path, name: str) -> str:
        plot = success_png(out_dir / f"{name}-multi-turn.png", result) if success_table(result) else None
        return f"\nSuccess against turns: [{plot.name}]({plot.name})\n" if plot is not None else ""


def _rows(result, field: str) -> list[tuple[str, str]]:
    return [(n, mode) for n in result.names()
            for mode in dict.fromkeys(m for r in result.runs if r.name == n for m in r.measured.get(field, {}))]


def success_table(result, at: Sequence[int] = (1, 2, 3, 5, 10)) -> str:
    """One row per method and history mode: R@1 and R@10 by turn T (``at``), mean turns, never (mean ± std over
    seeds); empty without multi-turn runs."""
    rows = _rows(result, "multi_turn")
    if not rows:
        return ""
    turns = max(int(k.rsplit(" ", 1)[1]) for r in result.runs for m in r.measured.get("multi_turn", {}).values()
                for k in m if k.startswith("R@1 by"))
    cols = [*(f"R@1 by {t}" for t in at if t <= turns), *(f"R@{TOP} by {t}" for t in at if t <= turns),
            "mean turns", "never"]
    lines = ["| method | history | " + " | ".join(cols) + " |", "|---|---|" + "---:|" * len(cols)]
    for name, mode in rows:
        runs = [r.measured["multi_turn"][mode] for r in result.runs
                if r.name == name and mode in r.measured.get("multi_turn", {})]
        lines.append(f"| {name} | {mode} | " + " | ".join(mean_std([x[c] for x in runs]) for c in cols) + " |")
    return "\n".join(lines)


def stuck_table(result) -> str:
    rows = _rows(result, "stuck")
    kinds = sorted({k for r in result.runs for m in r.measured.get("stuck", {}).values() for k in m})
    if not rows or not kinds:
        return ""
    lines = ["| method | history | " + " | ".join(kinds) + " |", "|---|---|" + "---:|" * len(kinds)]
    for name, mode in rows:
        runs = [r.measured["stuck"][mode] for r in result.runs if r.name == name and mode in r.measured.get("stuck", {})]
        cells = [f"{statistics.fmean(x[k] for x in runs if k in x):.1f}" if any(k in x for x in runs) else "-"
                 for k in kinds]
        lines.append(f"| {name} | {mode} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def success_png(path: Path, result) -> Path | None:
    """Success against turns, one panel per history mode: per method, R@1 by turn T (solid) and R@10 (dashed),
    mean over seeds (None without matplotlib)."""
    from cirlab.eval.report import save_figure
    from cirlab.optional import pyplot

    plt = pyplot()
    if plt is None:
        return None
    modes = list(dict.fromkeys(m for r in result.runs for m in r.measured.get("multi_turn", {})))
    fig, axes = plt.subplots(1, len(modes), figsize=(4.2 * len(modes), 3.6), dpi=120, sharey=True, squeeze=False)
    for ax, mode in zip(axes[0], modes):
        for n, name in enumerate(result.names()):
            runs = [r.measured["multi_turn"][mode] for r in result.runs
                    if r.name == name and mode in r.measured.get("multi_turn", {})]
            if not runs:
                continue
            for k, style in ((1, "-"), (TOP, "--")):
                keys = sorted((int(x.rsplit(" ", 1)[1]) for x in runs[0] if x.startswith(f"R@{k} by")))
                ax.plot(keys, [statistics.fmean(r[f"R@{k} by {t}"] for r in runs) for t in keys], style,
                        color=f"C{n}", label=f"{name} R@{k}")
        ax.set_title(f"history: {mode}", fontsize=10)
        ax.set_xlabel("turn")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("sessions with the target found (%)")
    axes[0][-1].legend(fontsize=7, loc="lower right")
    fig.suptitle(f"Multi-turn search, simulated user: {result.dataset}", fontsize=10)
    return save_figure(fig, path)
