"""Zero-shot methods that read the text with the reference (fusion/zero_shot.py, training/zero_shot.py), and the
product of similarities as a re-scoring of the first stage's candidates: a pseudo-word
injected into the text encoder (Pic2Word, LinCIR, SEARLE's OTI) and the text-shift proxy. The injected token reaches
MiniLM and CLIP's text tower; training reaches the mapping only and reads no triplet; the methods give the documented
vectors, round-trip through a checkpoint, and answer through an index and the CLI."""

import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import make_dataset, make_tiny_clip

from cirlab.errors import CirlabError


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return f"clip:{make_tiny_clip(tmp_path_factory.mktemp('clip') / 'clip')}"


@pytest.mark.parametrize("spec", ["minilm", "clip"])
def test_the_injected_pseudo_word_reaches_the_text_encoder(spec, clip):
    from cirlab.encoders import build_text_encoder

    te = build_text_encoder(clip if spec == "clip" else spec)
    a, b = torch.randn(2, te.word_dim, generator=torch.Generator().manual_seed(0))
    tokens = torch.stack([a, b]).requires_grad_(True)
    out = te.pooled_with_grad(["a $ dress", "a $ dress"], tokens)
    assert not torch.allclose(out[0], out[1], atol=1e-4)  # the output changes with the token
    plain = te.pooled_with_grad(["a red dress"]).detach()
    np.testing.assert_allclose(plain.numpy(), te.encode_texts(["a red dress"])["pooled"], atol=1e-5)
    real = te.word_embeddings(torch.tensor([te.tokenizer("red", add_special_tokens=False)["input_ids"][0]]))
    injected = te.pooled_with_grad(["a $ dress"], real.detach())  # the word's own embedding: the word itself
    torch.testing.assert_close(injected.detach(), plain, atol=1e-5, rtol=0)
    out.sum().backward()
    assert tokens.grad is not None and tokens.grad.abs().sum() > 0
    assert all(p.grad is None for p in te.model.parameters())  # the text encoder stays frozen
    with pytest.raises(CirlabError, match="every prompt needs the pseudo-word"):
        te.pooled_with_grad(["a red dress"], tokens[:1])


@pytest.mark.parametrize("spec", ["minilm", "clip"])
def test_the_pseudo_word_runs_in_onnx_runtime_as_in_pytorch(spec, clip, tmp_path, monkeypatch):
    """A query's pseudo-word is an input of the exported graph: ONNX Runtime gives PyTorch's vectors, texts of
    other lengths and batch sizes than the export's included, and a prompt without ``$`` is refused before it runs."""
    from cirlab.encoders import build_text_encoder
    from cirlab.encoders.runtime import exported_path

    monkeypatch.setenv("CIRLAB_HOME", str(tmp_path))
    te = build_text_encoder(clip if spec == "clip" else spec)
    texts = ["a photo of $, make it red", "a photo of $ that has a much larger blue circle at the top", "$"]
    words = torch.randn(3, te.word_dim, generator=torch.Generator().manual_seed(1))
    eager = te.pooled_with_grad(texts, words).detach()
    te.runtime = "onnx"
    exported = te.encode_with_words(texts, words)
    torch.testing.assert_close(exported, eager, atol=1e-4, rtol=0)
    assert exported_path(te, graph="word_network").is_file() and not exported_path(te).exists()
    torch.testing.assert_close(te.encode_with_words(texts[1:2], words[1:2]), eager[1:2], atol=1e-4, rtol=0)
    with pytest.raises(CirlabError, match="every prompt needs the pseudo-word"):
        te.encode_with_words(["a red dress"], words[:1])


