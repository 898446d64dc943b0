"""The unit of work: one block of whole output chunks, run by :func:`run_block`.

A block (:class:`~harness.plan.Region`) runs, in global plan order, every
patch whose output touches one of its chunks that is not final yet, and writes
only those chunks. Patches crossing a block edge run in each block they touch
(the halo scheme strips already use) and add only into that block's chunks.
So every chunk receives exactly its patches, in raster order, whatever the
partition: one process, many workers, or a resumed run all give the same bits,
and no two blocks ever write one chunk.

:func:`run_block` is the same function everywhere: the single-process run
calls it once for the whole output, with the slide and model it already
opened; a dask task calls it with a :class:`BlockJob` and opens them itself
(cached per worker process). Each call finds its block's final chunks on disk
first (:meth:`ZarrStore.final_chunks`), so a task re-run after its worker
died redoes only what the dead attempt had not committed.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from harness import _malloc
from harness.config import Engine
from harness.inference import cached, infer
from harness.interrupt import Interrupted, StopRequest
from harness.loader import make_loader, plan_cache_need
from harness.measure.runner import current_rss_bytes
from harness.merge import DenseMerger, Merger, MergeStats, StreamingMerger
from harness.output import ChunkWriter, ZarrStore
from harness.output.session import SPILL_PREFIX
from harness.output.state import ProgressRecord, state_dir
from harness.output.threaded import writer_sink
from harness.plan import Plan, Region, make_plan, owned_entries
from harness.slides.base import CachedSlide

if TYPE_CHECKING:
    from collections.abc import Callable

    from numpy.typing import NDArray

    from harness.config import RunConfig
    from harness.models import ModelSpec
    from harness.slides.base import Slide


@dataclass(frozen=True)
class BlockJob:
    """Everything a worker needs to run one block (picklable: no open handles).

    ``slide`` is a spec or path that :func:`harness.slides.open_slide` reopens;
    ``mask`` the tissue mask the driver resolved once; ``merge_budget`` the
    merge buffers' share of the run budget (:mod:`harness.budget`).
    """

    config: RunConfig
    slide: str
    out: str
    region: Region | None
    mask: NDArray[np.bool_] | None
    merge_budget: int
    run_id: str = ""
    cache_bytes: int | None = None  # the tile cache's share of the budget (None: fit the band)
    heap_slack: int | None = None  # HeapTrimmer's slack (None: its default)
    batch_bytes: int = 0  # the budget's batch share: what one batch may fault in afresh


@dataclass(frozen=True)
class BlockResult:
    """What one block did."""

    region: list[int] | None
    patches: int  # distinct patches run
    patch_runs: int  # entries run (halo patches counted once per strip)
    patches_done: int  # skipped: every chunk they touch was already final
    patches_masked_out: int
    chunks_written: int
    peak_live_bytes: int
    spill_bytes: int
    reload_bytes: int
    wall_s: float
    pid: int
    host: str
    peak_rss_bytes: int  # this process's kernel peak (ru_maxrss) when the block ended
    progress_writes: int
    heap: dict[str, int] = field(default_factory=dict)  # HeapTrimmer.record()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record."""
        return asdict(self)


def plan_block(
    slide: Slide, config: RunConfig, channels: int, merge_budget: int, region: Region | None,
    mask: NDArray[np.bool_] | None, store: ZarrStore | None,
) -> Plan:  # fmt: skip
    """The plan of one block, skipping chunks already final in ``store``."""
    streaming = config.engine is Engine.STREAMING
    done = None
    if store is not None:
        grid = store.grid
        candidates = (region or Region.whole(grid)).mask(grid)
        done = store.final_chunks(candidates)
    return make_plan(slide.shape, slide.mpp, config.plan, channels, merge_budget,
                     strips=streaming, tissue=mask, region=region, done=done)  # fmt: skip


