"""Orchestration of one slide: open, plan, own the output, run its blocks, finish.

:func:`segment` is the driver. It opens the slide and model once, resolves the
tissue mask, computes the run's identity (:mod:`harness.identity`), takes the
output (:func:`harness.output.session.open_for_run`: create, replace or resume
under one lock), then runs the output's blocks -- one block for the whole
output in this process, or many on a dask cluster (:mod:`harness.distributed`)
-- each through :func:`harness.blocks.run_block`, and marks the output
complete last of all. SIGINT/SIGTERM stop at the next batch boundary
(:mod:`harness.interrupt`); whatever stops the run, every committed chunk
stays and ``resume`` continues from there.

Process-wide settings (malloc policy, threads, OpenMP) are not applied here:
the entry point owns its process (:mod:`harness.policy`).
"""

from __future__ import annotations

import contextlib
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from harness import budget as budgets
from harness.blocks import BlockJob, BlockResult, run_block
from harness.config import Engine, RunConfig
from harness.errors import ConfigError
from harness.identity import provenance, run_identity, slide_source
from harness.inference import ModelOutputError, load, prepare
from harness.interrupt import StopRequest, stop_on_signals
from harness.mask import resolve_mask
from harness.measure.runner import current_rss_bytes, write_baseline
from harness.output.session import OutputSession, StoreSpec, open_for_run
from harness.plan import PlanConfig, output_shape

if TYPE_CHECKING:
    from collections.abc import Iterator

    import numpy as np
    from numpy.typing import NDArray
    from torch import nn

    from harness.models import ModelSpec
    from harness.slides.base import Slide

__all__ = ["ModelOutputError", "SegmentResult", "segment"]


