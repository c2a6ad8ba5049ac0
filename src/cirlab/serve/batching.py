"""Dynamic batching: work submitted from many threads is gathered for up to a window (or until a batch is full)
and run as one call on one worker thread, as inference servers batch concurrent requests.

The worker stops gathering early once every submitter waiting is already in the batch, so a lone client
pays no window; under load, the requests that arrive while a batch runs form the next one.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Callable, Sequence

from cirlab.errors import CirlabError


class _Slot:
    __slots__ = ("item", "done", "result", "error", "queued", "batch")

    def __init__(self, item) -> None:
        self.item, self.done, self.result, self.error = item, threading.Event(), None, None
        self.queued = time.perf_counter()
        self.batch = 0


class MicroBatcher:
    """``submit(item)`` blocks until ``run(items)`` has answered the batch the item went into.

    ``run`` returns one result per item: a value, or an exception that is raised in that item's submitter only.
    An exception from ``run`` itself fails the whole batch's submitters."""

    def __init__(self, run: Callable[[Sequence], list], window_s: float = 0.005, max_batch: int = 32,
                 name: str = "cirlab-batcher") -> None:
        if window_s < 0 or max_batch < 1:
            raise CirlabError(f"the batch window must be 0 or more ms and the batch at least 1 query "
                              f"(got {window_s * 1e3:g} ms, {max_batch})")
        self.run, self.window_s, self.max_batch = run, window_s, max_batch
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._waiting = 0  # submitters not yet answered
        self._count = threading.Lock()
        self._closed = False
        self._worker = threading.Thread(target=self._loop, name=name, daemon=True)
        self._worker.start()

    def submit(self, item):
        """Run ``item`` in the next batch; returns ``(result, seconds queued, batch size)``."""
        if self._closed:
            raise CirlabError("the server is shutting down; retry on another instance")
        slot = _Slot(item)
        with self._count:
            self._waiting += 1
        self._queue.put(slot)
        slot.done.wait()
        if slot.error is not None:
            raise slot.error
        return slot.result, slot.queued, slot.batch

    def close(self) -> None:
        self._closed = True
        self._queue.put(None)
        self._worker.join(timeout=10)

    def _gather(self, first: _Slot) -> list[_Slot]:
        batch = [first]
        deadline = time.perf_counter() + self.window_s
        while len(batch) < self.max_batch:
            with self._count:
                everyone_in = self._waiting <= len(batch)
            if everyone_in:
                break
            remaining = deadline - time.perf_counter()
            try:
                slot = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if slot is None:
                self._queue.put(None)
                break
            batch.append(slot)
        return batch

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = self._gather(first)
            started = time.perf_counter()
            try:
                results = self.run([s.item for s in batch])
            except Exception as e:
                results = [e] * len(batch)
            for slot, r in zip(batch, results):
                slot.queued, slot.batch = started - slot.queued, len(batch)
                if isinstance(r, Exception):
                    slot.error = r
                else:
                    slot.result = r
                with self._count:
                    self._waiting -= 1
                slot.done.set()
