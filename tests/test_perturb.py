"""Text perturbations (cirlab.data.perturb): seeded, rates that hold, synonyms from WordNet, nothing that flips an
edit's meaning; their use in training (--text-augment), in evaluation (--perturb) and as a measurement."""

import json
import random
import re
import subprocess
import sys

import numpy as np
import pytest
from conftest import make_dataset

from cirlab.data import perturb
from cirlab.data.perturb import (NEGATIONS, TextAugment, drop_words, keyboard_neighbours, perturbed, reorder, slip,
                                 synonyms_of)
from cirlab.data.triplets import Triplet
from cirlab.errors import CirlabError
from cirlab.eval.metrics import rank_stability

EVERYTHING = "typos=0.05,frames=0.3,synonyms=0.3,relatives=0.3,order=0.3,drop=0.1,case=0.2"


def test_a_spec_parses_like_the_image_augmentation_and_refuses_what_it_cannot_use():
    aug = TextAugment.parse(EVERYTHING + ",variants=3,keep=0.25")
    assert aug.typos == 0.05 and aug.variants == 3 and aug.keep == 0.25 and aug
    assert TextAugment.parse(aug.spec) == aug and not TextAugment.parse("") and not TextAugment.parse(None)
    for spec, says in [("typo=0.1", "text augmentation typo unknown; use typos=..."),
                       ("typos=lots", "typos='lots' must be a number"), ("drop=2", "out of range: drop"),
                       ("variants=0", "out of range: variants")]:
        with pytest.raises(CirlabError, match=re.escape(says)):
            TextAugment.parse(spec)


def test_a_wording_is_a_function_of_the_spec_the_seed_and_the_text():
    aug = TextAugment.parse(EVERYTHING)
    text = "make the small red circle gray"
    assert aug.perturb(text, 3, 1) == aug.perturb(text, 3, 1)
    assert len({aug.perturb(text, seed, draw) for seed in range(3) for draw in range(4)}) > 6
    variants = aug.variants_of([text, "no skin tone", text], seed=0)
    assert list(variants) == [text, "no skin tone"] and len(set(variants[text])) == 4 and text not in variants[text]
    avoid = variants[text][:2]
    assert not set(avoid) & set(aug.variants_of([text], 0, avoid)[text])  # a text to avoid is never made
    triplets = [Triplet("a", text, ["b"], {"edit": "colour"})]
    again = perturbed(triplets, aug, seed=0)[0]
    assert again.reference == "a" and again.targets == ["b"] and again.attributes == {"edit": "colour"}
    assert again.text == aug.perturb(text, 0)
    # each query draws its own wording: queries sharing a text are worded apart, the first as the text's first draw
    shared = perturbed([Triplet(str(i), text, ["b"], {}) for i in range(6)] + [Triplet("c", "no skin tone", ["d"], {})],
                       aug, seed=0)
    assert shared[0].text == again.text and shared[-1].text == aug.perturb("no skin tone", 0)  # others' count not
    assert [q.text for q in shared[:6]] == [aug.perturb(text, 0, n) for n in range(6)]
    assert len({q.text for q in shared[:6]}) > 3


def test_typos_slip_more_letters_at_a_higher_rate_by_keyboard_neighbours_among_others():
    text = "change the person to a woman and make the skin tone medium dark " * 40
    words = text.split()
    letters = sum(map(len, words))

    def slipped(rate: float) -> float:  # the share of words changed (spaces never slip), over 5 seeds
        return np.mean([np.mean([a != b for a, b in zip(text.split(" "), slip(text, rate, random.Random(s)).split(" "))])
                        for s in range(5)])

    # a word of n letters keeps every letter with probability (1 - rate)^n
    expect = {rate: np.mean([1 - (1 - rate) ** len(w) for w in words]) for rate in (0.02, 0.1)}
    for rate, share in expect.items():
        assert abs(slipped(rate) - share) < 0.25 * share, (rate, slipped(rate), share)
    assert slip(text, 0.0, random.Random(0)) == text and letters > 1000
    near = keyboard_neighbours()
    assert set("tyfhvb") <= set(near["g"]) and "q" not in near["g"] and "p" not in near["a"]
    assert all(c in near[d] for c in near for d in near[c])  # a neighbour's neighbour is the letter itself


