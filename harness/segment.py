"""Orchestration: slide -> plan -> loader -> model -> merger -> zarr output."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from tqdm import tqdm

from harness import _malloc
from harness.errors import ConfigError, HarnessError
from harness.loader import make_loader
from harness.mask import patches_touching, resolve_mask
from harness.measure.runner import write_baseline
from harness.merge import DenseMerger, Merger, MergeStats, StreamingMerger
from harness.models import ModelSpec, load_model, probe
from harness.output import ThreadedSink, ZarrOutput
from harness.plan import Plan, PlanConfig, grid_origins, make_plan, output_shape

if TYPE_CHECKING:
    from numpy.typing import NDArray
    from torch import nn

    from harness.slides.base import Slide

Engine = Literal["streaming", "dense"]
DEFAULT_BUDGET = 256 * 2**20


class ModelOutputError(HarnessError):
    """The model produced output the plan cannot use."""


@dataclass(frozen=True)
class SegmentResult:
    """What one segmentation run did (``to_dict`` is the CLI's ``--json`` record)."""

    output: str
    engine: str
    model: str
    patches: int
    patch_runs: int  # patches plus halo re-runs at strip edges
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

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record."""
        return asdict(self)


def _prepare_model(spec: ModelSpec, config: PlanConfig, device: str) -> int:
    """Move the model to ``device``, check its output patch, return its channel count."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but CUDA is not available here")
    spec.module.to(device)
    try:
        channels, ho, wo = probe(spec, config.patch_hw, device)
    except ValueError as exc:
        raise ModelOutputError(f"model {spec.name}: {exc}") from exc
    if (ho, wo) != config.out_hw:
        raise ModelOutputError(
            f"model {spec.name} outputs {ho}x{wo} patches for {config.patch_hw} inputs, but the "
            f"plan expects output_patch {config.out_hw}; set output_patch to match the model"
        )
    if spec.classes and len(spec.classes) != channels:
        raise ModelOutputError(
            f"model {spec.name} outputs {channels} channels but has {len(spec.classes)} classes"
        )
    return channels


def _infer(spec: ModelSpec, batch: torch.Tensor, plan: Plan, device: str) -> NDArray[np.float32]:
    """Run one batch and check its shape and values."""
    with torch.inference_mode():
        pixels = batch.to(device, non_blocking=True)
        # Float batches come preprocessed by the reader (channels-last float32).
        raw = pixels.dtype == torch.uint8
        y = spec.module(spec.preprocess(pixels) if raw else pixels.permute(0, 3, 1, 2))
    expected = (batch.shape[0], plan.channels, *plan.config.out_hw)
    if tuple(y.shape) != expected:
        raise ModelOutputError(f"model {spec.name} returned {tuple(y.shape)}, expected {expected}")
    out = np.asarray(y.to(torch.float32).cpu().numpy())
    # A sum is NaN/inf when any element is: one reduction costs a fraction of an
    # elementwise isfinite pass, which runs only to rule out a float32 overflow.
    if not np.isfinite(out.sum()) and not np.isfinite(out).all():
        raise ModelOutputError(f"model {spec.name} returned NaN or inf probabilities")
    return out


def build_plan(
    slide: Slide,
    config: PlanConfig,
    channels: int,
    budget: int,
    mask: object = None,
    engine: Engine = "streaming",
) -> Plan:
    """Plan a slide: grid, tissue filtering, order, chunk bookkeeping.

    The dense engine gets one strip: it needs no bound, and halo patches
    would be added twice into its whole canvas.
    """
    keep = None
    tissue = resolve_mask(mask, slide)
    if tissue is not None:
        out_shape = output_shape(slide.shape, slide.mpp, config.mpp)
        origins = grid_origins(out_shape, config.out_hw, config.stride_hw)
        keep = patches_touching(tissue, origins, config.out_hw, out_shape)
    return make_plan(
        slide.shape, slide.mpp, config, channels, budget, keep, strips=engine == "streaming"
    )


def _merge_all(
    spec: ModelSpec, slide: Slide, plan: Plan, merger: Merger, opts: dict[str, Any]
) -> None:
    """The main loop: batches in plan order through the model into the merger."""
    device = opts["device"]
    on_cpu = device == "cpu"  # elsewhere uint8 batches travel and are preprocessed there
    loader = make_loader(
        slide, plan, opts["batch_size"], opts["workers"], not on_cpu,
        spec.preprocess if on_cpu else None,
    )  # fmt: skip
    bar = tqdm(total=plan.n_patches, unit="patch", disable=not opts["progress"], smoothing=0.1)
    trimmer = _malloc.HeapTrimmer()
    with bar:
        for batch, indices in loader:
            merger.add(_infer(spec, batch, plan, device), indices.numpy())
            trimmer.tick()
            bar.update(len(indices))
            bar.set_postfix(live=f"{merger.live_bytes / 2**20:.0f}MiB", refresh=False)


