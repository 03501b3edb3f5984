"""The inference runner: one executor thread, a bounded queue, and the forward-record cache.

Every call into torch goes through ``Runner.run(fn, *args)``:

* it runs on ONE worker thread (so the model, resident on its device, is
  never used by two threads at once, and CUDA sees a single stream of work),
  inside ``torch.inference_mode()``;
* work is admitted by its estimated cost in forward passes (``cost=``: an
  occlusion its positions + 1, an evolution batch its images x snapshots,
  anything else 1): while ``max_passes`` passes, or ``queue_size`` jobs,
  wait or run, one more raises ``QueueFull`` at once (the API answers 429
  with ``Retry-After``: the passes ahead times the measured seconds per
  pass) instead of piling up work no client will wait for; a job is never
  refused when nothing is pending, whatever it costs;
* a job whose client has gone stops (``run(..., request=)`` watches the
  connection): one still waiting never starts, one running raises
  ``Cancelled`` at its next ``check_cancelled()`` (the occlusion calls it
  after each batch, the evolution scan between batches);
* interactive requests go ahead of long jobs: a job of cost 1 (a unit, a
  projection, a map: what a click asks for) also waits in a lane of its own,
  and a long job's ``check_cancelled()`` runs every such job waiting there,
  on the same worker thread, before its next batch. A click during a
  4000-pass occlusion is answered after the batch in progress, not after
  the whole run. Each job still runs exactly once (whoever takes it first:
  the yield point or its own place in the pool's queue), one at a time;
* ``RecordCache`` keeps forward records (activations, switches, logits) per
  (model, image) in LRU order, bounded by the bytes of the tensors they hold.
  It is touched only from the worker thread.
"""

from __future__ import annotations

import asyncio
import collections
import math
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable

import torch

from .._util import ByteLRU


class QueueFull(Exception):
    """The inference queue holds ``queue_size`` jobs, or ``max_passes`` estimated passes, already."""

    def __init__(self, queue_size: int, retry_after: int, passes: int | None = None, budget: int | None = None):
        if passes is None:
            super().__init__(f"inference queue full ({queue_size} jobs waiting or running); retry later")
        else:
            super().__init__(f"inference queue full: {passes} forward passes waiting or running, the budget is "
                             f"{budget}; retry after {retry_after} s")
        self.queue_size = queue_size
        self.retry_after = retry_after


class Cancelled(Exception):
    """The job's client went away; raised by ``check_cancelled`` on the worker thread."""


_current = threading.local()  # the running job's cancel event (worker thread only)


