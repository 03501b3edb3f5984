"""The inference runner: one executor thread, a bounded queue, and the forward-record cache.

Every call into torch goes through ``Runner.run(fn, *args)``:

* it runs on ONE worker thread (so the model, resident on its device, is
  never used by two threads at once, and CUDA sees a single stream of work),
  inside ``torch.inference_mode()``;
* at most ``queue_size`` jobs wait or run at once; one more raises
  ``QueueFull`` at once (the API answers 429 with ``Retry-After``) instead of
  piling up work no client will wait for;
* ``RecordCache`` keeps forward records (activations, switches, logits) per
  (model, image) in LRU order, bounded by the bytes of the tensors they hold.
  It is touched only from the worker thread.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import torch

from .._util import ByteLRU


class QueueFull(Exception):
    """The inference queue holds ``queue_size`` jobs already."""

    def __init__(self, queue_size: int, retry_after: int):
        super().__init__(f"inference queue full ({queue_size} jobs waiting or running); retry later")
        self.queue_size = queue_size
        self.retry_after = retry_after


def nbytes(obj: Any, _seen: set | None = None) -> int:
    """Bytes held by the tensors and arrays reachable from ``obj`` (dicts, lists, dataclasses, objects)."""
    seen = _seen if _seen is not None else set()
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        return obj.element_size() * obj.nelement()
    if isinstance(obj, (bytes, bytearray)):  # encoded PNGs
        return len(obj)
    if hasattr(obj, "nbytes") and hasattr(obj, "dtype"):  # numpy arrays
        return int(obj.nbytes)
    if isinstance(obj, dict):
        return sum(nbytes(v, seen) for v in obj.values())
    if isinstance(obj, (list, tuple, set)):
        return sum(nbytes(v, seen) for v in obj)
    if hasattr(obj, "__dict__"):
        return nbytes(vars(obj), seen)
    if hasattr(obj, "__slots__"):
        return sum(nbytes(getattr(obj, s, None), seen) for s in obj.__slots__)
    return 0


class RecordCache(ByteLRU):
    """LRU of computed values, bounded by their tensors' bytes (``max_bytes``; 0 keeps nothing).

    A :class:`deconvlab._util.ByteLRU` (a value larger than the bound is computed, not kept) with a
    lock and hit/miss counts; the value is computed outside the lock."""

    def __init__(self, max_bytes: int):
        super().__init__(max_bytes)
        self.hits = 0
        self.misses = 0
        self._lock = threading.Lock()

    def get_or_compute(self, key, compute: Callable[[], Any]):
        with self._lock:
            if key in self:
                self.hits += 1
                return self.get(key)
            self.misses += 1
        value = compute()
        size = nbytes(value)
        with self._lock:
            if key not in self:  # another thread may have kept it meanwhile
                self.put(key, value, size)
        return value

    def clear(self) -> None:
        with self._lock:
            super().clear()


class Runner:
    """One worker thread with a bounded queue (see the module doc)."""

    def __init__(self, queue_size: int = 32, retry_after: int = 1, cache_bytes: int = 512 << 20):
        self.queue_size = queue_size
        self.retry_after = retry_after
        self.cache = RecordCache(cache_bytes)
        self._slots = threading.BoundedSemaphore(queue_size)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="deconvlab-inference")
        self._count_lock = threading.Lock()
        self.pending = 0  # jobs waiting or running
        self.rejected = 0  # QueueFull answers so far
        self.done = 0  # jobs finished so far

    def _job(self, fn, args, kwargs):
        try:
            with torch.inference_mode():
                return fn(*args, **kwargs)
        finally:
            with self._count_lock:
                self.pending -= 1
                self.done += 1
            self._slots.release()

    def submit(self, fn: Callable, *args, **kwargs):
        """A concurrent future for ``fn(*args, **kwargs)`` on the worker; QueueFull if the queue is full."""
        if not self._slots.acquire(blocking=False):
            with self._count_lock:
                self.rejected += 1
            raise QueueFull(self.queue_size, self.retry_after)
        with self._count_lock:
            self.pending += 1
        try:
            return self._pool.submit(self._job, fn, args, kwargs)
        except BaseException:
            with self._count_lock:
                self.pending -= 1
            self._slots.release()
            raise

    async def run(self, fn: Callable, *args, **kwargs):
        """Await ``fn(*args, **kwargs)`` run on the worker (raises its exception, or QueueFull)."""
        return await asyncio.wrap_future(self.submit(fn, *args, **kwargs))

    def call(self, fn: Callable, *args, **kwargs):
        """The same, blocking (for start-up and scripts)."""
        return self.submit(fn, *args, **kwargs).result()

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
