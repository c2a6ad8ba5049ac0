"""Data-parallel training: the ranks of one run, started by ``torchrun`` (several machines through its rendezvous)
or by ``cirlab train --nproc N`` (one machine), on ``torch.distributed`` (gloo on the CPU, NCCL on GPUs).

Every rank draws the same shuffled order, so every rank knows every global batch. Each computes the forward pass of
its contiguous share of the batch (:func:`shard`); the loss's columns (targets and extra negatives) are gathered from
all ranks with their gradients (:func:`gather`), so each query is scored against the whole batch's columns, as in one
process. Each rank's loss is weighted by its share of the batch and DistributedDataParallel averages the gradients:
one step on N ranks is one step on the whole batch in one process (``tests/test_parallel.py``). What is computed
once is computed on rank 0 and sent to the others (:func:`share`): the hard-negative snapshot and the validation
recall. Only rank 0 writes checkpoints, logs and training states.
"""

from __future__ import annotations

import os
import signal
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from cirlab.errors import CirlabError


@dataclass(frozen=True)
class Ranks:
    """This process's place in the run: ``rank`` of ``world`` (0 of 1 outside a data-parallel run)."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        """Rank 0: the one that writes."""
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        return self.world > 1


def ranks() -> Ranks:
    """The current run's ranks (0 of 1 where no process group is up)."""
    if dist.is_available() and dist.is_initialized():
        return Ranks(dist.get_rank(), dist.get_world_size())
    return Ranks()


def launched() -> bool:
    """Whether this process was started as one rank of several (``torchrun`` sets ``WORLD_SIZE``)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


DIST_TIMEOUT = 300.0  # seconds a rank waits for the others in a collective (--dist-timeout), and the watchdog's limit
_HEARTBEAT = "CIRLAB_HEARTBEAT_DIR"  # set by run_ranks for its ranks: where each rank's heartbeat file lives
_BEAT_S = 1.0


def join(device: torch.device, timeout: float = DIST_TIMEOUT) -> Ranks:
    """Join the run ``torchrun`` started this process in (its ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``...): gloo on
    the CPU, NCCL on CUDA, each rank on its ``LOCAL_RANK``'s GPU. Outside such a run: rank 0 of 1. A collective that
    waits over ``timeout`` seconds for a rank fails, so a stopped rank ends the run instead of hanging it; under
    :func:`run_ranks` the rank also beats a heartbeat that the launcher's watchdog reads."""
    if not launched() or (dist.is_available() and dist.is_initialized()):
        return ranks()
    if not dist.is_available():
        raise CirlabError("this PyTorch build has no torch.distributed: train in one process (no --nproc)")
    if not timeout > 0:
        raise CirlabError(f"--dist-timeout {timeout}: give the seconds a rank may wait for the others, over 0")
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, timeout=timedelta(seconds=timeout))
    if os.environ.get(_HEARTBEAT):
        _beat(Path(os.environ[_HEARTBEAT]) / f"rank-{dist.get_rank()}")
    return ranks()


def _beat(path: Path) -> None:
    """Write this rank's pid to ``path``, then touch it every second from a daemon thread: a rank that is stopped
    (SIGSTOP), swapped out or hung with the interpreter held stops beating. The launcher kills the pid it reads."""
    import threading

    path.write_text(str(os.getpid()))

    def beat() -> None:
        while True:
            try:
                path.touch()
            except OSError:
                return  # the launcher is gone and its folder with it
            time.sleep(_BEAT_S)

    threading.Thread(target=beat, name="cirlab-heartbeat", daemon=True).start()


def leave() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def shard(rows: np.ndarray, r: Ranks) -> np.ndarray:
    """This rank's contiguous share of a global batch (the shares, in rank order, are the batch)."""
    return np.array_split(rows, r.world)[r.rank] if r.parallel else rows


def shard_start(n: int, r: Ranks) -> int:
    """Where this rank's share of ``n`` rows starts in the batch."""
    return sum(len(p) for p in np.array_split(np.arange(n), r.world)[:r.rank]) if r.parallel else 0


def gather(t: torch.Tensor, r: Ranks) -> torch.Tensor:
    """Every rank's rows of ``t``, concatenated in rank order, with gradients flowing back to the rank that made
    them (shares may differ in length by a row: padded for the collective, then cut)."""
    if not r.parallel:
        return t
    import warnings

    from torch.distributed.nn.functional import all_gather  # gradients flow back (gloo: through all-to-all)

    sizes = torch.zeros(r.world, dtype=torch.long, device=t.device)
    sizes[r.rank] = len(t)
    dist.all_reduce(sizes)
    most = int(sizes.max())
    padded = torch.cat([t, t.new_zeros((most - len(t), *t.shape[1:]))]) if len(t) < most else t
    with warnings.catch_warnings():  # its successor, _functional_collectives, is private API
        warnings.simplefilter("ignore", FutureWarning)
        parts = all_gather(padded)
    return torch.cat([p[:int(n)] for p, n in zip(parts, sizes)])


def union_rows(rows: np.ndarray, r: Ranks) -> np.ndarray:
    """The sorted union of every rank's ``rows`` (no gradient: indices)."""
    if not r.parallel:
        return np.unique(rows)
    everyone: list = [None] * r.world
    dist.all_gather_object(everyone, np.asarray(rows).tolist())
    return np.unique(np.array([x for part in everyone for x in part], np.int64))


def share(obj, r: Ranks):
    """Rank 0's ``obj``, on every rank (the others pass anything, e.g. None)."""
    if not r.parallel:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def share_tensor(t: torch.Tensor, r: Ranks) -> torch.Tensor:
    """Rank 0's tensor on every rank; the others pass one of the same shape and dtype to receive it in."""
    if r.parallel:
        dist.broadcast(t, src=0)
    return t