def test_the_caption_editor_substitutes_appends_and_removes():
    from cirlab.fusion.zero_shot import edit_caption, masked_caption

    slots = {("man", "woman"): 0.6, ("dark", "light"): 0.7, ("dark", "medium"): 0.45}

    def similar(a, b):
        return torch.tensor([[1.0 if x == y else slots.get((x, y), 0.1) for y in b] for x in a])

    assert edit_caption("woman cook", "as a man instead", similar) == "man cook"
    assert edit_caption("raised hand", "give it a dark skin tone", similar) == "raised hand dark skin tone"
    assert edit_caption("man cook light skin tone", "make the skin tone dark", similar) == "man cook dark skin tone"
    assert edit_caption("man cook medium skin tone", "dark skin", similar) == "man cook dark skin tone"
    assert edit_caption("man cook medium skin tone", "dark skin", similar, threshold=0.5) \
        == "man cook medium skin tone dark"
    assert edit_caption("man shrugging light skin tone", "remove the skin tone", similar) == "man shrugging light"
    assert edit_caption("red apple", "make it so", similar) == "red apple"
    assert masked_caption("a red apple on the table") == "a $ on the $"


def _assembled(tmp_path, clip, method, model=None, train=None, n=12):
    from cirlab.encoders.cache import FeatureCache
    from cirlab.experiment.workspace import Workspace, train_method

    data = tmp_path / "tiny" if (tmp_path / "tiny").exists() else make_dataset(tmp_path / "tiny", n=n)
    ws = Workspace.open(data, FeatureCache(tmp_path / "cache"), clip, clip, progress=False)
    model, result, meta = train_method(ws, method, {"model": model or {}, "train": train or {}},
                                       out=tmp_path / f"{method}.pt", progress=False)
    return ws, model, result, meta


def test_the_text_shift_proxy_gives_the_documented_vector(tmp_path, clip):
    """``q = L2(r + t(edited caption) - t(caption))``, the caption the bank's nearest to ``r`` (the training captions
    alone), the edit made by ``edit_caption``."""
    from cirlab.fusion.zero_shot import edit_caption, word_similarity

    ws, model, _, meta = _assembled(tmp_path, clip, "zs_text_shift")
    train = set(ws.dataset.gallery("train").ids)
    assert model.bank == sorted(c for i, c in ws.dataset.captions.items() if i in train) and meta["zero_shot"]
    views = ws.images.tensors(np.array([ws.images.row["img0"]]), ("pooled",))
    text = "make it red"
    with torch.no_grad():
        q = model(views, model.query_texts(views, [text], ws.text_encoder))[0]
        r = F.normalize(views["pooled"], dim=-1)  # a CLIP pair: the maps are the identity
        bank = F.normalize(torch.from_numpy(ws.text_encoder.encode_texts(model.bank)["pooled"]), dim=-1)
        caption = model.bank[int((r @ bank.T).argmax())]
        edited = edit_caption(caption, text, word_similarity(ws.text_encoder, [caption, text]), 0.4)
        t = F.normalize(torch.from_numpy(ws.text_encoder.encode_texts([edited, caption])["pooled"]), dim=-1)
        torch.testing.assert_close(q, F.normalize(r[0] + t[0] - t[1], dim=-1), atol=1e-5, rtol=0)


def test_oti_optimises_a_pseudo_word_per_query_in_bounded_steps(tmp_path, clip):
    ws, model, result, _ = _assembled(tmp_path, clip, "zs_oti", {"steps": 15, "lr": 0.1})
    assert model.steps == 15 and not result.history and sum(p.numel() for p in model.parameters()) == 0
    views = ws.images.tensors(ws.images.rows(["img0", "img1"]), ("pooled",))
    te = ws.text_encoder
    with torch.inference_mode():  # as the server calls it
        tokens = model.pseudo_words(views, te)
    start = te.word_embeddings.weight.mean(0).expand(2, -1)
    r = model.embed_image(views)
    with torch.no_grad():
        before = (model.project_text(te.pooled_with_grad(["a photo of $"] * 2, start)) * r).sum(-1)
        after = (model.project_text(te.pooled_with_grad(["a photo of $"] * 2, tokens)) * r).sum(-1)
    assert bool((after > before + 0.05).all())  # each query's own word: closer to its own reference
    with pytest.raises(CirlabError, match="steps must be within"):
        _assembled(tmp_path, clip, "zs_oti", {"steps": 0})


