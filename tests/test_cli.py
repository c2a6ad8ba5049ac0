"""The CLI as a user meets it: real subprocesses, real files, one-line errors with exit code 2."""

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import make_images


def run(*args, home, timeout=600):
    env = {**os.environ, "CIRLAB_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "cirlab.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=timeout)


@pytest.fixture
def here(monkeypatch, capsys):
    """``run`` in this process (``cirlab.cli.main``): the same parser, checks and messages without a new
    interpreter's imports; for the many one-line refusals. The end-to-end tests keep real subprocesses."""
    from cirlab.cli import main

    def call(*args, home):
        monkeypatch.setenv("CIRLAB_HOME", str(home))
        try:
            code = main(list(map(str, args)))
        except SystemExit as e:  # argparse's own refusals
            code = e.code
        out = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, out.out, out.err)
    return call


def assert_one_line_error(res, pattern):
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    lines = [x for x in res.stderr.strip().splitlines() if x.startswith("cirlab: error:")]
    assert len(lines) == 1 and pattern in lines[0], res.stderr


@pytest.fixture(scope="module")
def untrained_model(tmp_path_factory, image_encoder, text_encoder):
    """A checkpoint with the real encoders' ids (weights untrained: these tests check plumbing)."""
    from cirlab.checkpoint import save_checkpoint
    from cirlab.config import method_config
    from cirlab.fusion import FeatureDims, build_fusion

    cfg = method_config("combiner")
    torch.manual_seed(0)
    model = build_fusion("combiner", FeatureDims.of(image_encoder, text_encoder), **cfg["model"]).eval()
    return save_checkpoint(tmp_path_factory.mktemp("m") / "model.pt", model, cfg["model"], cfg["train"],
                           image_encoder, text_encoder)


def test_help_lists_every_subcommand(tmp_path, capsys):
    from cirlab.cli import main

    res = run("--help", home=tmp_path)
    assert res.returncode == 0
    for cmd in ("demo", "data", "encode", "train", "eval", "search", "index", "methods", "bench", "serve"):
        assert cmd in res.stdout
        with pytest.raises(SystemExit) as done:  # each command's own help, in this process (the parser is the same)
            main([cmd, "--help"])
        assert done.value.code == 0 and f"usage: cirlab {cmd}" in capsys.readouterr().out


def test_search_errors_are_one_line(tmp_path, untrained_model, here):
    gallery = tmp_path / "g"
    imgs = make_images(gallery, n=3)
    assert_one_line_error(run("search", "--gallery", gallery, "--image", imgs[0], "--text", "  ", home=tmp_path),
                          "modification text is empty")
    assert_one_line_error(here("search", "--gallery", gallery, "--image", imgs[0], "--text", "x" * 5000, home=tmp_path),
                          "limit is 1000")
    assert_one_line_error(here("search", "--gallery", gallery, "--image", tmp_path / "nope.png", "--text", "red", home=tmp_path),
                          "does not exist")
    assert_one_line_error(here("search", "--gallery", gallery, "--image", imgs[0], "--text", "red", home=tmp_path / "empty"),
                          "no default model yet")
    assert_one_line_error(here("search", "--gallery", tmp_path / "missing", "--image", imgs[0], "--text", "red",
                              "--model", untrained_model, home=tmp_path), "gallery folder")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff garbage")
    assert_one_line_error(here("search", "--gallery", gallery, "--image", bad, "--text", "red", "--model", untrained_model,
                              home=tmp_path), "not a readable image")
    junk = tmp_path / "old.pt"
    junk.write_bytes(b"\x80\x02 old pickle")
    assert_one_line_error(here("search", "--gallery", gallery, "--image", imgs[0], "--text", "red", "--model", junk,
                              home=tmp_path), "not a readable cirlab checkpoint")


@pytest.mark.parametrize("damage,says", [(lambda m: m.pop("image_encoder"), "lacks 'image_encoder'"),
                                         (lambda m: m.update(text_encoder="minilm"), "holds a str for 'text_encoder'"),
                                         (lambda m: m["image_encoder"].pop("id"), "lacks its 'id'"),
                                         (lambda m: m.update(method="bogus"), "method 'bogus' is not one")])
