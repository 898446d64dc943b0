"""Patch batches in plan order, read into a ring of reused uint8 batch slots.

``workers=0`` reads each batch in the consumer's own thread; ``workers=N``
starts N readers that fill the ring ahead of the consumer, each its share of
every batch (:mod:`harness._readers`: column ranges, so each reader's block or
tile cache serves its next rows). Readers are processes by default
(``python -m harness._readers``, the ring in shared memory) or threads
(``$WSI_HARNESS_READERS=thread``); see ``docs/loader.md`` for what each
measured here and why the default is what it is.

What crosses to the consumer is uint8, in slots reused batch after batch:
no per-batch allocation and a quarter of the bytes of a float batch. The
model's preprocessing happens where the model runs, into one reused float32
buffer (:meth:`PatchLoader.__iter__`), so the consumer does the model, the
merge and the hand-off and nothing else. Every mode reads the same boxes with
the same slide code and preprocesses with the same arithmetic, so outputs are
bitwise equal for every worker count and reader kind.

Memory: the ring holds ``slots_for(workers)`` batches (the prefetch depth,
bounded), counted by :func:`ring_bytes` in the run budget; each reader process's
own cache share is counted in the budget's cache term (:func:`cache_need`).
"""

from __future__ import annotations

import dataclasses
import os
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch

from harness._readers import (
    LoaderError,
    ProcessReaders,
    ReaderJob,
    Ring,
    fill,
    owners,
    period_for,
    run_share,
    share_need,
    share_widths,
)
from harness.errors import ConfigError
from harness.slides.base import CachedSlide

if TYPE_CHECKING:
    from collections.abc import Iterator
    from types import TracebackType

    from numpy.typing import NDArray

    from harness.plan import Plan, PlanConfig
    from harness.preprocess import Preprocess
    from harness.slides.base import Slide

__all__ = [
    "Batch", "LoaderError", "PatchLoader", "cache_need", "make_loader", "plan_cache_need",
    "preprocess_into", "ring_bytes",
]  # fmt: skip

READERS_ENV = "WSI_HARNESS_READERS"
"""Environment variable choosing the kind of reader: ``process`` or ``thread``."""
MODES = ("process", "thread")
DEFAULT_MODE = "process"
"""The reader kind unless :data:`READERS_ENV` says otherwise.

Processes, because readers that hold the GIL (the synthetic generator) serialise as
threads: two reader threads ran 1.15-1.25x slower than two processes at 16384² where
reading is the work. Threads use 40-90 MiB less for two readers. ``docs/loader.md`` has the table.
"""


def reader_mode() -> str:
    """The reader kind in force: :data:`READERS_ENV`, else :data:`DEFAULT_MODE`."""
    mode = os.environ.get(READERS_ENV, "").strip().lower() or DEFAULT_MODE
    if mode not in MODES:
        raise ConfigError(f"{READERS_ENV} must be one of {', '.join(MODES)}, got {mode!r}")
    return mode


def slots_for(workers: int) -> int:
    """Ring slots: one batch read inline, else two per reader (the prefetch depth)."""
    return 1 if workers <= 0 else 2 * workers


def ring_bytes(config: PlanConfig, batch_size: int, workers: int) -> int:
    """Bytes of the ring: every uint8 batch slot the readers may fill ahead."""
    return Ring(slots_for(workers), batch_size, config.patch_hw).nbytes


def cache_need(
    slide: Slide, config: PlanConfig, strip_width: int, batch_size: int, workers: int,
    mode: str | None = None,
) -> int | None:  # fmt: skip
    """Read-cache bytes for reads sweeping strips ``strip_width`` output px wide (None: no cache).

    Inline and reader threads share the slide's one cache: the band of two patch
    rows across the strip. Reader processes each keep their own, for their own
    column ranges (:func:`harness._readers.share_need`): their sum is what the
    budget counts.
    """
    if not isinstance(slide, CachedSlide):
        return None
    scale = (config.mpp or slide.mpp) / slide.mpp
    if workers <= 1 or (mode or reader_mode()) == "thread":
        (ph, pw), sh = config.patch_hw, config.stride_hw[0]
        band = (int(np.ceil((ph + sh) * scale)), int(np.ceil((strip_width + pw) * scale)))
        return slide.cache_need(band)
    period = period_for(config, batch_size, workers, slots_for(workers), strip_width)
    shares = share_widths(strip_width, period, workers)
    return sum(share_need(slide, config, widths, scale) for widths in shares)


