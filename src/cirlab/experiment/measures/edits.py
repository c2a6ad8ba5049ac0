"""``edits`` (default): Recall@1 and @10 per edit type, and the share of top-1 results that carry the requested value
of the edited attribute, where triplets name their edit (``attributes.edit`` and ``to``)."""

from __future__ import annotations

from cirlab.experiment.measure import Measurement, Trial, group_table, mean, measurements


def recall_by(ev, key: str, k: int = 10) -> dict[str, float]:
    """Recall@k (%) of the queries grouped by a triplet attribute (``edit``, ``composition``...);
    queries without the attribute are left out."""
    hits: dict[str, list[bool]] = {}
    for t, ids in zip(ev.triplets, ev.ids):
        value = t.attributes.get(key) if isinstance(t.attributes, dict) else None
        if value:
            hits.setdefault(str(value), []).append(any(x in ids[:k] for x in t.targets))
    return {e: 100.0 * sum(h) / len(h) for e, h in sorted(hits.items())}


def top1_carries(ev, records: dict[str, dict]) -> dict[str, float]:
    """Per edit type (and ``all``), the share (%) of queries whose top-1 image has the value the text asks
    for in the edited attribute (triplet attributes ``edit`` and ``to``, image ``attributes``), whether
    or not it is the exact target; empty where triplets or images do not name them."""
    hits: dict[str, list[bool]] = {}
    for t, ids in zip(ev.triplets, ev.ids):
        a = t.attributes if isinstance(t.attributes, dict) else {}
        if "edit" not in a or "to" not in a or not ids:
            continue
        top = (records.get(ids[0]) or {}).get("attributes") or {}
        carried = top.get(a["edit"]) == a["to"]
        for key in (str(a["edit"]), "all"):
            hits.setdefault(key, []).append(carried)
    return {e: 100.0 * sum(h) / len(h) for e, h in sorted(hits.items())}


@measurements.register("edits")
class Edits(Measurement):
    name = "edits"
    default = True

    def run(self, ws, trial: Trial) -> dict[str, dict]:
        return {"by_edit": recall_by(trial.first, "edit"), "by_edit_r1": recall_by(trial.first, "edit", 1),
                "carries": top1_carries(trial.first, ws.dataset.by_id)}

    def sections(self, result) -> list[tuple[str, str]]:
        r10 = group_table(result, "by_edit", mean)
        return [("Recall@1 (%) by edit type (mean over seeds)", group_table(result, "by_edit_r1", mean) if r10 else ""),
                ("Recall@10 (%) by edit type (mean over seeds)", r10),
                ("Top-1 results that carry the requested attribute value (%), exact target or not (mean over seeds)",
                 group_table(result, "carries", mean))]