def test_a_checkpoint_with_missing_or_foreign_metadata_is_refused_alike_by_model_and_rerank(damage, says, tmp_path,
                                                                                           untrained_model, here):
    gallery = tmp_path / "g"
    imgs = make_images(gallery, n=3)
    ckpt = torch.load(untrained_model, weights_only=False)
    damage(ckpt["meta"])
    torch.save(ckpt, tmp_path / "odd.pt")
    search = ("search", "--gallery", gallery, "--image", imgs[0], "--text", "red")
    assert_one_line_error(here(*search, "--model", tmp_path / "odd.pt", home=tmp_path), says)
    assert_one_line_error(here(*search, "--model", untrained_model, "--rerank", tmp_path / "odd.pt", home=tmp_path),
                          says)


def test_rerank_refuses_an_empty_spec_and_keeps_k_below_its_candidates(tmp_path, untrained_model, here):
    gallery = tmp_path / "g"
    imgs = make_images(gallery, n=4)
    search = ("search", "--gallery", gallery, "--image", imgs[0], "--text", "red", "--model", untrained_model)
    assert_one_line_error(here(*search, "--rerank", "", home=tmp_path), "--rerank is empty")
    res = run(*search, "-k", "3", "--json", "--rerank", f"model={untrained_model},candidates=1", home=tmp_path)
    assert res.returncode == 0, res.stderr
    assert len(json.loads(res.stdout)["results"]) == 3
    assert res.stderr.count("candidates=1 is below -k 3, so it is raised to k") == 1


def test_search_skips_unreadable_gallery_files(tmp_path, untrained_model):
    gallery = tmp_path / "g"
    imgs = make_images(gallery, n=5)
    (gallery / "broken.webp").write_bytes(b"RIFF....WEBPVP8 nope")
    res = run("search", "--gallery", gallery, "--image", imgs[0], "--text", "make it blue", "-k", "3", "--json",
              "--exclude-reference", "--model", untrained_model, home=tmp_path)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert [r["rank"] for r in out["results"]] == [1, 2, 3] and out["skipped"] == 1
    assert str(imgs[0]) not in {r["path"] for r in out["results"]}
    scores = [r["score"] for r in out["results"]]
    assert scores == sorted(scores, reverse=True)
    assert "skipped 1 unreadable" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.slow
def test_an_int8_index_build_checks_parity_on_the_gallery_itself(tmp_path, untrained_model, here):
    """--encoder-precision int8 is refused in one line on a gallery whose own images lose parity in int8 (these drawn
    shapes keep about 0.98 against the 0.995 asked), before anything is encoded or written. On a CPU without VNNI the
    int8 graph itself loses parity (its int16 kernels saturate, docs/encoders.md), so it is refused there first."""
    from cirlab.hardware import machine

    gallery = tmp_path / "g"
    make_images(gallery, n=6, size=64)
    res = here("index", "build", gallery, "--out", tmp_path / "idx", "--model", untrained_model, "--runtime", "onnx",
               "--encoder-precision", "int8", "--quiet", home=tmp_path / "home")
    assert_one_line_error(res, "in int8, this gallery's first 6 images keep a cosine of only 0.98"
                          if machine().has("vnni") else "the int8 graph of efficientnet_lite0 keeps a cosine of only")
    assert not (tmp_path / "idx").exists()


@pytest.mark.slow
def test_demo_end_to_end_then_search(tmp_path):
    """make demo's job on a fresh home: data, encoding, training, recall table, report; then reuse."""
    home = tmp_path / "home"
    res = run("demo", "--data", tmp_path / "ee", "--out", tmp_path / "out", "--quiet", home=home, timeout=1500)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "| combiner |" in res.stdout and "| sum |" in res.stdout
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["combiner"]["R@10"] > results["image_only"]["R@10"] > results["text_only"]["R@10"]
    assert results["combiner"]["R@1"] > 85  # 93.2 with the colour head (73.9 on the pooled vector alone)
    page = (tmp_path / "out" / "index.html").read_text()
    assert page.count("class='q'") == 3 and "Twemoji" in page and "CC-BY 4.0" in page

    models = home / "models" / "emojiedit"
    assert "the last layer tuned by stage 1" in res.stdout
    made = {f: f.stat().st_mtime_ns for f in [*models.glob("*.pt"), *(models / "stage1-text").glob("*.pt")]}
    assert len(made) == 7  # four methods; stage 1: text.pt, stage1.pt and its state file
    again = run("demo", "--data", tmp_path / "ee", "--out", tmp_path / "out", "--quiet", home=home)
    assert again.returncode == 0 and "encoding" not in again.stderr and "training" not in again.stderr
    assert json.loads((tmp_path / "out" / "results.json").read_text()) == results
    assert made == {f: f.stat().st_mtime_ns for f in made}  # every model reused, stage 1's too

    gallery = tmp_path / "ee" / "images"
    ref = next(gallery.glob("1f385*.png"))  # Santa Claus
    found = run("search", "--gallery", gallery, "--image", ref, "--text", "give it a dark skin tone", "-k", "5",
                "--exclude-reference", "--json", home=home)
    assert found.returncode == 0, found.stderr
    assert len(json.loads(found.stdout)["results"]) == 5


