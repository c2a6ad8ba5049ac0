"""Data-parallel training on the CPU with 2 gloo processes (training/parallel.py): a step on two ranks is the step on
the whole batch in one process; `cirlab train --nproc 2` trains, writes once, resumes and its checkpoint serves; a
rank that dies ends the run in one line."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import make_dataset

STEP = Path(__file__).parent / "_parallel_step.py"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def torchrun(*args, nproc=2):
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *map(str, args)]


@pytest.mark.slow
@pytest.mark.parametrize("method,triplets,batch", [("sum", 21, 21), ("combiner", 21, 10)])
def test_a_step_on_two_ranks_is_the_step_on_the_whole_batch_in_one_process(method, triplets, batch, tmp_path):
    """One step with uneven shares (11 and 10 queries), and two steps; reference and hard negatives and the triplet
    term on."""
    one, two = tmp_path / "one.pt", tmp_path / "two.pt"
    for cmd in ([sys.executable, STEP, one, method, triplets, batch], torchrun(STEP, two, method, triplets, batch)):
        r = subprocess.run(list(map(str, cmd)), env=ENV, capture_output=True, text=True, timeout=240)
        assert r.returncode == 0, r.stderr[-2000:]
    a, b = torch.load(one), torch.load(two)
    steps = -(-triplets // batch) - (triplets % batch == 1)
    assert len(a["losses"]) == len(b["losses"]) == len(a["grads"]) == len(b["grads"]) == steps
    np.testing.assert_allclose(a["losses"], b["losses"], rtol=1e-5)
    near_zero = {}  # where a gradient was within float noise of 0 at some step
    for step, (ga, gb) in enumerate(zip(a["grads"], b["grads"])):
        assert ga.keys() == gb.keys() == a["weights"].keys()
        for name, g in ga.items():  # the all-reduced gradient is the whole batch's, to float noise of its scale
            noise = 1e-4 * float(g.abs().max()) + 1e-12
            np.testing.assert_allclose(gb[name].numpy(), g.numpy(), rtol=0, atol=noise, err_msg=f"step {step} {name}")
            small = (g.abs() <= noise) | (gb[name].abs() <= noise)
            near_zero[name] = near_zero.get(name, torch.zeros_like(small)) | small
    # Adam divides a gradient by its own size: where it is float noise around 0 (here 1e-9 against a scale of 0.04),
    # the step is anything up to +-lr, and that element alone may differ, by at most 2 lr a step. Elsewhere 1e-4.
    bound = 2 * a["lr"] * steps
    for name, weight in a["weights"].items():
        diff = (weight - b["weights"][name]).abs()
        loose = diff > 1e-4
        assert not (loose & ~near_zero[name]).any(), f"{name}: differs where its gradient was not near 0"
        assert float(diff.max()) <= bound, f"{name}: differs by {float(diff.max())}, over Adam's bound {bound}"


def cirlab(*args, **kw):
    return subprocess.run([sys.executable, "-m", "cirlab.cli", *map(str, args)], env=ENV, capture_output=True,
                          text=True, timeout=300, **kw)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("parallel")
    return make_dataset(root / "tiny", n=16), root / "cache"


@pytest.mark.slow
def test_two_ranks_train_write_once_resume_and_the_checkpoint_serves(tiny, tmp_path):
    from cirlab.api import Pipeline

    ds, cache = tiny
    out = tmp_path / "run"
    train = ["train", "--method", "combiner", "--data", ds, "--out", out, "--batch-size", "8", "--quiet",
             "--cache", cache, "--nproc", "2"]
    r = cirlab(*train, "--epochs", "2")
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.count("trained combiner on 56 triplets") == 1  # rank 0 reports, rank 1 is quiet
    assert sorted(p.name for p in out.iterdir()) == ["model-metrics.jsonl", "model-metrics.png", "model-ranks.log",
                                                     "model-state.pt", "model.pt"]
    assert len((out / "model-metrics.jsonl").read_text().splitlines()) == 2
    r = cirlab(*train, "--epochs", "3", "--resume")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resumed after epoch 2" in r.stdout
    assert len((out / "model-metrics.jsonl").read_text().splitlines()) == 3
    pipe = Pipeline.load(out / "model.pt", cache)
    gallery = pipe.encode_gallery(ds / "images", progress=False)
    hits = pipe.search(gallery, ds / "images" / "img0.png", "make it look like shape 3", k=5,
                       exclude_reference=True)
    assert len(hits) == 5 and "img0" not in [h.id for h in hits]
    assert np.all(np.diff([h.score for h in hits]) <= 1e-6)


def rank_process(rank: int, parent: int) -> int | None:
    """The pid of the worker with ``RANK=rank`` among ``parent``'s descendants, if it has started."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if f"RANK={rank}".encode() in environ and b"cirlab.cli" in cmdline and \
                f"CIRLAB_TEST_PARENT={parent}".encode() in environ:
            return int(proc.name)
    return None


