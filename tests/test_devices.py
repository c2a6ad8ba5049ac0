"""Devices, mixed precision, whole-model fine-tuning and hub names (issue 14).

Everything here runs on the CPU; the tests marked ``cuda`` run where torch sees a GPU and are skipped, with
that reason, where it does not. Mixed precision is also exercised on the CPU (torch's CPU autocast in bf16 and
fp16 with a gradient scaler), so the autocast and scaler code runs in every CI."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import make_dataset, make_images, make_tiny_clip

from cirlab.devices import Placement, available, loader_workers, resolve_device, resolve_precision
from cirlab.errors import CirlabError

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)")


def cli(*args, env=None, timeout=600):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "cirlab.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=timeout)


def one_line_error(res, *patterns):
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    lines = [x for x in res.stderr.strip().splitlines() if x.startswith("cirlab: error:")]
    assert len(lines) == 1 and all(p in lines[0] for p in patterns), res.stderr
    return lines[0]


def train_tiny(root, monkeypatch, device=None, precision=None, epochs=3):
    """``sum`` on a tiny data set, stage 2, through the workspace (what ``cirlab train`` runs); the device and
    precision come from the environment, the defaults Placement.resolve reads."""
    from cirlab.encoders.cache import FeatureCache
    from cirlab.experiment.workspace import Workspace, train_method

    for name, value in (("CIRLAB_DEVICE", device), ("CIRLAB_PRECISION", precision)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    ds = root / "tiny"
    if not ds.exists():
        make_dataset(ds, n=16)
    ws = Workspace.open(ds, FeatureCache(root / "cache"), progress=False)
    out = root / f"sum-{device}-{precision}.pt"
    train_method(ws, "sum", {"train": {"epochs": epochs, "batch_size": 8}}, out=out, progress=False)
    return ds, out


def test_devices_resolve_and_refuse_in_one_line(monkeypatch):
    monkeypatch.delenv("CIRLAB_DEVICE", raising=False)
    auto = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu") and "cpu" in available()
    assert resolve_device(None) == auto and Placement.resolve().device == auto
    monkeypatch.setenv("CIRLAB_DEVICE", "cpu")  # the defaults are read in Placement.resolve, and only there
    assert resolve_device(None) == auto and Placement.resolve().device == torch.device("cpu")
    monkeypatch.setenv("CIRLAB_PRECISION", "bf16")
    monkeypatch.setenv("CIRLAB_RUNTIME", "torch")
    monkeypatch.setenv("CIRLAB_ENCODER_PRECISION", "bf16")
    assert Placement.resolve() == Placement(torch.device("cpu"), "torch", "bf16", "bf16")
    assert Placement.resolve(precision="fp32").dtype is None and Placement.resolve().dtype is torch.bfloat16
    with pytest.raises(CirlabError, match="unknown precision"):
        Placement.resolve(precision="fp8")
    for name in ("CIRLAB_DEVICE", "CIRLAB_PRECISION", "CIRLAB_RUNTIME"):
        monkeypatch.delenv(name)
    for bad in ("tpu", "cuda:x", "cpu:1", "gpu"):
        with pytest.raises(CirlabError, match="unknown device"):
            resolve_device(bad)
    with pytest.raises(CirlabError, match="not available"):
        resolve_device(f"cuda:{torch.cuda.device_count() + 3}")
    assert resolve_precision("auto", torch.device("cpu")) is None  # fp32 on the CPU: what ran before devices
    assert resolve_precision("bf16", torch.device("cpu")) is torch.bfloat16
    with pytest.raises(CirlabError, match="unknown precision"):
        resolve_precision("fp8", torch.device("cpu"))
    from cirlab.devices import resolve_runtime

    assert resolve_runtime("auto", torch.device("cuda")) == "torch"  # the exported runtimes run on the CPU
    with pytest.raises(CirlabError, match="runs on the CPU here"):
        resolve_runtime("onnx", torch.device("cuda"))
    monkeypatch.setenv("CIRLAB_WORKERS", "x")
    with pytest.raises(CirlabError, match="CIRLAB_WORKERS"):
        loader_workers()
    monkeypatch.delenv("CIRLAB_WORKERS")
    assert loader_workers(torch.device("cpu")) == 0


def test_every_command_that_runs_a_model_takes_a_device():
    from cirlab.cli import build_parser

    parser = build_parser()
    commands = [["encode", "g"], ["train", "--data", "d", "--out", "o"], ["eval", "--data", "d"],
                ["bench", "--data", "d"], ["index", "build", "g", "--out", "o"], ["index", "add", "i", "p"],
                ["search", "--gallery", "g", "--text", "t"], ["serve", "--index", "i"], ["demo"]]
    for args in commands:
        assert parser.parse_args(args + ["--device", "cuda:1"]).device == "cuda:1", args
    for args in (["train", "--data", "d", "--out", "o"], ["bench", "--data", "d"]):
        assert parser.parse_args(args + ["--precision", "bf16"]).precision == "bf16"


def test_the_cli_refuses_an_unknown_or_missing_device_in_one_line(tmp_path):
    make_images(tmp_path / "g", n=2)
    missing = f"cuda:{torch.cuda.device_count() + 3}"
    for args, env, words in [(("--device", "tpu"), {}, ("unknown device 'tpu'", "cpu, cuda")),
                             (("--device", missing), {}, (f"device '{missing}' is not available", "cpu")),
                             ((), {"CIRLAB_DEVICE": "gpu"}, ("unknown device 'gpu'",)),
                             (("--precision", "bf16", "--device", "mps"), {}, ("mps",))]:
        command = ("train", "--data", tmp_path / "none", "--out", tmp_path / "m.pt") if "--precision" in args else \
            ("encode", tmp_path / "g", "--cache", tmp_path / "cache")
        res = cli(*command, *args, env={"CIRLAB_HOME": str(tmp_path / "home"), **env})
        one_line_error(res, *words)
    if not torch.cuda.is_available():
        one_line_error(cli("encode", tmp_path / "g", "--device", "cuda", env={"CIRLAB_HOME": str(tmp_path)}),
                       "torch sees no CUDA GPU here", "use --device cpu")


def test_device_cpu_gives_the_same_results_as_no_device(tmp_path, monkeypatch):
    """The offline CPU default is untouched: an explicit ``cpu`` trains bit-identical weights and the pipeline
    on it gives the same vectors as the default."""
    from cirlab.api import Pipeline
    from cirlab.checkpoint import read_checkpoint

    ds, default = train_tiny(tmp_path, monkeypatch)
    _, on_cpu = train_tiny(tmp_path, monkeypatch, device="cpu")
    a, b = read_checkpoint(default)["state_dict"], read_checkpoint(on_cpu)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert read_checkpoint(on_cpu)["meta"]["train"]["device"] == "cpu"
    monkeypatch.delenv("CIRLAB_DEVICE", raising=False)
    plain = Pipeline.load(default, tmp_path / "cache")
    explicit = Pipeline.load(default, tmp_path / "cache", Placement.resolve("cpu"))
    np.testing.assert_array_equal(plain.compose(ds / "images" / "img0.png", "make it red"),
                                  explicit.compose(ds / "images" / "img0.png", "make it red"))
    np.testing.assert_array_equal(plain.encode_gallery(ds / "images", False).vectors,
                                  explicit.encode_gallery(ds / "images", False).vectors)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_a_checkpoint_trained_under_autocast_loads_and_searches_on_the_cpu(tmp_path, monkeypatch, precision):
    """Training under autocast (here the CPU's; fp16 with the gradient scaler) writes float32 CPU weights that
    differ from the fp32 run's, and the model loads and searches in fp32 on the CPU."""
    from cirlab.api import Pipeline
    from cirlab.checkpoint import read_checkpoint

    ds = make_dataset(tmp_path / "tiny", n=16)
    mixed, plain = tmp_path / f"sum-{precision}.pt", tmp_path / "sum-fp32.pt"
    for out, p in ((mixed, precision), (plain, "fp32")):  # training under autocast runs in its own process
        res = cli("train", "--method", "sum", "--data", ds, "--out", out, "--epochs", "3", "--batch-size", "8",
                  "--device", "cpu", "--precision", p, "--cache", tmp_path / "cache", "--quiet",
                  env={"CIRLAB_HOME": str(tmp_path / "home")})
        assert res.returncode == 0, res.stderr
    ckpt = read_checkpoint(mixed)
    assert ckpt["meta"]["train"]["precision"] == precision
    state = ckpt["state_dict"]
    assert all(v.device.type == "cpu" and v.dtype == torch.float32 for v in state.values() if v.is_floating_point())
    fp32 = read_checkpoint(plain)["state_dict"]
    assert any(not torch.equal(state[k], fp32[k]) for k in state)  # autocast really ran
    pipe = Pipeline.load(mixed, tmp_path / "cache", Placement.resolve("cpu"))
    gallery = pipe.encode_gallery(ds / "images", progress=False)
    hits = pipe.search(gallery, ds / "images" / "img0.png", "make it look like shape 3", k=3)
    assert len(hits) == 3 and all(np.isfinite(h.score) for h in hits)


def test_decoding_workers_give_the_images_of_one_process(tmp_path):
    from cirlab.images import UnreadableImage, decode_images

    paths = make_images(tmp_path / "g", n=5)
    broken = tmp_path / "g" / "broken.png"
    broken.write_bytes(b"not a png")
    order = [paths[0], broken, *paths[1:]]
    script = ("import sys, numpy as np; from cirlab.images import UnreadableImage, decode_images; "
              "paths = sys.argv[1:]; here = [x for b in decode_images(paths, 2) for x in b]; "
              "forked = [x for b in decode_images(paths, 2, workers=2) for x in b]; "
              "assert len(here) == len(forked) == 6; "
              "assert isinstance(here[1], UnreadableImage) and isinstance(forked[1], UnreadableImage); "
              "assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(here, forked) if a is not here[1]); "
              "print('same')")
    # the workers are forked: from a process of their own, not from the test runner with its servers and threads
    res = subprocess.run([sys.executable, "-c", script, *map(str, order)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and res.stdout.strip() == "same", res.stderr
    assert isinstance(decode_images(order, 2).__next__()[1], UnreadableImage)


def test_whole_model_tuning_moves_every_tuned_tensor_and_leaves_the_frozen_tower_alone(tmp_path):
    """Paper 004's CLIP preset as shipped (both towers whole) moves every tensor of both towers (weight decay off,
    so a change means a gradient reached it); tuning the image tower alone leaves the text tower bit-identical."""
    from cirlab.encoders import build_text_encoder
    from cirlab.encoders.base import new_encoder
    from cirlab.encoders.cache import FeatureCache
    from cirlab.encoders.tuned import load_tuned
    from cirlab.training.stage1 import run_stage1
    from cirlab.training.stage1_config import read_stage1_config

    clip = f"clip:{make_tiny_clip(tmp_path / 'clip')}"
    ds = make_dataset(tmp_path / "tiny", n=12)
    cache = FeatureCache(tmp_path / "cache")
    fresh = {side: new_encoder(side, clip) for side in ("image", "text")}
    cfg = read_stage1_config("clip_ft")
    cfg["train"].update({"epochs": 2, "batch_size": 8, "lr": 1e-3, "weight_decay": 0.0})
    run_stage1(ds, tmp_path / "both", cache, clip, clip, cfg, progress=False,
               placement=Placement.resolve("cpu"))
    for side in ("image", "text"):
        tuned = load_tuned(tmp_path / "both" / f"{side}.pt", side)
        names = fresh[side].tunable("all")
        still = [k for k in names if torch.equal(fresh[side].model.state_dict()[k], tuned.model.state_dict()[k])]
        assert len(names) > 20 and not still, f"{side}: unchanged {still}"
    frozen_text = build_text_encoder(clip)
    before = {k: v.clone() for k, v in frozen_text.model.state_dict().items()}
    run_stage1(ds, tmp_path / "image", cache, clip, clip, {**cfg, "tune": "image"}, progress=False,
               placement=Placement.resolve("cpu"))
    assert not (tmp_path / "image" / "text.pt").exists()
    after = frozen_text.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(torch.equal(v, fresh["text"].model.state_dict()[k]) for k, v in after.items())
    image = load_tuned(tmp_path / "image" / "image.pt", "image")
    assert not torch.equal(image.model.state_dict()["visual_projection.weight"],
                           fresh["image"].model.state_dict()["visual_projection.weight"])


def test_caffs_three_domain_tasks_tune_a_whole_clip(tmp_path):
    """Paper 001's tasks (caption retrieval, attribute labels, category similarity) on CLIP, both towers whole: all
    three run (none skipped) and both towers move."""
    import json

    from cirlab.encoders.base import new_encoder
    from cirlab.encoders.cache import FeatureCache
    from cirlab.encoders.tuned import load_tuned
    from cirlab.training.stage1 import run_stage1
    from cirlab.training.stage1_config import read_stage1_config

    clip = f"clip:{make_tiny_clip(tmp_path / 'clip')}"
    ds = make_dataset(tmp_path / "tiny", n=16)
    records = [json.loads(line) for line in (ds / "images.jsonl").read_text().splitlines()]
    for k, r in enumerate(records):
        r.update(category=["round", "square"][k % 2], attributes={"colour": ["red", "blue", "green"][k % 3]})
    (ds / "images.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    cfg = {**read_stage1_config("caff"), "tune": "both", "image_blocks": "all", "text_layers": "all"}
    cfg["train"] = {"epochs": 2, "batch_size": 8, "lr": 1e-3}
    res = run_stage1(ds, tmp_path / "s1", FeatureCache(tmp_path / "cache"), clip, clip, cfg, progress=False,
               placement=Placement.resolve("cpu"))
    assert set(res.tasks) == {"retrieval", "attributes", "category"} and not res.skipped
    for side, key in (("image", "vision_model.encoder.layers.0.mlp.fc1.weight"),
                      ("text", "text_model.encoder.layers.0.mlp.fc1.weight")):
        tuned = load_tuned(tmp_path / "s1" / f"{side}.pt", side).model.state_dict()[key]
        assert not torch.equal(tuned, new_encoder(side, clip).model.state_dict()[key])


@pytest.mark.slow
def test_the_clip_preset_runs_end_to_end_from_the_cli(tmp_path):
    """Paper 004's recipe on a tiny random CLIP, as a user runs it: stage 1 with the clip_ft preset, stage 2 on the
    tuned towers, an index, a search; every command on an explicit device."""
    clip = f"clip:{make_tiny_clip(tmp_path / 'clip')}"
    ds = make_dataset(tmp_path / "tiny", n=16)
    common = ("--cache", tmp_path / "cache", "--device", "cpu")
    env = {"CIRLAB_HOME": str(tmp_path / "home")}
    steps = [("train", "--stage", "1", "--stage1-config", "clip_ft", "--image-encoder", clip, "--text-encoder", clip,
              "--data", ds, "--out", tmp_path / "s1", "--epochs", "2", "--batch-size", "8", "--quiet"),
             ("train", "--stage1", tmp_path / "s1", "--method", "combiner", "--data", ds, "--out", tmp_path / "m.pt",
              "--epochs", "2", "--batch-size", "8", "--quiet"),
             ("index", "build", ds / "images", "--model", tmp_path / "m.pt", "--out", tmp_path / "index", "--quiet"),
             ("search", "--index", tmp_path / "index", "--model", tmp_path / "m.pt", "--image", ds / "images" / "img0.png",
              "--text", "make it red", "-k", "3", "--json")]
    for step in steps:
        res = cli(*step, *common, env=env)
        assert res.returncode == 0, res.stderr
    assert "tuned:" in (tmp_path / "s1" / "stage1.json").read_text()
    import json

    hits = json.loads(res.stdout)["results"]
    assert len(hits) == 3 and all(h["path"].endswith(".png") for h in hits)


def _hub_cache(root, name, folder):
    """``folder`` laid out as the Hugging Face cache holds a downloaded model ``name`` (what a past download left)."""
    repo = root / ("models--" + name.replace("/", "--"))
    snapshot = repo / "snapshots" / "0123456789abcdef0123456789abcdef01234567"
    snapshot.mkdir(parents=True)
    for f in folder.iterdir():
        (snapshot / f.name).write_bytes(f.read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(snapshot.name)
    return root


def test_hub_names_read_the_cache_offline_and_a_missing_one_is_one_line(tmp_path):
    """Nothing downloads: with HF_HUB_OFFLINE=1 a hub name in the local Hugging Face cache loads (and the spec keeps
    the name), and one that is not there is a one-line error naming the local-folder form."""
    make_images(tmp_path / "g", n=3)
    hub = _hub_cache(tmp_path / "hub", "tiny-org/tiny-clip", make_tiny_clip(tmp_path / "clip"))
    env = {"HF_HUB_CACHE": str(hub), "HF_HOME": str(tmp_path / "hf"), "CIRLAB_HOME": str(tmp_path / "home")}
    res = cli("encode", tmp_path / "g", "--image-encoder", "clip:tiny-org/tiny-clip", "--cache", tmp_path / "c",
              env=env)
    assert res.returncode == 0 and "3 images encoded" in res.stdout, res.stderr
    for spec, side in (("clip:openai/clip-vit-base-patch32", "--image-encoder"), ("hf:bert-base-uncased", "--text-encoder")):
        args = ("encode", tmp_path / "g", "--image-encoder", spec, "--cache", tmp_path / "c") if side == "--image-encoder" \
            else ("train", "--data", make_dataset(tmp_path / "ds", n=8) if not (tmp_path / "ds").exists() else tmp_path / "ds",
                  "--text-encoder", spec, "--out", tmp_path / "m.pt")
        line = one_line_error(cli(*args, env=env), "HF_HUB_OFFLINE=1", f"'{spec.split(':')[0]}:/path/to/")
        assert spec.split(":", 1)[1] in line


@cuda
def test_cuda_training_under_autocast_loads_on_the_cpu(tmp_path, monkeypatch):
    """On a GPU: stage 2 trains on CUDA in its auto precision (bf16, or fp16 with the scaler); the checkpoint holds
    CPU float32 weights, loads on the CPU, and the GPU pipeline's query vectors agree with the CPU's."""
    from cirlab.api import Pipeline
    from cirlab.checkpoint import read_checkpoint

    ds, path = train_tiny(tmp_path, monkeypatch, device="cuda")
    meta = read_checkpoint(path)["meta"]["train"]
    assert meta["device"].startswith("cuda") and meta["precision"] in ("bf16", "fp16")
    monkeypatch.delenv("CIRLAB_DEVICE")
    cpu = Pipeline.load(path, tmp_path / "cache", Placement.resolve("cpu"))
    gpu = Pipeline.load(path, tmp_path / "cache-gpu", Placement.resolve("cuda"))
    assert gpu.device.type == "cuda" and next(gpu.image_encoder.network_module.parameters()).is_cuda
    a = cpu.compose(ds / "images" / "img0.png", "make it red")
    b = gpu.compose(ds / "images" / "img0.png", "make it red")
    assert float(a @ b) > 0.99
    hits = gpu.search(gpu.encode_gallery(ds / "images", False), ds / "images" / "img0.png", "make it red", 3)
    assert len(hits) == 3


@cuda
def test_cuda_stage1_tunes_clip_on_the_gpu_and_the_files_load_on_the_cpu(tmp_path):
    from cirlab.api import Pipeline
    from cirlab.encoders.cache import FeatureCache
    from cirlab.training.stage1 import run_stage1
    from cirlab.training.stage1_config import read_stage1_config

    clip = f"clip:{make_tiny_clip(tmp_path / 'clip')}"
    ds = make_dataset(tmp_path / "tiny", n=12)
    cfg = read_stage1_config("clip_ft")
    cfg["train"].update({"epochs": 2, "batch_size": 8, "lr": 1e-3})
    res = run_stage1(ds, tmp_path / "s1", FeatureCache(tmp_path / "cache"), clip, clip,
                     {**cfg, "augment": "scale=0.2"}, progress=False,
                     placement=Placement.resolve("cuda"))
    assert res.train.device.startswith("cuda")
    pipe = Pipeline.load(tmp_path / "s1" / "stage1.pt", tmp_path / "cache", Placement.resolve("cpu"))
    assert len(pipe.search(pipe.encode_gallery(ds / "images", False), ds / "images" / "img0.png", "make it red", 3)) == 3


def test_the_cli_resolves_one_placement_and_writes_no_environment(monkeypatch):
    from cirlab.cli import build_parser, place

    names = ("CIRLAB_DEVICE", "CIRLAB_RUNTIME", "CIRLAB_PRECISION", "CIRLAB_ENCODER_PRECISION")
    for name in names:
        monkeypatch.delenv(name, raising=False)
    args = build_parser().parse_args(["train", "--data", "d", "--out", "o", "--device", "cpu", "--runtime", "torch",
                                      "--precision", "bf16"])
    place(args)
    assert args.placement == Placement(torch.device("cpu"), "torch", "bf16")
    assert not [n for n in names if n in os.environ]
    args = build_parser().parse_args(["search", "--gallery", "g", "--text", "t"])
    place(args)
    assert args.placement == Placement.resolve() and args.placement.precision == "auto"
    args = build_parser().parse_args(["search", "--gallery", "g", "--text", "t", "--runtime", "torch",
                                      "--encoder-precision", "bf16"])
    place(args)
    assert args.placement.encoding == "bf16" and args.placement.precision == "auto"
    args = build_parser().parse_args(["methods"])
    place(args)
    assert args.placement is None


def test_the_machine_line_names_what_the_cpu_has_and_lacks(monkeypatch, tmp_path):
    """``hardware.Machine``: an AVX2-only CPU says it lacks AVX-512, VNNI and AMX; a CPU with AMX has VNNI and bf16
    through it; this machine's own line lists only known flags and torch's thread count now."""
    import torch

    from cirlab import hardware
    from cirlab.hardware import Machine, machine

    old = Machine("AMD EPYC", 2, 2, ("avx2",))
    assert old.line() == "AMD EPYC, 2 cores (torch: 2 threads); AVX2; no AVX-512, VNNI, AMX; no GPU"
    assert not old.has("vnni") and not old.has("bf16") and old.has("avx2")
    new = Machine("Xeon", 2, 1, ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8"), "H100")
    assert new.line() == ("Xeon, 2 cores (torch: 1 threads); AVX2, AVX-512, AVX512-VNNI, AVX512-BF16, AMX-BF16, "
                          "AMX-INT8; GPU H100")
    assert new.has("vnni") and new.has("bf16") and new.has("amx") and Machine("x", 1, 1, ("amx_int8",)).has("vnni")
    here = machine()
    assert set(here.features) <= {f for f, _ in hardware.FEATURES} and here.threads == torch.get_num_threads()
    assert here.to_dict()["features"] == list(here.features)
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Test CPU\nflags\t\t: fpu avx avx2 avx512f avx512_vnni\n")
    real = hardware.Path
    monkeypatch.setattr(hardware, "Path", lambda p: real(cpuinfo) if p == "/proc/cpuinfo" else real(p))
    assert hardware.cpu_flags() >= {"avx2", "avx512f", "avx512_vnni"} and hardware.cpu_model() == "Test CPU"