def segment(
    slide: Slide | str | Path,
    model: str | Path | nn.Module | ModelSpec = "passthrough",
    config: PlanConfig | None = None,
    out: str | Path = "out.zarr",
    *,
    engine: Engine = "streaming",
    budget: int = DEFAULT_BUDGET,
    mask: object = None,
    batch_size: int = 8,
    workers: int = 0,
    device: str = "cpu",
    overwrite: bool = False,
    progress: bool = True,
    dtype: str = "float32",
    spill_dir: str | Path | None = None,
    threads: int | None = None,
    probabilities: bool = True,
) -> SegmentResult:
    """Segment ``slide`` with ``model`` into the zarr group ``out``.

    ``engine="streaming"`` holds at most ``budget`` bytes of merge buffers;
    ``"dense"`` is the whole-canvas reference. ``mask`` is ``None``,
    ``"auto"``, an image path or a boolean array (see :mod:`harness.mask`).
    ``threads`` sets torch's intra-op threads for this process (``None``: torch's
    default); one thread is often faster on small CPU models when cores are shared.
    ``probabilities=False`` writes the label map only (the merge is the same).
    """
    t0 = time.time()
    _configure_process(threads)
    if engine not in ("streaming", "dense"):
        raise ConfigError(f"engine must be 'streaming' or 'dense', got {engine!r}")
    if isinstance(slide, str | Path):
        from harness.slides import open_slide

        slide = open_slide(slide)
    config = config or PlanConfig()
    spec = model if isinstance(model, ModelSpec) else _load(model, config)
    channels = _prepare_model(spec, config, device)
    write_baseline()  # for a measuring parent: RSS after imports and model load
    t_plan = time.time()
    plan = build_plan(slide, config, channels, budget, mask, engine)
    _fit_read_cache(slide, plan)
    classes = spec.classes or tuple(f"class{k}" for k in range(channels))
    meta = _meta(slide, plan, spec, classes, engine)
    writer = ZarrOutput(out, plan, meta, dtype, overwrite, probabilities)
    t_inf = time.time()
    opts = {"device": device, "batch_size": batch_size, "workers": workers, "progress": progress}
    stats, t_fin = _run_engine(spec, slide, plan, writer, engine, budget, spill_dir, opts)
    times = (t0, t_plan, t_inf, t_fin, time.time())
    return _result(str(out), engine, spec.name, slide, plan, stats, budget, times)


def _fit_read_cache(slide: Slide, plan: Plan) -> None:
    """Shrink a slide's decoded-tile cache (where it has one) to what the sweep revisits."""
    fit_cache = getattr(slide, "fit_cache", None)
    if callable(fit_cache):
        fit_cache(plan.read_band())


def _result(
    out: str, engine: Engine, model: str, slide: Slide, plan: Plan, stats: MergeStats,
    budget: int, times: tuple[float, float, float, float, float],
) -> SegmentResult:  # fmt: skip
    """The record of a finished run; ``times`` = start, plan, inference, finalise, end."""
    t0, t_plan, t_inf, t_fin, t1 = times
    return SegmentResult(
        output=out, engine=engine, model=model, patches=plan.n_unique,
        patch_runs=plan.n_patches, patches_masked_out=plan.patches_masked_out,
        chunks_written=stats.chunks_written,
        peak_live_bytes=stats.peak_live_bytes, spill_bytes=stats.spill_bytes,
        reload_bytes=stats.reload_bytes, budget_bytes=budget, wall_s=t1 - t0,
        slide_shape=slide.shape, out_shape=plan.out_shape,
        megapixels_per_s=plan.out_shape[0] * plan.out_shape[1] / 1e6 / max(t1 - t0, 1e-9),
        phases={"plan": (t_plan, t_inf), "inference": (t_inf, t_fin), "finalise": (t_fin, t1)},
    )  # fmt: skip


def _configure_process(threads: int | None) -> None:
    """Process-wide settings: the malloc policy, and torch threads when asked."""
    _malloc.configure()
    if threads is not None:
        if threads < 1:
            raise ConfigError(f"threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)


def _run_engine(
    spec: ModelSpec,
    slide: Slide,
    plan: Plan,
    writer: ZarrOutput,
    engine: Engine,
    budget: int,
    spill_dir: str | Path | None,
    opts: dict[str, Any],
) -> tuple[MergeStats, float]:
    """Run every batch through the merger; return its statistics and when inference ended."""
    sink = ThreadedSink(writer)
    merger: Merger = (
        StreamingMerger(plan, sink, budget, spill_dir)
        if engine == "streaming"
        else DenseMerger(plan, sink)
    )
    try:
        _merge_all(spec, slide, plan, merger, opts)
        t_fin = time.time()
        stats = merger.finish()
        sink.finish({"chunks_written": stats.chunks_written})
    except BaseException:
        sink.abort()
        raise
    finally:
        merger.close()
    return stats, t_fin


def _load(model: str | Path | nn.Module, config: PlanConfig) -> ModelSpec:
    try:
        return load_model(model, out_size=config.out_hw)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc


def _meta(
    slide: Slide, plan: Plan, spec: ModelSpec, classes: tuple[str, ...], engine: str
) -> dict[str, Any]:
    return {
        "mpp": plan.config.mpp or slide.mpp,
        "classes": list(classes),
        "model": spec.name,
        "engine": engine,
        "plan": plan.config.to_dict(),
        "slide": {"shape": list(slide.shape), "mpp": slide.mpp, "type": type(slide).__name__},
        "uncovered": "probabilities NaN, labels 255",
    }
