"""Multi-turn search (eval/multiturn.py, session.py): the simulated user's edit between constructed scenes and emoji,
the history modes' queries, and the success curves of hand-set sessions."""

import random

import numpy as np
import pytest

from cirlab.data.css import CELLS, parse_edit
from cirlab.data.emojiedit import describe
from cirlab.errors import CirlabError
from cirlab.data.css import CssUser
from cirlab.data.emojiedit import EmojiUser
from cirlab.eval.multiturn import MultiTurn, Sessions, Wording, simulate
from cirlab.session import JOIN, Turn, combine, plan


def css_record(*objects):
    return {"attributes": {"objects": [dict(zip(("cell", "shape", "colour", "size"), o)) for o in objects]}}


A = [(0, "circle", "red", "small"), (4, "rectangle", "blue", "large")]
SCENES = {"A": css_record(*A),
          "recoloured": css_record((0, "circle", "green", "small"), A[1]),
          "fewer": css_record(A[0]),
          "more": css_record(*A, (8, "triangle", "yellow", "small")),
          "reshaped": css_record(A[0], (4, "triangle", "blue", "large"))}


@pytest.mark.parametrize("target, kind, texts", [
    ("recoloured", "change-colour", {f"make {w} green" for w in ("red object", "circle", "small object", "top-left object")}),
    ("fewer", "remove", {f"remove {w}" for w in ("blue object", "rectangle", "large object", "center-center object")}),
    ("more", "add", {"add small yellow triangle to bottom-right"}),
    ("reshaped", "change-shape", {f"make {w} a triangle" for w in ("blue object", "rectangle", "large object",
                                                                   "center-center object")}),
])
def test_the_css_user_says_the_one_edit_between_two_scenes(target, kind, texts):
    user = CssUser(SCENES)
    assert user.distance("A", target) == 1 and user.distance("A", "A") == 0 and user.editable("A", target)
    said = {user.edit("A", target, random.Random(seed)) for seed in range(40)}
    assert {k for _, k in said} == {kind} and {t for t, _ in said} <= texts and said
    for text, _ in said:  # the data set's own grammar, which the paraphrase bank parses
        assert parse_edit(text) is not None, text
    assert CELLS[8] == "bottom-right"


def test_the_css_user_picks_among_every_difference_and_refuses_none():
    user = CssUser(SCENES)
    assert user.distance("recoloured", "more") == 2 == user.steps("recoloured", "more")  # colour back + one added
    kinds = {user.edit("recoloured", "more", random.Random(seed))[1] for seed in range(40)}
    assert kinds == {"change-colour", "add"}
    with pytest.raises(CirlabError, match="same scene"):
        user.edit("A", "A", random.Random(0))


def test_the_emoji_user_names_the_factor_or_searches_for_the_emoji():
    records = {"a": {"attributes": {"family": "person", "base": "cook", "gender": "man", "tone": "dark"},
                     "caption": "man cook dark skin tone"},
               "b": {"attributes": {"family": "person", "base": "cook", "gender": "man", "tone": "light"}},
               "c": {"attributes": {"family": "person", "base": "in_manual_wheelchair"},
                     "caption": "person in manual wheelchair"},
               "d": {"attributes": {"family": "person", "base": "cook", "gender": "man", "tone": "dark"}}}
    user = EmojiUser(records)
    text, kind = user.edit("a", "b", random.Random(0))
    assert kind == "tone" and text in describe("tone", "light") and user.distance("a", "b") == 1
    said = {user.edit("a", "c", random.Random(seed)) for seed in range(20)}
    assert said == {("person in manual wheelchair", "emoji")} and "emoji" in user.text_only
    assert not user.editable("a", "c") and user.distance("a", "c") > user.distance("a", "b")
    assert user.steps("a", "b") == 1 and user.steps("a", "c") == 3  # the emoji by words, then gender and tone
    assert user.key("a") == user.key("d")  # the user cannot tell them apart: either is its target