@dataclass(frozen=True)
class SegmentResult:
    """What one segmentation run did (``to_dict`` is the CLI's ``--json`` record)."""

    output: str
    engine: str
    model: str
    patches: int
    patch_runs: int  # patches plus halo re-runs at strip and block edges
    patches_masked_out: int
    chunks_written: int
    peak_live_bytes: int
    spill_bytes: int
    reload_bytes: int
    budget_bytes: int
    wall_s: float
    slide_shape: tuple[int, int]
    out_shape: tuple[int, int]
    megapixels_per_s: float  # output (processing-resolution) pixels per wall second
    phases: dict[str, tuple[float, float]] = field(default_factory=dict)
    patches_done: int = 0  # skipped on resume: all their chunks were already final
    resumed: bool = False
    already_complete: bool = False
    budget: dict[str, Any] = field(default_factory=dict)
    blocks: list[dict[str, Any]] = field(default_factory=list)
    workers: dict[str, Any] = field(default_factory=dict)
    heap: dict[str, int] = field(default_factory=dict)  # the heap trimmer's record, summed

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record."""
        return asdict(self)


def _check_environment() -> None:
    """The reader and writer kinds the environment asks for, checked before any output exists."""
    from harness.loader import reader_mode
    from harness.output.threaded import writer_mode

    reader_mode()
    writer_mode()


def segment(
    slide: Slide | str | Path,
    model: str | Path | nn.Module | ModelSpec | None = None,
    config: PlanConfig | None = None,
    out: str | Path = "out.zarr",
    *,
    run: RunConfig | None = None,
    client: Any = None,
    stop: StopRequest | None = None,
    **options: Any,
) -> SegmentResult:
    """Segment ``slide`` into the zarr group ``out``.

    Parameters
    ----------
    slide
        A :class:`~harness.slides.base.Slide`, a path, or a ``synthetic:`` spec.
    model
        A built-in name, a model file, an ``nn.Module`` or a ``ModelSpec``
        (default: ``run.model``, ``hne-colour``).
    config
        The patch plan (default: ``run.plan``).
    out
        The output folder (``OUT.zarr``).
    run
        The run description (:class:`~harness.config.RunConfig`); ``options``
        override its fields by name (``budget=``, ``mask="auto"``, ``resume=True``,
        plan fields such as ``stride=`` too), validated the same way.
    client
        A ``dask.distributed.Client``: run the output's blocks on its cluster.
    stop
        A :class:`~harness.interrupt.StopRequest` someone else sets (a cohort's
        driver); by default SIGINT/SIGTERM set one while this call runs.
    """
    t0 = time.time()
    run = _run_config(model, config, run, options)
    _check_environment()
    opened = _open(slide, model, run)
    # The RSS the budget sits above (after imports and model load), also for a measuring parent.
    baseline = write_baseline() or current_rss_bytes()
    t_plan = time.time()
    session, job, split = _own_output(opened, run, Path(out), distributed=client is not None)
    if session.already_complete:
        return _complete_already(str(out), opened, run, session, t0)
    t_inf = time.time()
    try:
        with _signals(stop) as stop:
            blocks, workers = _run_blocks(client, job, session, stop, opened, run, baseline)
        t_fin = time.time()
        result = _result(str(out), opened, run, split, blocks, workers, session,
                         (t0, t_plan, t_inf, t_fin, time.time()))  # fmt: skip
        session.finish({"chunks_written": result.chunks_written, "ended": time.time(),
                        "result": _summary(result)})  # fmt: skip
    except BaseException:  # an interrupt included: keep the progress record for --resume
        session.close(remove_state=False)
        raise
    return result


def _run_blocks(
    client: Any,
    job: BlockJob,
    session: OutputSession,
    stop: StopRequest,
    opened: _Opened,
    run: RunConfig,
    baseline: int,
) -> tuple[list[BlockResult], dict[str, Any]]:
    """The output's blocks on ``client``'s cluster, or here as one block; progress on a bar.

    Here the block's heap limit sits ``run.budget`` above ``baseline``; a cluster's
    workers take their own baselines.
    """
    bar = _bar(run, opened.total_patches)
    if client is not None:
        from harness.distributed import run_on_client

        return run_on_client(client, job, session, stop, bar)
    with bar:
        model_pair = (opened.spec, opened.channels)
        block = run_block(job, slide=opened.slide, model=model_pair, on_patches=bar.update,
                          stop=stop, baseline=baseline)  # fmt: skip
    return [block], {}


@contextlib.contextmanager
def _signals(given: StopRequest | None) -> Iterator[StopRequest]:
    if given is not None:
        yield given
        return
    with stop_on_signals() as stop:
        yield stop


@dataclass(frozen=True)
class _Opened:
    """The slide, model and mask of a run, opened once by the driver."""

    slide: Slide
    source: str | None
    spec: ModelSpec
    channels: int
    mask: NDArray[np.bool_] | None
    total_patches: int


def _run_config(
    model: object, config: PlanConfig | None, run: RunConfig | None, options: dict[str, Any]
) -> RunConfig:
    base = run or RunConfig()
    if config is not None:
        options = {"plan": config, **options}
    if isinstance(model, str | Path):
        options = {"model": str(model), **options}
    return base.replace(**options) if options else base


def _open(slide: Slide | str | Path, model: object, run: RunConfig) -> _Opened:
    """Open the slide, load and probe the model, resolve the mask, count patches."""
    from harness.mask import count_patches

    if isinstance(slide, str | Path):
        from harness.slides import open_slide

        slide = open_slide(slide, mpp=run.slide_mpp)
    _warn_upsampling(slide.mpp, run.plan.mpp)
    budgets.check_sizes(slide, run.plan, run.budget)  # before the probe allocates a patch
    spec = load(run, None if isinstance(model, str | Path) else model)  # type: ignore[arg-type]
    channels = prepare(spec, run.plan, run.device)
    mask = resolve_mask(run.mask, slide)
    total = count_patches(slide, run.plan, mask)
    return _Opened(slide, slide_source(slide), spec, channels, mask, total)


def _warn_upsampling(slide_mpp: float, mpp: float | None) -> None:
    """Say so (stderr, one line) when the processing resolution is finer than level 0."""
    if mpp is not None and mpp < slide_mpp * (1 - 1e-6):
        print(f"warning: processing mpp {mpp:g} is finer than the slide's level 0 "
              f"({slide_mpp:g} um/px): patches are upsampled {slide_mpp / mpp:.3g}x",
              file=sys.stderr)  # fmt: skip


def _own_output(
    opened: _Opened, run: RunConfig, out: Path, distributed: bool = False
) -> tuple[OutputSession, BlockJob, budgets.BudgetSplit]:
    """Split the budget, then create, replace or resume the output under its lock."""
    slide, plan = opened.slide, run.plan
    split = budgets.split(run, slide, opened.spec, opened.channels)
    shape = output_shape(slide.shape, slide.mpp, plan.mpp)
    classes = opened.spec.classes or tuple(f"class{k}" for k in range(opened.channels))
    meta = _meta(opened, run, classes, split)
    spec = StoreSpec(shape, plan.chunk_hw, opened.channels, meta, run.dtype, run.probabilities)
    # Cluster workers run one torch thread each unless --threads says otherwise.
    threads = (run.threads or 1) if distributed else None
    effective = budgets.with_batch_size(run, split)  # the batch size the budget allows
    identity = run_identity(slide, opened.spec, effective, opened.mask, threads)
    run_id = uuid.uuid4().hex[:12]
    spill = (run.spill_dir,) if run.spill_dir else ()
    session = open_for_run(out, spec, identity, overwrite=run.overwrite, resume=run.resume,
                           run_id=run_id, spill=spill)  # fmt: skip
    source = opened.source or ""
    job = BlockJob(effective, source, str(out), None, opened.mask, split.merge, run_id,
                   split.cache_bytes, split.heap_slack, batch_bytes=split.batch)  # fmt: skip
    return session, job, split


def _bar(run: RunConfig, total: int) -> tqdm[Any]:
    return tqdm(total=total, unit="patch", disable=not run.progress, smoothing=0.1)


def _meta(
    opened: _Opened, run: RunConfig, classes: tuple[str, ...], split: budgets.BudgetSplit
) -> dict[str, Any]:
    slide = opened.slide
    return {
        "mpp": run.plan.mpp or slide.mpp,
        "classes": list(classes),
        "model": opened.spec.name,
        "engine": str(run.engine),
        "plan": run.plan.to_dict(),
        "slide": {
            "shape": list(slide.shape),
            "mpp": slide.mpp,
            "type": type(slide).__name__,
            "source": opened.source,
        },
        "uncovered": "probabilities NaN, labels 255",
        "budget": split.to_dict(),
        "provenance": provenance(slide, run),
    }


def _summary(result: SegmentResult) -> dict[str, Any]:
    keep = ("patches", "patch_runs", "patches_done", "chunks_written", "peak_live_bytes",
            "spill_bytes", "wall_s", "resumed")  # fmt: skip
    return {k: getattr(result, k) for k in keep}


def _result(
    out: str, opened: _Opened, run: RunConfig, split: budgets.BudgetSplit,
    blocks: list[BlockResult], workers: dict[str, Any], session: OutputSession,
    times: tuple[float, float, float, float, float],
) -> SegmentResult:  # fmt: skip
    """The record of a finished run; ``times`` = start, plan, inference, finalise, end."""
    t0, t_plan, t_inf, t_fin, t1 = times
    shape = output_shape(opened.slide.shape, opened.slide.mpp, run.plan.mpp)
    return SegmentResult(
        output=out, engine=str(run.engine), model=opened.spec.name,
        patches=opened.total_patches, patch_runs=sum(b.patch_runs for b in blocks),
        patches_masked_out=max((b.patches_masked_out for b in blocks), default=0),
        chunks_written=sum(b.chunks_written for b in blocks),
        peak_live_bytes=max((b.peak_live_bytes for b in blocks), default=0),
        spill_bytes=sum(b.spill_bytes for b in blocks),
        reload_bytes=sum(b.reload_bytes for b in blocks), budget_bytes=run.budget,
        wall_s=t1 - t0, slide_shape=opened.slide.shape, out_shape=shape,
        megapixels_per_s=shape[0] * shape[1] / 1e6 / max(t1 - t0, 1e-9),
        phases={"plan": (t_plan, t_inf), "inference": (t_inf, t_fin), "finalise": (t_fin, t1)},
        patches_done=_patches_done(blocks), resumed=session.resumed, budget=split.to_dict(),
        blocks=[b.to_dict() for b in blocks] if len(blocks) > 1 else [], workers=workers,
        heap=_heap(blocks),
    )  # fmt: skip


def _heap(blocks: list[BlockResult]) -> dict[str, int]:
    """The blocks' trimmer records: trims summed, live memory over the limit at its highest."""
    over = max((b.heap["live_over_limit_bytes"] for b in blocks), default=0)
    return {"trims": sum(b.heap["trims"] for b in blocks),
            "budget_trims": sum(b.heap["budget_trims"] for b in blocks),
            "live_over_limit_bytes": over}  # fmt: skip


def _patches_done(blocks: list[BlockResult]) -> int:
    return sum(b.patches_done for b in blocks) if blocks else 0


def _complete_already(
    out: str, opened: _Opened, run: RunConfig, session: OutputSession, t0: float
) -> SegmentResult:
    """``resume`` on a complete output: nothing to do, say so."""
    shape = output_shape(opened.slide.shape, opened.slide.mpp, run.plan.mpp)
    return SegmentResult(
        output=out, engine=str(run.engine), model=opened.spec.name,
        patches=opened.total_patches, patch_runs=0, patches_masked_out=0, chunks_written=0,
        peak_live_bytes=0, spill_bytes=0, reload_bytes=0, budget_bytes=run.budget,
        wall_s=time.time() - t0, slide_shape=opened.slide.shape, out_shape=shape,
        megapixels_per_s=0.0, patches_done=opened.total_patches, resumed=True,
        already_complete=True,
    )  # fmt: skip


def check_engine(run: RunConfig, distributed: bool) -> None:
    """Refuse combinations the engines do not support."""
    if distributed and run.engine is Engine.DENSE:
        raise ConfigError("the dense reference runs in one process; drop --cluster/--scheduler")