@pytest.mark.parametrize("method", ["pic2word", "lincir"])
def test_a_mapped_pseudo_word_trains_only_its_mapping_and_round_trips(tmp_path, clip, method, capsys):
    """Gradients reach the mapping only; the model round-trips through a checkpoint, serves from an index, and is
    refused without a checkpoint."""
    from cirlab.api import Pipeline
    from cirlab.cli import main
    from cirlab.eval.audit import blank_queries

    ws, model, result, meta = _assembled(tmp_path, clip, method, train={"epochs": 3, "batch_size": 4})
    assert len(result.history) == 3 and meta["zero_shot"] and meta["train"]["history"]
    data = ws.unlabelled("train", model)
    task = model.task(data.image_views, data.captions, data.caption_pooled)
    assert len(task.inputs) == len(task.prompts) >= 2 and all("$" in p for p in task.prompts)
    tokens = model.mapping(task.inputs[:2])
    loss = model.project_text(ws.text_encoder.pooled_with_grad(task.prompts[:2], tokens)).sum()
    loss.backward()
    assert all(p.grad is not None for p in model.mapping.parameters())
    assert all(p.grad is None for p in ws.text_encoder.model.parameters())
    assert [n for n, _ in model.named_parameters()] == [n for n, _ in model.mapping.named_parameters(prefix="mapping")]
    ev = ws.evaluate(model, "test", audit=True)  # the text-only query is written with the blank reference
    assert len(ev.audit.per_query()) == len(ev.triplets) and ev.audit.summary()["composed R@1"] == ev.recall[1]
    blank = blank_queries(model, ws.queries(model, "test"), ws.triplets["test"], ws.text_encoder)
    first = ws.triplets["test"][0]
    with torch.no_grad():
        written = model.query_texts(blank.images.tensors(np.array([0])), [first.text], ws.text_encoder)["pooled"]
    np.testing.assert_allclose(blank.texts.views["pooled"][blank.texts.row[blank.key(first.reference, first.text)[1]]],
                               written[0], atol=1e-5)
    pipe = Pipeline.load(tmp_path / f"{method}.pt", tmp_path / "cache")
    reference = ws.dataset.root / "images" / "img0.png"
    q = pipe.compose(reference, "make it red")
    with torch.no_grad():
        views = ws.images.tensors(np.array([ws.images.row["img0"]]), ("pooled",))
        np.testing.assert_allclose(q, model(views, model.query_texts(views, ["make it red"], ws.text_encoder))[0],
                                   atol=1e-5)
    assert main(["index", "build", str(ws.dataset.root / "images"), "--out", str(tmp_path / "ix"), "--quiet",
                 "--model", str(tmp_path / f"{method}.pt"), "--cache", str(tmp_path / "cache")]) == 0
    capsys.readouterr()
    assert main(["search", "--index", str(tmp_path / "ix"), "--image", str(reference), "--text", "make it red",
                 "-k", "3", "--json", "--model", str(tmp_path / f"{method}.pt"), "--cache", str(tmp_path / "cache")]) == 0
    hits = json.loads(capsys.readouterr().out)["results"]
    assert len(hits) == 3 and hits[0]["id"] != "img0"
    with pytest.raises(CirlabError, match="needs a checkpoint"):
        Pipeline.zero_shot(method, clip, clip, tmp_path / "cache")


def test_pic2word_reads_no_triplet(tmp_path, clip):
    """Trained on the full data set, or on a copy with every triplet file removed (opened as its zero-shot view), the
    mapping is the same, bit for bit: it read the training images and nothing of a triplet."""
    from cirlab.data.triplets import Dataset
    from cirlab.encoders.cache import FeatureCache
    from cirlab.experiment.workspace import Workspace, train_method

    folder = make_dataset(tmp_path / "tiny", n=12)
    bare = tmp_path / "bare"
    shutil.copytree(folder, bare)
    for name in json.loads((folder / "dataset.json").read_text())["splits"].values():
        (bare / name).unlink()
    weights = []
    for data in (Dataset(folder), Dataset(bare).zero_shot()):
        ws = Workspace.open(data, FeatureCache(tmp_path / "cache"), clip, clip, progress=False)
        model, _, _ = train_method(ws, "pic2word", {"train": {"epochs": 2, "batch_size": 4}}, progress=False)
        weights.append(model.mapping.state_dict())
    for k in weights[0]:
        assert torch.equal(weights[0][k], weights[1][k]), k