@pytest.mark.slow  # 40 s of CLI training runs: in make test, not make test-fast
def test_train_options_metrics_log_plot_and_resume(tmp_path):
    from PIL import Image

    from conftest import make_dataset

    ds = make_dataset(tmp_path / "tiny", n=12)
    home = tmp_path / "home"
    args = ("train", "--data", ds, "--method", "sum", "--batch-size", "4", "--lr", "0.001", "--optimizer", "adam",
            "--schedule", "step", "--warmup-epochs", "0.5", "--grad-clip", "1.0", "--monitor", "R@10")
    first = run(*args, "--epochs", "2", "--out", tmp_path / "run", "--log", tmp_path / "run" / "log.csv", home=home)
    assert first.returncode == 0, first.stderr
    assert "saved" in first.stdout and (tmp_path / "run" / "model.pt").is_file()
    rows = (tmp_path / "run" / "log.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,loss,lr,seconds,val_R@1") and len(rows) == 3
    with Image.open(tmp_path / "run" / "log.png") as im:
        assert im.size[0] > 400
    more = run(*args, "--epochs", "3", "--out", tmp_path / "run", "--log", tmp_path / "run" / "log.csv", "--resume",
               home=home)
    assert more.returncode == 0, more.stderr
    assert "resumed after epoch 2" in more.stdout
    assert len((tmp_path / "run" / "log.csv").read_text().splitlines()) == 4  # the old epochs kept, one added
    bad = run(*args, "--schedule", "linear", "--out", tmp_path / "x", home=home)
    assert bad.returncode == 2 and "invalid choice: 'linear'" in bad.stderr and "Traceback" not in bad.stderr
    assert_one_line_error(run(*args, "--monitor", "mAP", "--out", tmp_path / "x", home=home), "monitor 'mAP'")
    assert_one_line_error(run(*args, "--lr", "0.5", "--out", tmp_path / "run", "--resume", home=home),
                          "other settings (lr)")


@pytest.mark.slow
def test_train_both_stages_with_pseudo_triplets(tmp_path):
    """``--stage both``: stage 1 tunes the image encoder's last block, stage 2 trains on the tuned
    encoder with pseudo triplets; the model then answers a search from the CLI."""
    from conftest import make_dataset

    ds = make_dataset(tmp_path / "tiny", n=12)
    home = tmp_path / "home"
    (tmp_path / "s1.json").write_text(json.dumps({"train": {"epochs": 1, "batch_size": 4}}))
    res = run("train", "--stage", "both", "--data", ds, "--method", "sum", "--tune", "image", "--image-blocks", "1",
              "--stage1-config", tmp_path / "s1.json", "--epochs", "2", "--batch-size", "4", "--augment",
              "--eps-l", "-1", "--eps-u", "1", "--alpha", "-1", "--pseudo-every", "1", "--out", tmp_path / "run",
              "--quiet", home=home)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"--image-encoder tuned:{tmp_path / 'run' / 'stage1' / 'image.pt'} --text-encoder minilm" in res.stdout
    # train split: 6 images, 30 triplets; every other training image is a substitute (window [-1, 1], s_max 4)
    # and every pseudo triplet passes alpha -1: 30 * (4 + 4) minus the substitutes equal to the other image
    line = next(x for x in res.stdout.splitlines() if x.startswith("pseudo triplets:"))
    made, kept = int(line.split()[2]), int(line.split()[4])
    assert 0 < kept == made <= 30 * 8 and "epochs [2]" in line
    meta = torch.load(tmp_path / "run" / "model.pt", weights_only=True)["meta"]
    assert meta["image_encoder"]["spec"].startswith("tuned:") and "+ft1:" in meta["image_encoder"]["id"]
    assert meta["pseudo"]["kept"] == kept
    found = run("search", "--gallery", ds / "images", "--image", ds / "images" / "img0.png", "--text",
                "make it look like shape 1", "-k", "3", "--model", tmp_path / "run" / "model.pt", "--json", home=home)
    assert found.returncode == 0, found.stderr
    assert len(json.loads(found.stdout)["results"]) == 3
    bad = run("train", "--data", ds, "--augment", "--out", tmp_path / "x", home=home)
    assert_one_line_error(bad, "--augment draws pseudo triplets with a stage-1 model")