def stop_a_rank(tiny, out, sig, *extra) -> tuple[subprocess.Popen, str, float]:
    """A long two-rank run whose rank 1 gets ``sig`` once training has begun: the launcher, its stderr, and the
    seconds from the signal to the launcher's end."""
    ds, cache = tiny
    proc = subprocess.Popen([sys.executable, "-m", "cirlab.cli", "train", "--method", "combiner", "--data", ds,
                             "--out", out, "--batch-size", "8", "--epochs", "400", "--quiet", "--cache", cache,
                             "--nproc", "2", *extra], env={**ENV, "CIRLAB_TEST_PARENT": str(os.getpid())},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    victim = None
    try:
        deadline = time.monotonic() + 120
        while not (out / "model-metrics.jsonl").is_file():  # training has begun on both ranks
            assert proc.poll() is None and time.monotonic() < deadline, "the run never began"
            time.sleep(0.5)
        victim = rank_process(1, os.getpid())
        assert victim is not None
        os.kill(victim, sig)
        start = time.monotonic()
        _, stderr = proc.communicate(timeout=90)  # not a hang
        return proc, stderr, time.monotonic() - start
    finally:
        if proc.poll() is None:
            proc.kill()
        if victim is not None and sig == signal.SIGSTOP:
            try:
                os.kill(victim, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.mark.slow
def test_a_rank_that_dies_ends_the_run_in_one_line(tiny, tmp_path):
    proc, stderr, _ = stop_a_rank(tiny, tmp_path / "run", signal.SIGKILL)
    assert proc.returncode == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr[-2000:]
    assert lines[0].startswith("cirlab: error: data-parallel training stopped: rank 1 of 2 ended (exit code -9, "
                               "SIGKILL)") and "model-ranks.log" in lines[0]


@pytest.mark.slow
def test_a_stopped_rank_ends_the_run_in_one_line_naming_it(tiny, tmp_path):
    """SIGSTOP, as a stuck GPU or a swapped-out process looks: the watchdog finds rank 1's heartbeat silent for
    --dist-timeout seconds and ends every process of the run (the stopped one included)."""
    proc, stderr, seconds = stop_a_rank(tiny, tmp_path / "run", signal.SIGSTOP, "--dist-timeout", "8")
    assert proc.returncode == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr[-2000:]
    assert lines[0].startswith("cirlab: error: data-parallel training stopped: rank 1 of 2 did not answer for 8 s")
    assert 8 - 1.5 <= seconds < 40, seconds  # the last beat came up to a second before the signal
    assert rank_process(0, os.getpid()) is None and rank_process(1, os.getpid()) is None  # nothing left behind


def test_what_does_not_run_data_parallel_is_refused_in_one_line(tiny, tmp_path, capsys):
    from cirlab.cli import main

    ds, cache = tiny
    for extra, says in ((["--stage", "1"], "stage 1 does not split its batches yet"),
                        (["--method", "zs_sum"], "zero-shot method")):
        code = main(["train", "--data", str(ds), "--out", str(tmp_path / "x"), "--cache", str(cache), "--nproc", "2",
                     *extra])
        err = capsys.readouterr().err
        assert code == 2 and says in err and len(err.strip().splitlines()) == 1, err