def test_the_user_words_its_edits_as_the_bank_or_perturbed_and_keeps_its_sessions():
    """``Wording``: ``bank`` says each edit in one of the paraphrase bank's shapes for that very edit (a search by words
    alone keeps its words), a perturbation perturbs the user's own words, seeded; the targets, starts and edits stay
    those of the user's own words, only the texts change."""
    from cirlab.data.paraphrase import bank

    records = {f"{base}-{tone}": {"attributes": {"family": "person", "base": base, "tone": tone},
                                  "caption": f"{base} {tone}"}
               for base in ("cook", "farmer") for tone in ("light", "medium", "dark")}
    gallery = sorted(records)

    def run(words):
        said = []

        def search(histories, k):  # a ranking that ignores the words: the sessions run alike whatever is said
            said.extend([(h[-1].reference, h[-1].text) for h in histories])
            return [gallery[::-1][:k] for _ in histories]
        got = simulate(EmojiUser(records), gallery, search, sessions=6, turns=3, seed=1, words=Wording(words))
        return got, said

    own, own_said = run("own")
    banked, bank_said = run("bank")
    typo, typo_said = run("typos=0.3")
    assert run("typos=0.3")[1] == typo_said  # seeded
    for got in (banked, typo):
        assert [d["target"] for d in got.dialogs] == [d["target"] for d in own.dialogs]
        assert got.edits == own.edits and [r for r, _ in bank_said] == [r for r, _ in own_said]
    phrasings = {p.replace("{v}", tone) for tone in ("light", "medium", "dark") for p in bank()["emojiedit"]["tone"]}
    for (reference, text), (_, mine), (kind, _) in zip(bank_said, own_said, own.edits):
        if kind == "emoji":
            assert reference is None and text == mine
        else:
            assert text in phrasings and text not in describe("tone", text.split()[-1])
    assert sum(t != m for (_, t), (_, m) in zip(typo_said, own_said)) > len(own_said) // 2
    with pytest.raises(CirlabError, match="the simulated user's words 'loud': use own, bank, or a perturbation"):
        Wording("loud")
    with pytest.raises(CirlabError, match="words 'typo=0.1'.*typos=0.05 .*use typos="):
        MultiTurn(words=("own", "typo=0.1"))
    assert [s[0] for s in MultiTurn(modes=("last",), words=("own", "bank")).settings()] == \
        ["last, words own", "last, words bank"]
    css_said = {Wording("bank").speaker(CssUser(SCENES), 0)(*CssUser(SCENES).edit("A", "more", random.Random(0)),
                                                              "A", "more") for _ in range(3)}
    assert css_said <= {p.format(object="small yellow triangle", place=" at bottom-right", value="")
                        for p in bank()["css"]["add"]}


def test_each_history_mode_plans_its_queries():
    turns = [Turn("r1", "make it red"), Turn(None, "a cook"), Turn("r3", "make it red"), Turn("r4", "facing left")]
    assert plan(turns, "last") == [turns[-1]]
    assert plan(turns, "text") == [Turn("r4", JOIN.join(["make it red", "a cook", "facing left"]))]
    assert plan(turns, "mean") == turns
    with pytest.raises(CirlabError, match="history mode"):
        plan(turns, "all")
    v = combine([np.array([1.0, 0.0], np.float32), np.array([0.0, 1.0], np.float32)])
    assert np.allclose(v, [2 ** -0.5, 2 ** -0.5])
    with pytest.raises(CirlabError, match="at least 1"):
        MultiTurn(turns=0)


def test_the_success_curves_of_hand_set_sessions():
    got = Sessions([[5, 0], [0], [20, 15, 3]], turns=3, edits=[("add", 5), ("tone", 0), ("add", 20)])
    s = got.summary()
    assert [round(s[f"R@1 by {t}"], 1) for t in (1, 2, 3)] == [33.3, 66.7, 66.7]
    assert [round(s[f"R@10 by {t}"], 1) for t in (1, 2, 3)] == [66.7, 66.7, 100.0]
    assert s["mean turns"] == 1.5 and round(s["never"], 1) == 33.3
    assert got.stuck_edits() == {"add": 50.0, "tone": 0.0}


def test_a_bench_table_with_no_session_at_rank_1_says_so():
    """Where no session of a setting reached rank 1, its mean turns is not a number: the table shows "-", and the
    other cells their mean ± std over seeds."""
    from cirlab.experiment.measures.multi_turn import success_table
    from cirlab.experiment.sweep import BenchResult, BenchRun

    never = Sessions([[50.0, 20.0], [30.0, 5.0]], turns=2).summary()
    assert np.isnan(never["mean turns"]) and never["never"] == 100.0
    runs = [BenchRun("sum", seed, {1: 0.0}, 1, 0.0, 1, 2, measured={"multi_turn": {"last": never}}) for seed in (0, 1)]
    table = success_table(BenchResult("css", "test", [0, 1], runs))
    row = table.splitlines()[-1]
    assert row.startswith("| sum | last |") and "| - |" in row and "100.0 ± 0.0" in row