def run_block(
    job: BlockJob,
    *,
    slide: Slide | None = None,
    model: tuple[ModelSpec, int] | None = None,
    on_patches: Callable[[int], object] | None = None,
    stop: StopRequest | None = None,
    baseline: int | None = None,
) -> BlockResult:
    """Run one block of ``job`` into its output (see the module docstring).

    ``baseline`` is the RSS the run's budget sits above (``segment`` passes the one
    it recorded after imports and model load); by default this process's RSS once
    the model is loaded here.
    """
    t0 = time.time()
    config = job.config
    if slide is None:
        from harness.slides import open_slide

        slide = open_slide(job.slide, mpp=config.slide_mpp)
    spec, channels = model if model is not None else cached(config)
    baseline = current_rss_bytes() if baseline is None else baseline
    store = ZarrStore.open(Path(job.out))
    plan = plan_block(slide, config, channels, job.merge_budget, job.region, job.mask, store)
    cache = _fit_read_cache(slide, plan, job.cache_bytes, config)
    key = job.region.key if job.region is not None else "all"
    progress = ProgressRecord(store.path, key, store.grid[0] * store.grid[1])
    trimmer = heap_trimmer(job, baseline)
    stats = _merge_block(spec, channels, slide, plan, store, progress, job, on_patches, stop,
                         cache, trimmer)  # fmt: skip
    return BlockResult(
        region=None if job.region is None else job.region.to_list(),
        patches=plan.n_unique, patch_runs=plan.n_patches, patches_done=plan.patches_done,
        patches_masked_out=plan.patches_masked_out, chunks_written=stats.chunks_written,
        peak_live_bytes=stats.peak_live_bytes, spill_bytes=stats.spill_bytes,
        reload_bytes=stats.reload_bytes, wall_s=time.time() - t0, pid=os.getpid(),
        host=socket.gethostname(), peak_rss_bytes=_peak_rss(), progress_writes=progress.writes,
        heap=trimmer.record(),
    )  # fmt: skip


def _merge_block(
    spec: ModelSpec, channels: int, slide: Slide, plan: Plan, store: ZarrStore,
    progress: ProgressRecord, job: BlockJob, on_patches: Callable[[int], object] | None,
    stop: StopRequest | None, cache: int | None, trimmer: _malloc.HeapTrimmer,
) -> MergeStats:  # fmt: skip
    """Every batch of the block through the model into the merger and the writer."""
    config = job.config
    sink = writer_sink(ChunkWriter(store, progress))
    spill = config.spill_dir or str(state_dir(store.path) / "spill")
    merger: Merger = (
        StreamingMerger(plan, sink, job.merge_budget, spill, prefix=f"{SPILL_PREFIX}{job.run_id}-")
        if config.engine is Engine.STREAMING
        else DenseMerger(plan, sink)
    )
    try:
        _loop(spec, channels, slide, plan, merger, config, on_patches, stop, trimmer,
              cache)  # fmt: skip
        stats = merger.finish()
        sink.finish({})
    except BaseException:
        sink.abort()  # queued chunks are final: let them reach the disk, record them
        raise
    finally:
        merger.close()
    return stats


def _loop(
    spec: ModelSpec, channels: int, slide: Slide, plan: Plan, merger: Merger, config: RunConfig,
    on_patches: Callable[[int], object] | None, stop: StopRequest | None,
    trimmer: _malloc.HeapTrimmer, cache: int | None = None,
) -> None:  # fmt: skip
    """The main loop: batches in plan order, a stop check at every batch boundary.

    This thread runs the model and the merge; the loader's readers fill the
    next batches meanwhile (on the CPU it also preprocesses into a reused
    buffer, elsewhere uint8 batches travel to the device and are preprocessed
    there). Leaving the ``with`` early stops the readers at once.
    """
    on_cpu = config.device == "cpu"
    loader = make_loader(slide, plan, config.batch_size, config.workers,
                         spec.preprocess if on_cpu else None, cache)  # fmt: skip
    owned = owned_entries(plan)
    done = plan.owned_kept - int(np.count_nonzero(owned))  # final before this run
    if on_patches is not None and done:
        on_patches(done)
    ran = 0
    with loader:
        for batch in loader:
            idx = batch.indices
            merger.add(infer(spec, batch.pixels, config, channels, batch.number), idx)
            trimmer.tick()
            ran += len(idx)
            n = int(np.count_nonzero(owned[idx]))
            done += n
            if on_patches is not None:
                on_patches(n)
            if stop is not None and stop.requested and ran < plan.n_patches:
                assert stop.signum is not None
                raise Interrupted(stop.signum, done, plan.owned_kept)