def test_the_product_of_similarities_re_scores_the_first_stage_candidates(tmp_path, clip):
    """``zs_product``: the first stage is ``zs_sum``'s; its candidates are re-scored by ``max(r.g, 0) max(t.g, 0)``,
    the same in a folder search, an index search through the API and the evaluation; the set of the top K is the
    first stage's."""
    from cirlab.api import Pipeline
    from cirlab.eval.evaluate import query_rescoring
    from cirlab.fusion import FeatureDims, build_fusion
    from cirlab.index import build_index
    from cirlab.index.scoring import ProductScoring
    from cirlab.index.search import search

    model = build_fusion("zs_product", FeatureDims(image=2, text=2))
    r, t = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 2.0]])
    assert model({"pooled": r}, {"pooled": t})[0].tolist() == pytest.approx([2 ** -0.5, 2 ** -0.5])
    assert model.score_parts({"pooled": r}, {"pooled": t})[0].tolist() == [[1.0, 0.0], [0.0, 1.0]]
    index = build_index("exact", 2)
    g = np.array([[1, 0], [0.8, 0.6], [0.6, 0.8], [0, 1], [-0.6, 0.8]], np.float32)
    index.add(["a", "b", "c", "d", "e"], g)
    q = np.array([[2 ** -0.5, 2 ** -0.5]], np.float32)
    first = search(index, q, 3)[0]
    scored = search(index, q, 3, scoring=ProductScoring([np.eye(2, dtype=np.float32)], candidates=3))[0]
    assert {i for i, _ in scored} == {i for i, _ in first} == {"b", "c", "a"}
    assert scored == [("b", pytest.approx(0.48)), ("c", pytest.approx(0.48)), ("a", 0.0)]

    pipe = Pipeline.zero_shot("zs_product", clip, clip, tmp_path / "cache", model={"candidates": 5})
    plain = Pipeline.zero_shot("zs_sum", clip, clip, tmp_path / "cache")
    data = make_dataset(tmp_path / "tiny", n=12)
    reference = data / "images" / "img0.png"
    gallery = pipe.encode_gallery(data / "images", progress=False)
    hits = pipe.search(gallery, reference, "make it red", k=5, exclude_reference=True)
    first = plain.search(gallery, reference, "make it red", k=5, exclude_reference=True)
    assert {h.id for h in hits} == {h.id for h in first}  # only reordered
    vectors = dict(zip(gallery.ids, gallery.vectors))
    rv = vectors["img0"]  # the reference's own gallery vector: zs_product's r
    tv = pipe.compose(None, "make it red")
    by_hand = {h.id: max(float(vectors[h.id] @ rv), 0) * max(float(vectors[h.id] @ tv), 0) for h in first}
    assert {h.id: h.score for h in hits} == pytest.approx(by_hand, abs=1e-5)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)  # best first (ties as ranked)
    with pytest.raises(CirlabError, match="re-scores its candidates itself"):
        from cirlab.index.scoring import CombinedScoring
        pipe.search(gallery, reference, "make it red", scoring=CombinedScoring())
    from cirlab.encoders.cache import FeatureCache
    from cirlab.experiment.workspace import Workspace, train_method

    ws = Workspace.open(data, FeatureCache(tmp_path / "cache"), clip, clip, progress=False)
    zs_product, _, _ = train_method(ws, "zs_product", {"model": {"candidates": 4}}, progress=False)
    zs_sum, _, _ = train_method(ws, "zs_sum", progress=False)
    ev, base = ws.evaluate(zs_product, "test"), ws.evaluate(zs_sum, "test")
    scoring = query_rescoring(zs_product, ws.queries(zs_product, "test"), ev.triplets)
    assert len(scoring.parts) == len(ev.triplets) and scoring.candidates == 4
    for mine, theirs in zip(ev.ids, base.ids):
        assert set(mine) == set(theirs[:4]) and len(mine) == min(4, len(theirs))