def summed(value: torch.Tensor, r: Ranks) -> torch.Tensor:
    """The sum over ranks of a (detached) tensor."""
    if r.parallel:
        value = value.clone()
        dist.all_reduce(value)
    return value


@contextmanager
def main_first(r: Ranks):
    """Rank 0 runs the block first (it encodes into the feature cache), the others after it (they read the cache)."""
    if r.parallel and not r.main:
        dist.barrier()
    yield
    if r.parallel and r.main:
        dist.barrier()


class LossModule(torch.nn.Module):
    """A module whose forward is a batch's loss, so that DistributedDataParallel sees every parameter the loss uses
    (the fusion's forward and its gallery side alike)."""

    def __init__(self, module: torch.nn.Module, batch_loss) -> None:
        super().__init__()
        self.module = module
        self.batch_loss = batch_loss

    def forward(self, rows: np.ndarray) -> torch.Tensor:
        return self.batch_loss(rows)


def data_parallel(module: torch.nn.Module, batch_loss, device: torch.device):
    """``batch_loss`` through DistributedDataParallel over ``module`` (rank 0's weights sent to all first). On GPUs its
    BatchNorm layers become SyncBatchNorm; on the CPU each rank normalises by its own share's statistics (TIRG's MLPs),
    and dropout masks are drawn per rank: there a step equals the one-process step in expectation, not exactly."""
    from torch.nn.parallel import DistributedDataParallel

    if device.type == "cuda":  # batch statistics over the whole batch (SyncBatchNorm runs on GPUs only)
        torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)
    wrapped = DistributedDataParallel(LossModule(module, batch_loss),
                                      device_ids=[device] if device.type == "cuda" else None,
                                      find_unused_parameters=True)
    return wrapped


def without_nproc(argv: list[str]) -> list[str]:
    """A command line less its ``--nproc N`` (or ``--nproc=N``)."""
    out, skip = [], False
    for x in argv:
        if skip:
            skip = False
        elif x == "--nproc":
            skip = True
        elif not x.startswith("--nproc="):
            out.append(x)
    return out


def run_ranks(nproc: int, argv: list[str], log: Path, timeout: float = DIST_TIMEOUT) -> int:
    """``cirlab <argv>`` as ``nproc`` ranks on this machine, started by ``torchrun --standalone``: rank 0's output
    passes through, every rank's stderr goes to ``log``. A rank that fails ends the run (torchrun stops the others),
    and so does one whose heartbeat is silent for ``timeout`` seconds (stopped, swapped out, hung: the watchdog
    kills every process of the run); either is then one line naming the rank, and the log."""
    import subprocess
    import sys
    import tempfile

    if nproc < 1:
        raise CirlabError(f"--nproc {nproc}: give the number of processes (ranks) to train with, 1 or more")
    if not timeout > 0:
        raise CirlabError(f"--dist-timeout {timeout}: give the seconds a rank may wait for the others, over 0")
    threads = max(1, (os.cpu_count() or 1) // nproc)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "cirlab.cli", *argv]
    log.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="cirlab-ranks-") as beats, open(log, "w") as err:
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(threads)), _HEARTBEAT: beats}
        proc = subprocess.Popen(cmd, env=env, stderr=err, start_new_session=True)  # its own group: killed whole
        try:
            silent = _watch(proc, Path(beats), nproc, timeout)
        finally:
            if proc.poll() is None:  # a stopped rank takes no SIGTERM; SIGKILL ends it all the same
                _kill_ranks(Path(beats))  # torchrun puts each rank in a process group of its own
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    if silent is not None:
        raise CirlabError(f"data-parallel training stopped: rank {silent} of {nproc} did not answer for "
                          f"{timeout:g} s (stopped, swapped out or hung; --dist-timeout sets the limit); every rank "
                          f"was stopped; every rank's output: {log}")
    if proc.returncode == 0:
        return 0
    raise CirlabError(_failure(log.read_text(errors="replace"), nproc, proc.returncode, log))


def _watch(proc, beats: Path, nproc: int, timeout: float) -> int | None:
    """Wait for the run; the first rank whose heartbeat has been silent for ``timeout`` seconds, if one is."""
    while proc.poll() is None:
        now = time.time()
        for rank in range(nproc):
            try:
                if now - (beats / f"rank-{rank}").stat().st_mtime > timeout:
                    return rank
            except FileNotFoundError:
                continue  # not joined yet: a rank that never joins fails torchrun's rendezvous instead
        time.sleep(min(1.0, timeout / 4))
    return None


def _kill_ranks(beats: Path) -> None:
    """SIGKILL every rank that wrote its pid into ``beats``."""
    for path in beats.glob("rank-*"):
        try:
            os.kill(int(path.read_text()), signal.SIGKILL)
        except (OSError, ValueError):
            continue  # gone already, or its pid not yet written


def _failure(text: str, nproc: int, rc: int, log: Path) -> str:
    """The one line for a run torchrun ended with a failed rank: which rank, how it ended, its own error."""
    import re

    own = [line.split("cirlab: error: ", 1)[1] for line in text.splitlines() if "cirlab: error: " in line]
    failed = re.search(r"rank\s*:\s*(\d+)", text)
    code = re.search(r"exitcode\s*:\s*(-?\d+)", text)
    who = f"rank {failed.group(1)} of {nproc}" if failed else f"one of the {nproc} ranks"
    how = f"exit code {code.group(1)}" if code else f"torchrun exit code {rc}"
    if code and int(code.group(1)) < 0:
        how += f", {signal.Signals(-int(code.group(1))).name}"
    why = f": {own[0]}" if own else ""
    return (f"data-parallel training stopped: {who} ended ({how}){why}; the others were stopped; "
            f"every rank's output: {log}")