def test_rewordings_keep_negations_and_a_word_and_move_phrases_where_the_grammar_allows():
    for seed in range(50):
        kept = drop_words("remove the skin tone, no tone at all, not the hair", 1.0, random.Random(seed)).split()
        assert {"no", "not"} <= set(w.strip(",") for w in kept) and "the" not in kept
    assert drop_words("the it", 1.0, random.Random(0)) == "the it"  # never every word
    assert NEGATIONS.isdisjoint({"the", "a", "it"})
    assert reorder("add a small red circle to top-left", random.Random(0)) == "to top-left, add a small red circle"
    assert reorder("medium skin instead", random.Random(0)) == "instead, medium skin"
    assert reorder("make it red", random.Random(0)) == "make it red"


def test_synonyms_come_from_wordnets_most_frequent_sense_and_are_common_words():
    pytest.importorskip("spellchecker")
    from cirlab.data.wordnet import wordnet

    try:
        wordnet().index("noun")
    except CirlabError as e:
        pytest.fail(f"WordNet is part of the test environment (make wordnet): {e}")
    assert "large" in synonyms_of("big") and "little" in synonyms_of("small") and "alter" in synonyms_of("change")
    assert "heart" not in synonyms_of("center")  # its most frequent sense is the organ
    assert synonyms_of("white") == () or "caucasian" not in synonyms_of("white")  # no proper noun
    assert all(s.islower() and s.isalpha() and len(s) >= 3 for w in ("red", "gray", "person", "remove")
               for s in synonyms_of(w))
    assert not synonyms_of("no") and not synonyms_of("the")


def test_relatives_take_the_sense_the_texts_own_words_pick_and_never_another_value_or_an_offensive_word():
    """``relatives=P``: "light" among "dark" and "white" is the colour ("pale"), not the radiation ("beam") or the
    weight ("airy"), and "left" the hand's, not the politics'; "man" and "woman" get "male" and "female" but not
    "adult", which is both; no relative is a word of the texts or on the offensive list; the variants are seeded."""
    pytest.importorskip("spellchecker")
    pytest.importorskip("better_profanity")
    from cirlab.data.perturb import offensive_words, relatives_in, vocabulary

    texts = ["make the skin light", "make the skin dark", "make it a man", "make it a woman", "give it white hair",
             "a black one", "turn it left", "turn it right"]
    found = relatives_in(texts)
    assert "pale" in found["light"] and not {"beam", "airy", "sunlight"} & set(found["light"])
    assert "liberal" not in found.get("left", ()) and "lover" not in found["man"]  # the most frequent sense only
    assert "male" in found["man"] and "female" in found["woman"]
    assert "adult" not in found["man"] + found["woman"]
    every = {r for rs in found.values() for r in rs}
    assert not every & set(vocabulary(texts)) and not every & offensive_words()
    assert all(r.isalpha() and r.islower() and len(r) >= 3 for r in every)
    augment = TextAugment.parse("relatives=1")
    variants = augment.variants_of(texts, seed=0)
    assert variants == augment.variants_of(texts, seed=0)
    assert "make the skin pale" in variants["make the skin light"]
    assert all(v.replace(r, "") != v for v in variants["make it a woman"] for r in found["woman"])  # one of its own


def test_rank_stability_is_one_for_the_same_lists_and_falls_with_disagreement():
    same = rank_stability([["a", "b", "c"]], [["a", "b", "c"]], k=3)
    assert same == {"AO@3": 100.0, "Jaccard@3": 100.0}
    swapped = rank_stability([["a", "b", "c"]], [["b", "a", "c"]], k=3)
    assert swapped["Jaccard@3"] == 100.0 and swapped["AO@3"] == pytest.approx(100 * (0 + 1 + 1) / 3)
    disjoint = rank_stability([["a", "b"]], [["c", "d"]], k=2)
    assert disjoint == {"AO@2": 0.0, "Jaccard@2": 0.0}