def test_the_server_re_scores_as_the_api_does(tmp_path, clip, capsys):
    """``zs_product`` served over real HTTP: the reply's ranking and scores are the Python API's over the same index."""
    import os

    import httpx
    from conftest import start_server, stop_server

    from cirlab.api import Pipeline
    from cirlab.cli import main
    from cirlab.index import load_index

    data = make_dataset(tmp_path / "tiny", n=10)
    pair = ["--method", "zs_product", "--image-encoder", clip, "--text-encoder", clip, "--cache", str(tmp_path / "cache"),
            "--method-options", "candidates=6"]
    assert main(["index", "build", str(data / "images"), "--out", str(tmp_path / "ix"), "--quiet", *pair]) == 0
    capsys.readouterr()
    pipe = Pipeline.zero_shot("zs_product", clip, clip, tmp_path / "cache", model={"candidates": 6})
    index, _ = load_index(tmp_path / "ix")
    expected = pipe.search(index, data / "images" / "img0.png", "make it red", k=4, exclude_reference=True)
    proc, base = start_server(["--index", tmp_path / "ix", *pair], env={**os.environ, "CIRLAB_HOME": str(tmp_path)},
                              log=tmp_path / "server.log")
    try:
        r = httpx.post(base + "/search", data={"image_id": "img0", "text": "make it red", "k": "4"}, timeout=60)
    finally:
        stop_server(proc)
    assert r.status_code == 200
    got = r.json()["results"]
    assert [x["id"] for x in got] == [h.id for h in expected]
    assert [x["score"] for x in got] == pytest.approx([h.score for h in expected], abs=1e-4)


def test_pic2word_needs_no_caption_and_lincir_refuses_without_one(tmp_path, clip):
    from cirlab.encoders.cache import FeatureCache
    from cirlab.experiment.workspace import Workspace, train_method

    folder = make_dataset(tmp_path / "tiny", n=12)
    rows = [json.loads(x) for x in (folder / "images.jsonl").read_text().splitlines()]
    (folder / "images.jsonl").write_text("".join(json.dumps({k: v for k, v in r.items() if k != "caption"}) + "\n"
                                                 for r in rows))
    ws = Workspace.open(folder, FeatureCache(tmp_path / "cache"), clip, clip, progress=False)
    _, result, _ = train_method(ws, "pic2word", {"train": {"epochs": 1, "batch_size": 4}}, progress=False)
    assert len(result.history) == 1
    with pytest.raises(CirlabError, match="no captioned 'train' images"):
        train_method(ws, "lincir", progress=False)


def test_a_text_tower_without_the_pseudo_word_still_tunes(tmp_path):
    """Only a prompt with a pseudo-word needs ``$`` in the vocabulary: stage 1's whole-tower tuning of a text model
    without it runs (a regression: its forward asked for the token id whether or not a word was injected)."""
    from transformers import BertTokenizer

    from cirlab.encoders import build_text_encoder

    folder = make_tiny_clip(tmp_path / "clip")
    words = [w for w in (folder / "vocab.txt").read_text().split("\n") if w and w != "$"]
    (folder / "vocab.txt").write_text("\n".join(words) + "\n")
    BertTokenizer(str(folder / "vocab.txt")).save_pretrained(folder)
    enc = build_text_encoder(f"clip:{folder}")
    for p in enc.tunable("all").values():
        p.requires_grad_(True)
    out = enc.pooled_with_grad(["make it red", "a blue dress"])
    assert out.shape == (2, 16) and out.requires_grad
    with pytest.raises(CirlabError, match="no single token for the pseudo-word"):
        enc.pooled_with_grad(["a $ dress"], torch.zeros(1, 32))