def plan_cache_need(slide: CachedSlide, plan: Plan, batch_size: int, workers: int) -> int:
    """What :func:`cache_need` asks for ``plan`` itself (the band it sweeps, its widest strip)."""
    if workers <= 1 or reader_mode() == "thread":
        return slide.cache_need(plan.read_band())
    need = cache_need(slide, plan.config, _widest_strip(plan), batch_size, workers)
    assert need is not None
    return need


@dataclass(frozen=True)
class Batch:
    """One batch in plan order.

    ``pixels`` is uint8 ``(N, h, w, 3)``, or with preprocessing the model's
    float32 input kept channels-last; it lives in a reused buffer and is valid
    until the next batch is requested.
    """

    number: int
    pixels: torch.Tensor
    indices: NDArray[np.int64]


class _Source(Protocol):
    """Where batches come from: inline reads, reader threads or reader processes."""

    view: NDArray[np.uint8]

    def start(self, jobs: list[ReaderJob]) -> None: ...
    def wait(self, batch: int, owners: list[int]) -> None: ...
    def release(self, count: int) -> None: ...
    def close(self, completed: bool) -> None: ...


class PatchLoader:
    """Batches of ``plan`` read from ``slide`` (see the module docstring).

    Use as a context manager: entering starts the readers, leaving stops them
    (at once, whatever they are doing, when the loop left early).

    Parameters
    ----------
    workers
        Reader threads or processes; 0 reads in the consumer's thread.
    preprocess
        Turn batches into the model's float32 input (channels-last) here.
    cache_bytes
        The read cache's share of the run budget, split between reader
        processes by their needs (threads share the slide's own cache).
    mode
        ``process`` or ``thread`` (default: :func:`reader_mode`).
    """

    def __init__(
        self, slide: Slide, plan: Plan, batch_size: int, workers: int = 0,
        preprocess: Preprocess | None = None, cache_bytes: int | None = None,
        mode: str | None = None,
    ) -> None:  # fmt: skip
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if workers < 0:
            raise ValueError(f"workers must be >= 0, got {workers}")
        self.slide, self.plan, self.batch_size = slide, plan, batch_size
        self.workers, self.preprocess, self.cache_bytes = workers, preprocess, cache_bytes
        self.readers = _useful_readers(plan, batch_size, workers)
        self.mode = "inline" if self.readers == 0 else (mode or reader_mode())
        self.ring = Ring(slots_for(self.readers), batch_size, plan.config.patch_hw)
        self.period = period_for(plan.config, batch_size, max(1, self.readers), self.ring.slots,
                                 _widest_strip(plan))  # fmt: skip
        self.owner = owners(plan, self.readers, self.period)
        self._source: _Source | None = None
        self._input: NDArray[np.float32] | None = None
        self.reader_rss: list[tuple[int, int]] = []  # (baseline, peak) of each reader process

    def __len__(self) -> int:
        return -(-self.plan.n_patches // self.batch_size)

    def __enter__(self) -> PatchLoader:
        if len(self) and self._source is None:
            self._source = self._start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close(completed=kind is None)

    def close(self, completed: bool = False) -> None:
        """Stop the readers (``completed``: they finished; let them exit and report)."""
        source, self._source = self._source, None
        if source is None:
            return
        source.close(completed)
        if isinstance(source, ProcessReaders):
            self.reader_rss = [(r.baseline, r.peak) for r in source.readers]
            if isinstance(self.slide, CachedSlide) and self.cache_bytes is not None:
                self.slide.resize_cache(self.cache_bytes)

    def __iter__(self) -> Iterator[Batch]:
        source = self._source
        if source is None and len(self):
            raise RuntimeError("iterate a PatchLoader inside its with block")
        for b in range(len(self)):
            assert source is not None
            lo, hi = b * self.batch_size, min((b + 1) * self.batch_size, self.plan.n_patches)
            source.wait(b, [int(r) for r in np.unique(self.owner[lo:hi])])
            slot = source.view[b % self.ring.slots][: hi - lo]
            yield Batch(b, self._pixels(slot), np.arange(lo, hi, dtype=np.int64))
            source.release(b + 1)

    def _pixels(self, slot: NDArray[np.uint8]) -> torch.Tensor:
        """The slot as the model's input: uint8 as read, or preprocessed into the reused buffer.

        The same arithmetic as :meth:`~harness.preprocess.Preprocess.array`,
        written into one buffer instead of a new array per batch.
        """
        if self.preprocess is None:
            return torch.from_numpy(slot)
        if self._input is None:
            self._input = np.empty((self.batch_size, *self.plan.config.patch_hw, 3), np.float32)
        return torch.from_numpy(preprocess_into(self.preprocess, slot, self._input))

    def _start(self) -> _Source:
        """Start the readers of this mode on their shares."""
        if self.mode == "inline":
            return _Inline(self.ring, self.slide, self.plan)
        shares = self._cache_shares()
        lean = dataclasses.replace(self.plan, todo=None, window=None)  # what reads need
        jobs = [ReaderJob(self.slide, lean, self.ring, np.flatnonzero(self.owner == r), share)
                for r, share in enumerate(shares)]  # fmt: skip
        process = self.mode == "process"
        source: _Source = ProcessReaders(self.ring) if process else _Threads(self.ring)
        try:
            source.start(jobs)
        except BaseException:
            source.close(completed=False)
            raise
        if process and isinstance(self.slide, CachedSlide):
            self.slide.resize_cache(0)  # this process reads nothing while they run
        return source

    def _cache_shares(self) -> list[int | None]:
        """Each reader process's cache bytes: its need, scaled to fit ``cache_bytes``."""
        slide, total = self.slide, self.cache_bytes
        if self.mode != "process" or total is None or not isinstance(slide, CachedSlide):
            return [None] * self.readers
        if self.readers == 1:
            return [total]  # one reader sweeps the band alone
        scale, cfg = self.plan.scale, self.plan.config
        shares = share_widths(_widest_strip(self.plan), self.period, self.readers)
        needs = [share_need(slide, cfg, widths, scale) for widths in shares]
        factor = min(1.0, total / max(1, sum(needs)))
        return [int(n * factor) for n in needs]


def preprocess_into(
    pre: Preprocess, batch: NDArray[np.uint8], buffer: NDArray[np.float32]
) -> NDArray[np.float32]:
    """``pre.array(batch)`` written into the first ``len(batch)`` rows of ``buffer``, bitwise."""
    x = buffer[: len(batch)]
    np.multiply(batch, np.float32(pre.scale), out=x, dtype=np.float32)
    if pre.normalises:
        x -= np.asarray(pre.mean, dtype=np.float32)
        x /= np.asarray(pre.std, dtype=np.float32)
    return x


def _useful_readers(plan: Plan, batch_size: int, workers: int) -> int:
    """``workers``, or fewer when the widest strip has fewer strides than readers.

    A reader without columns would cost a process (or a thread) and read nothing.
    """
    if plan.n_patches == 0:
        return 0
    return min(workers, max(1, _widest_strip(plan) // plan.config.stride_hw[1]))


def _widest_strip(plan: Plan) -> int:
    """Output px the entries of the widest strip span (their origins' range plus a stride)."""
    if plan.n_patches == 0:
        return 0
    x, widest = plan.origins[:, 1], 0
    for s in range(len(plan.strip_starts) - 1):
        lo, hi = int(plan.strip_starts[s]), int(plan.strip_starts[s + 1])
        if hi > lo:
            widest = max(widest, int(x[lo:hi].max()) - int(x[lo:hi].min()))
    return widest + plan.config.stride_hw[1]


class _Inline:
    """Reads each batch when it is asked for, in the consumer's thread, into one slot."""

    def __init__(self, ring: Ring, slide: Slide, plan: Plan) -> None:
        self.view = ring.view(bytearray(ring.nbytes))
        self.slide, self.plan, self.size = slide, plan, ring.batch_size

    def start(self, jobs: list[ReaderJob]) -> None:
        """Nothing runs ahead."""

    def wait(self, batch: int, owners: list[int]) -> None:
        """Read ``batch`` now."""
        lo, hi = batch * self.size, min((batch + 1) * self.size, self.plan.n_patches)
        fill(self.slide, self.plan, np.arange(lo, hi), self.view[0])

    def release(self, count: int) -> None:
        """The slot is reused by the next read."""

    def close(self, completed: bool) -> None:
        """Nothing to stop."""


class _Closed(Exception):
    """Raised in a reader thread whose loader closed."""


class _Threads:
    """Reader threads over a ring in this process's memory, sharing the slide's cache."""

    def __init__(self, ring: Ring) -> None:
        self.view = ring.view(bytearray(ring.nbytes))
        self._cond = threading.Condition()
        self._released, self._closed = 0, False
        self._done: list[int] = []
        self._error: BaseException | None = None
        self._threads: list[threading.Thread] = []
        self.slots = ring.slots

    def start(self, jobs: list[ReaderJob]) -> None:
        """One daemon thread per job."""
        self._done = [-1] * len(jobs)
        for r, job in enumerate(jobs):
            t = threading.Thread(target=self._run, args=(r, job), name=f"patch-reader-{r}",
                                 daemon=True)  # fmt: skip
            self._threads.append(t)
            t.start()

    def _run(self, r: int, job: ReaderJob) -> None:
        try:
            run_share(job, self.view, _ThreadGate(self, r))
        except _Closed:
            pass
        except BaseException as exc:
            with self._cond:
                self._error = self._error or exc
                self._cond.notify_all()

    def admit(self, batch: int) -> None:
        """Block a reader until ``batch``'s slot is free (or the loader closed)."""
        with self._cond:
            while not self._closed and batch >= self._released + self.slots:
                self._cond.wait()
            if self._closed:
                raise _Closed

    def done(self, r: int, batch: int) -> None:
        """Reader ``r`` wrote its part of ``batch``."""
        with self._cond:
            self._done[r] = batch
            self._cond.notify_all()

    def wait(self, batch: int, owners: list[int]) -> None:
        """Block until ``owners`` wrote their parts of ``batch``; raise a reader's error."""
        with self._cond:
            while self._error is None and any(self._done[r] < batch for r in owners):
                self._cond.wait()
            if self._error is not None:
                raise self._error

    def release(self, count: int) -> None:
        """Batches ``< count`` are free."""
        with self._cond:
            self._released = count
            self._cond.notify_all()

    def close(self, completed: bool) -> None:
        """Stop every reader and join it (each finishes at most the read it is in)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for t in self._threads:
            t.join()


@dataclass(frozen=True)
class _ThreadGate:
    """:class:`~harness._readers.Gate` of reader thread ``r``."""

    readers: _Threads
    r: int

    def admit(self, batch: int) -> None:
        self.readers.admit(batch)

    def done(self, batch: int) -> None:
        self.readers.done(self.r, batch)


def make_loader(
    slide: Slide, plan: Plan, batch_size: int, workers: int = 0,
    preprocess: Preprocess | None = None, cache_bytes: int | None = None,
) -> PatchLoader:  # fmt: skip
    """A :class:`PatchLoader` of ``plan`` (``workers`` readers of the default kind)."""
    return PatchLoader(slide, plan, batch_size, workers, preprocess, cache_bytes)