@pytest.mark.slow  # trains four times and runs three CLI commands: in make test, not make test-fast
def test_training_reads_each_texts_variants_and_evaluation_asks_perturbed_queries(tmp_path, monkeypatch):
    """--text-augment encodes each training text's variants once and trains on them (other weights than without);
    --perturb evaluates the split's queries perturbed; the robustness measurement reports each perturbation."""
    from cirlab.encoders.cache import FeatureCache
    from cirlab.experiment import Workspace, run_bench, train_method

    ds = make_dataset(tmp_path / "tiny", n=12)
    cache = FeatureCache(tmp_path / "cache")
    ws = Workspace.open(ds, cache, progress=False)
    before = len(ws.texts.keys)
    plain, _, _ = train_method(ws, "sum", {"train": {"epochs": 2, "batch_size": 4}}, progress=False, text_head=False)
    spec = "typos=0.1,drop=0.5,variants=3"
    augmented, _, meta = train_method(ws, "sum", {"train": {"epochs": 2, "batch_size": 4, "text_augment": spec}},
                                      progress=False, text_head=False)
    assert meta["config"]["train"]["text_augment"] == spec and len(ws.texts.keys) > before
    # a reused model was trained on the texts this code makes: other augmentation rules retrain it
    config = {"train": {"epochs": 1, "batch_size": 4, "text_augment": spec}}
    train_method(ws, "sum", config, out=tmp_path / "m.pt", progress=False, text_head=False)
    assert train_method(ws, "sum", config, out=tmp_path / "m.pt", progress=False, text_head=False, reuse=True)[1] is None
    monkeypatch.setattr(perturb, "RULES", perturb.RULES + 1)
    assert train_method(ws, "sum", config, out=tmp_path / "m.pt", progress=False, text_head=False, reuse=True)[1]
    monkeypatch.undo()
    differs = [not np.allclose(a.detach(), b.detach()) for a, b in zip(plain.parameters(), augmented.parameters())]
    assert any(differs)
    consistent, _, _ = train_method(ws, "sum", {"train": {"epochs": 2, "batch_size": 4, "text_augment": spec,
                                                          "text_consistency": 1.0}}, progress=False, text_head=False)
    assert any(not np.allclose(a.detach(), b.detach()) for a, b in zip(augmented.parameters(), consistent.parameters()))
    with pytest.raises(CirlabError, match="text_consistency must be 0 or more, and needs text_augment"):
        train_method(ws, "sum", {"train": {"epochs": 1, "text_consistency": 1.0}}, progress=False)
    with pytest.raises(CirlabError, match="makes its own query texts"):
        train_method(ws, "dqu", {"train": {"epochs": 1, "batch_size": 4, "text_augment": spec}}, progress=False)
    bench = run_bench(ds, ["sum"], 1, cache, "efficientnet_lite0", "minilm", epochs=1, progress=False,
                      log=lambda line: None, measures=["robustness"], train={"text_augment": "typos=0.1"})
    run = bench.runs[0].measured
    assert set(run["robustness"]) - {"training phrasing + spelling", "typos 2% + spelling", "typos 5% + spelling",
                                     "typos 10% + spelling"} == {"training phrasing", "typos 2%", "typos 5%",
                                                                 "typos 10%", "frames", "synonyms", "order", "drop",
                                                                 "case"}
    if "training phrasing + spelling" in run["robustness"]:  # correction never touches the training phrasing
        assert run["robustness"]["training phrasing + spelling"] == run["robustness"]["training phrasing"]
    assert all(0 <= v <= 100 for v in run["stability"].values()) and bench.to_dict()["train"] == {"text_augment":
                                                                                                   "typos=0.1"}
    assert any("Robustness" in heading for heading, _ in bench.sections())
    model = tmp_path / "sum.pt"
    train_method(ws, "sum", {"train": {"epochs": 1, "batch_size": 4}}, out=model, progress=False, text_head=False)
    res = subprocess.run([sys.executable, "-m", "cirlab.cli", "eval", "--data", ds, "--model", model, "--cache",
                          tmp_path / "cache", "--perturb", "typos=0.2", "--out", tmp_path / "ev", "--examples", "0",
                          "--quiet"], capture_output=True, text=True, env={**__import__("os").environ,
                                                                          "HF_HUB_OFFLINE": "1"})
    assert res.returncode == 0, res.stderr
    assert "perturbed as typos=0.2 (seed 0)" in res.stdout and "top-10 stability: AO@10" in res.stdout
    report = json.loads(next((tmp_path / "ev").glob("*.json")).read_text())
    assert report["perturb"]["spec"] == "typos=0.2" and set(report["perturb"]["stability"]) == {"AO@10", "Jaccard@10"}
    pytest.importorskip("spellchecker")
    from cirlab.api import Pipeline

    pipe = Pipeline.load(model, tmp_path / "cache")  # a checkpoint records its training words: spelling is on
    assert pipe.meta["vocabulary"] == ["it", "like", "look", "make", "shape"] and pipe.spelling
    pairs = pipe.meta["word_pairs"]  # and which word follows which, to read a word in context
    assert set(pairs) == {"make it", "it look", "look like", "like shape"} and len(set(pairs.values())) == 1
    assert pipe.spell("mkae it look like shpae 3") == ("make it look like shape 3", [{"from": "mkae", "to": "make"},
                                                                                     {"from": "shpae", "to": "shape"}])
    index = pipe.encode_gallery(ds / "images", progress=False).to_index()
    image = sorted((ds / "images").iterdir())[0]
    assert [h.id for h in pipe.search(index, image, "shpae 3", k=4)] == [h.id for h in pipe.search(index, image,
                                                                                                   "shape 3", k=4)]
    res = subprocess.run([sys.executable, "-m", "cirlab.cli", "search", "--model", model, "--cache", tmp_path / "cache",
                          "--gallery", ds / "images", "--image", image, "--text", "shpae 3", "-k", "2"],
                         capture_output=True, text=True)
    assert res.returncode == 0 and "searched for: shape 3  (shpae -> shape)" in res.stdout, res.stderr
    res = subprocess.run([sys.executable, "-m", "cirlab.cli", "search", "--model", model, "--cache", tmp_path / "cache",
                          "--gallery", ds / "images", "--image", image, "--text", "shpae 3", "-k", "2", "--json",
                          "--no-spelling"],
                         capture_output=True, text=True)
    assert res.returncode == 0 and json.loads(res.stdout)["query"]["corrections"] == [], res.stderr
    res = subprocess.run([sys.executable, "-m", "cirlab.cli", "eval", "--data", ds, "--model", model, "--cache",
                          tmp_path / "cache", "--perturb", "typos=0", "--out", tmp_path / "ev"],
                         capture_output=True, text=True)
    assert res.returncode == 2 and "perturbs nothing" in res.stderr