def heap_trimmer(job: BlockJob, baseline: int) -> _malloc.HeapTrimmer:
    """The block's heap trimmer: its slack, and the run budget above ``baseline`` as a limit.

    The trimmer sees RSS only after each batch; inside the next one the forward can
    fault in up to a batch's buffers afresh (after a trim, or where the heap's free
    space is too fragmented to recycle them), so the limit sits that far below the
    budget (at least one slack). The dense engine, bounded by nothing, gets no limit.
    """
    slack = _malloc.default_slack() if job.heap_slack is None else job.heap_slack
    if job.config.engine is not Engine.STREAMING:
        return _malloc.HeapTrimmer(slack)
    headroom = max(slack, job.batch_bytes)
    return _malloc.HeapTrimmer(slack, limit=baseline + job.config.budget - headroom)


def _fit_read_cache(
    slide: Slide, plan: Plan, cache_bytes: int | None, config: RunConfig
) -> int | None:
    """Size a slide's read cache (where it has one): its budget share, or what the reads need.

    Returns the size set, which the loader divides between reader processes.
    """
    if not isinstance(slide, CachedSlide):
        return None
    size = (
        cache_bytes
        if cache_bytes is not None
        else plan_cache_need(slide, plan, config.batch_size, config.workers)
    )
    slide.resize_cache(size)
    return size


def _peak_rss() -> int:
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def partition(grid: tuple[int, int], side: int) -> list[Region]:
    """Blocks of ``side x side`` chunks covering a ``(rows, cols)`` grid, row-major."""
    rows, cols = grid
    return [
        Region(r, min(r + side, rows), c, min(c + side, cols))
        for r in range(0, rows, side)
        for c in range(0, cols, side)
    ]


def region_of(value: list[int] | None) -> Region | None:
    """The inverse of :meth:`Region.to_list`."""
    return None if value is None else Region(*value)


def count_final(store: ZarrStore, expected: NDArray[np.int32]) -> tuple[int, int]:
    """``(final, total)`` over the chunks a plan touches."""
    touched = expected > 0
    final = store.final_chunks(touched)
    return int(np.count_nonzero(final)), int(np.count_nonzero(touched))


def loss_bound(plan: Plan, queued: int = 6) -> int:
    """Most patches a kill at any instant can cost the resumed run of ``plan``.

    A kill loses the chunks not committed yet: the live ones (partial sums in
    RAM) and up to ``queued`` final ones still with the writer (its queue of 4,
    the one it encodes, the one being handed over). Every patch already added
    into one of those runs again. This walks the plan once and returns the
    largest such count (summed per chunk, so an upper bound on distinct patches).
    """
    from collections import deque

    remaining = plan.expected.astype(np.int64).copy()
    live_done, worst = 0, 0
    recent: deque[int] = deque()
    recent_sum = 0
    for i in range(plan.n_patches):
        for c in plan.chunks_of(i):
            remaining[c] -= 1
            live_done += 1
            if remaining[c] == 0:
                live_done -= int(plan.expected[c])
                recent.append(int(plan.expected[c]))
                recent_sum += recent[-1]
                if len(recent) > queued:
                    recent_sum -= recent.popleft()
        worst = max(worst, live_done + recent_sum)
    return worst