def check_cancelled() -> None:
    """Inside a job: raise ``Cancelled`` when its client has gone (a no-op outside a job); then, inside a
    long job, run the interactive jobs waiting (the yield point, see the module doc)."""
    event = getattr(_current, "cancel", None)
    if event is not None and event.is_set():
        raise Cancelled("the client went away; the job stopped")
    runner = getattr(_current, "runner", None)
    if runner is not None and not getattr(_current, "interactive", False):
        runner.run_interactive()


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
    """One worker thread, admission by estimated cost, cancellation (see the module doc)."""

    def __init__(self, queue_size: int = 32, retry_after: int = 1, cache_bytes: int = 512 << 20,
                 max_passes: int = 8192, interactive_cost: int = 1):
        self.queue_size = queue_size
        self.interactive_cost = interactive_cost  # jobs of at most this cost go ahead of long ones
        self._interactive: collections.deque = collections.deque()  # waiting interactive jobs (_Item)
        self.retry_after = retry_after
        self.max_passes = max_passes
        self.cache = RecordCache(cache_bytes)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="deconvlab-inference")
        self._count_lock = threading.Lock()
        self.pending = 0  # jobs waiting or running
        self.pending_passes = 0  # their estimated forward passes
        self.seconds_per_pass = 0.0  # measured (moving average over finished jobs)
        self.rejected = 0  # QueueFull answers so far
        self.done = 0  # jobs finished so far
        self.passes = 0  # their estimated forward passes
        self.cancelled = 0  # jobs stopped (or never started) because their client went away

    def _job(self, fn, args, kwargs, cost: int, cancel: threading.Event | None, interactive: bool = False):
        start = time.perf_counter()
        outer = (getattr(_current, "cancel", None), getattr(_current, "interactive", False))  # a long job's
        try:
            if cancel is not None and cancel.is_set():
                raise Cancelled("the client went away before the job started")
            _current.cancel, _current.runner, _current.interactive = cancel, self, interactive
            with torch.inference_mode():
                return fn(*args, **kwargs)
        except Cancelled:
            with self._count_lock:
                self.cancelled += 1
            raise
        finally:
            _current.cancel, _current.interactive = outer
            per_pass = (time.perf_counter() - start) / cost
            with self._count_lock:
                self.pending -= 1
                self.pending_passes -= cost
                self.done += 1
                self.passes += cost
                self.seconds_per_pass = per_pass if not self.seconds_per_pass else (
                    0.8 * self.seconds_per_pass + 0.2 * per_pass)

    def _admit(self, cost: int) -> None:
        """Count a job of ``cost`` passes in, or raise ``QueueFull`` (under the count lock)."""
        busy = self.pending > 0
        if self.pending >= self.queue_size:
            self.rejected += 1
            raise QueueFull(self.queue_size, self.retry_after)
        if busy and self.pending_passes + cost > self.max_passes:
            self.rejected += 1
            wait = max(self.retry_after, math.ceil(self.pending_passes * self.seconds_per_pass))
            raise QueueFull(self.queue_size, wait, self.pending_passes, self.max_passes)
        self.pending += 1
        self.pending_passes += cost

    def submit(self, fn: Callable, *args, cost: int = 1, cancel: threading.Event | None = None, **kwargs):
        """A concurrent future for ``fn(*args, **kwargs)`` on the worker; QueueFull if the budget is spent."""
        cost = max(1, int(cost))
        with self._count_lock:
            self._admit(cost)
        item = None
        try:
            if cost > self.interactive_cost:
                return self._pool.submit(self._job, fn, args, kwargs, cost, cancel)
            item = _Item(Future(), fn, args, kwargs, cost, cancel)
            with self._count_lock:
                self._interactive.append(item)
            self._pool.submit(self._take, item)
            return item.future
        except BaseException:
            with self._count_lock:
                if item is not None and item in self._interactive:
                    self._interactive.remove(item)
                self.pending -= 1
                self.pending_passes -= cost
            raise

    def _take(self, item: "_Item") -> None:
        """The interactive job's own place in the pool's queue: run it unless a yield point already has."""
        with self._count_lock:
            if item not in self._interactive:
                return
            self._interactive.remove(item)
        self._run_item(item)

    def _run_item(self, item: "_Item") -> None:
        if not item.future.set_running_or_notify_cancel():  # its awaiting side gave up: never run
            with self._count_lock:
                self.pending -= 1
                self.pending_passes -= item.cost
            return
        try:
            result = self._job(item.fn, item.args, item.kwargs, item.cost, item.cancel, interactive=True)
        except BaseException as exc:  # noqa: BLE001 (handed to the awaiting side, as the pool does)
            item.future.set_exception(exc)
        else:
            item.future.set_result(result)

    def run_interactive(self) -> int:
        """On the worker, inside a long job: run every interactive job waiting, in order; how many ran."""
        ran = 0
        while True:
            with self._count_lock:
                if not self._interactive:
                    return ran
                item = self._interactive.popleft()
            self._run_item(item)
            ran += 1

    async def run(self, fn: Callable, *args, cost: int = 1, request=None, **kwargs):
        """Await ``fn(*args, **kwargs)`` run on the worker (raises its exception, QueueFull or Cancelled).

        ``request``: a Starlette request whose connection is watched while the job waits or runs;
        when the client goes, the job is cancelled (see the module doc)."""
        cancel = threading.Event() if request is not None else None
        future = asyncio.wrap_future(self.submit(fn, *args, cost=cost, cancel=cancel, **kwargs))
        if request is None:
            return await future
        watcher = asyncio.ensure_future(_watch(request, cancel))
        try:
            return await future
        finally:
            watcher.cancel()

    def call(self, fn: Callable, *args, **kwargs):
        """The same, blocking (for start-up and scripts)."""
        return self.submit(fn, *args, **kwargs).result()

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


class _Item:
    """An interactive job waiting in its lane (identity matters: each is taken once)."""

    __slots__ = ("future", "fn", "args", "kwargs", "cost", "cancel")

    def __init__(self, future, fn, args, kwargs, cost, cancel):
        self.future, self.fn, self.args, self.kwargs, self.cost, self.cancel = future, fn, args, kwargs, cost, cancel


async def _watch(request, cancel: threading.Event, every: float = 0.2) -> None:
    """Set ``cancel`` once the client behind ``request`` has disconnected."""
    while not cancel.is_set():
        if await request.is_disconnected():
            cancel.set()
            return
        await asyncio.sleep(every)