def test_spelling_corrects_only_words_known_neither_to_the_model_nor_to_english():
    pytest.importorskip("spellchecker")
    from cirlab.data.spelling import Speller, vocabulary, word_pairs

    speller = Speller(vocabulary(["make it a woman", "medium-dark skin tone", "make the colour teal"]))
    assert speller.correct("make it a womna") == ("make it a woman", [{"from": "womna", "to": "woman"}])
    assert speller.correct("Medium-drak SKNI") == ("Medium-dark SKIN", [{"from": "drak", "to": "dark"},
                                                                        {"from": "SKNI", "to": "SKIN"}])
    # another language, a contraction, a word of two letters: left as typed (an English speller cannot judge them)
    for foreign in ("rends-le rouge, s'il te plaît", "добавь красный", "make it ti"):
        assert speller.correct(foreign) == (foreign, [])
    for known in ("make the colour teal", "no skin tone", "make it a ton"):  # the model's words, English words
        assert speller.correct(known) == (known, [])
    assert speller.correct("skni")[0] == "skin"  # the model's own word before English's "ski"
    # two of the model's words one edit away: the one that keeps the typed first letter, not the more frequent
    gender = Speller(vocabulary(["make it a man", "make it a woman"]))
    assert [gender.word(w) for w in ("wman", "mna", "womn", "amn")] == ["woman", "man", "woman", "man"]
    # between two of the model's words, the one its training texts put between the words around it
    texts = ["medium-light skin tone", "light skin tone", "face right", "face left"]
    assert Speller(vocabulary(texts)).correct("medium ight skin")[0] == "medium right skin"  # no context: the alphabet
    context = Speller(vocabulary(texts), word_pairs(texts))
    assert word_pairs(texts)["skin tone"] == 2 and context.correct("medium ight skin")[0] == "medium light skin"
    assert context.correct("face ight")[0] == "face right" and context.correct("light skin tone")[1] == []


def test_each_epoch_a_triplet_reads_its_own_text_or_one_of_its_variants():
    """TripletIndex.reworded: a kept triplet reads its own text row (not the mask's 0 or 1: a regression), a reworded
    one a row of its own variants; a triplet without variants always its own; the same seed and epoch draw the same."""
    from cirlab.training.trainer import TripletIndex

    own = np.array([7, 8, 9, 10])
    wordings = [np.array([20, 21]), np.array([30]), np.array([], dtype=np.int64), np.array([40, 41, 42])]
    index = TripletIndex(np.zeros(4, np.int64), own, np.zeros(4, np.int64), 0, np.zeros(4, np.int64), wordings=wordings)
    seen = [index.reworded(own, 0.5, 0, epoch) for epoch in range(40)]
    for rows in seen:
        assert all(r == o or r in w for r, o, w in zip(rows, own, wordings)) and rows[2] == 9
    assert any(rows[0] == 7 for rows in seen) and any(rows[0] in (20, 21) for rows in seen)
    assert all((index.reworded(own, 1.0, 0, e) == own).all() for e in range(5))
    assert (index.reworded(own, 0.5, 3, 7) == index.reworded(own, 0.5, 3, 7)).all()
