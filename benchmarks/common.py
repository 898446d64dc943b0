"""Shared pieces of the asv suite: parameter grids, slides, sinks and the physical floor.

Everything here imports only the standard library and numpy at module level,
and ``harness`` inside functions, so that asv can discover the suite in an
environment built from any commit; a benchmark whose piece of ``harness``
does not exist at that commit skips itself (``NotImplementedError``).

Environment variables
---------------------
``ASV_SKIP_SLOW=1``
    Drop the largest cases (16384-pixel slides, the small CNN above 2048).
``WSI_BENCH_SMALLEST=1``
    Keep only the first value of every parameter (the CI smoke pass).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Callable

    from numpy.typing import NDArray

try:  # raised inside a benchmark body (not setup) to skip it
    from asv_runner.benchmarks.mark import SkipNotImplemented
except ImportError:  # outside asv (the smoke runner)
    SkipNotImplemented = NotImplementedError  # type: ignore[assignment,misc]

MiB = 2**20
SLIDE_MPP = 0.5
DENSE_CANVAS_LIMIT = 3 * 2**30  # bytes of float32 sums + weights the dense reference may hold
DEFAULT_BUDGET = "256MB"


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


SKIP_SLOW = _flag("ASV_SKIP_SLOW")
SMALLEST = _flag("WSI_BENCH_SMALLEST")


def grid(*values: Any, slow: tuple[Any, ...] = ()) -> list[Any]:
    """``values`` plus ``slow`` (unless ``ASV_SKIP_SLOW``); only the first if smallest."""
    full = [*values, *(() if SKIP_SLOW else slow)]
    return full[:1] if SMALLEST else full


def require(module: str, name: str | None = None) -> Any:
    """Import ``module`` (and its attribute ``name``) or skip: older commits lack it."""
    import importlib

    try:
        mod = importlib.import_module(module)
        return mod if name is None else getattr(mod, name)
    except (ImportError, AttributeError) as exc:
        raise NotImplementedError(f"{module}.{name or ''} not in this commit: {exc}") from exc


def dense_fits(size: int, channels: int = 3) -> bool:
    """Whether the dense reference's whole canvas of a ``size`` slide fits the limit."""
    return (channels + 1) * 4 * size * size <= DENSE_CANVAS_LIMIT


def parse_budget(text: str) -> int:
    """``"256MB"`` -> bytes (decimal units, as the CLI reads them)."""
    units = {"KB": 10**3, "MB": 10**6, "GB": 10**9}
    return int(float(text[:-2]) * units[text[-2:].upper()])


class OneShot:
    """asv timing settings for slow, whole-run benchmarks: one call per sample, no warm-up."""

    number = 1
    repeat = (1, 3, 30.0)
    rounds = 1
    warmup_time = 0.0


class TiledSlide:
    """Stand-in slide for commits without ``SyntheticSlide``: a seeded 512 px tile, repeated.

    O(1) memory like the synthetic slide, but reads cost a copy, not a render,
    so results from such commits are not comparable with later ones on time.
    """

    def __init__(self, size: int, seed: int = 0, tile: int = 512) -> None:
        rng = np.random.default_rng(seed)
        self.tile = rng.integers(0, 256, (tile, tile, 3), dtype=np.uint8)
        self.shape = (size, size)
        self.mpp = SLIDE_MPP
        self.downsamples = (1.0,)

    def read(self, box: tuple[int, int, int, int], mpp: float | None = None) -> NDArray[np.uint8]:
        """Read ``box`` at level 0 (white outside the slide)."""
        if mpp not in (None, self.mpp):
            raise NotImplementedError("TiledSlide reads only at its own mpp")
        x, y, w, h = box
        t = self.tile.shape[0]
        ys, xs = np.arange(y, y + h), np.arange(x, x + w)
        out = self.tile[np.ix_(ys % t, xs % t)]
        out[(ys < 0) | (ys >= self.shape[0])] = 255
        out[:, (xs < 0) | (xs >= self.shape[1])] = 255
        return out


def make_slide(size: int, seed: int = 0) -> Any:
    """The benchmark slide: ``SyntheticSlide`` (size x size, 0.5 mpp), else :class:`TiledSlide`."""
    try:
        from harness.slides import SyntheticSlide
    except ImportError:
        return TiledSlide(size, seed)
    return SyntheticSlide(size, size, mpp=SLIDE_MPP, seed=seed)


def plan_config(**overrides: Any) -> Any:
    """The default geometry: 256 px patches, stride 128, 256 px chunks, at 0.5 mpp."""
    config_cls = require("harness.plan", "PlanConfig")
    return config_cls(**{"patch": 256, "stride": 128, "chunk": 256, "mpp": SLIDE_MPP, **overrides})


class NullSink:
    """A :class:`~harness.merge.ChunkSink` that drops chunks, to time the merge alone."""

    def __init__(self) -> None:
        self.chunks = 0

    def write_chunk(self, box: Any, probs: Any, labels: Any) -> None:
        """Count the chunk and forget it."""
        self.chunks += 1


class Scratch:
    """A temporary directory for outputs, removed by :meth:`close`."""

    def __init__(self, prefix: str = "wsi-bench-") -> None:
        self.root = Path(tempfile.mkdtemp(prefix=prefix))

    def path(self, name: str) -> Path:
        """A path inside the scratch directory."""
        return self.root / name

    def close(self) -> None:
        """Delete everything written."""
        shutil.rmtree(self.root, ignore_errors=True)


def floor_chunk(config: Any, channels: int = 3, seed: int = 0) -> tuple[Any, Any]:
    """One chunk of seeded probabilities ``(h, w, C)`` and their labels, written everywhere."""
    seeded = require("harness.models", "seeded_probabilities")
    ch, cw = config.chunk_hw
    probs = seeded((1, channels, ch, cw), seed)[0]
    return np.ascontiguousarray(probs.transpose(1, 2, 0)), probs.argmax(axis=0).astype(np.uint8)


def floor_plan(slide: Any, config: Any, channels: int = 3) -> Any:
    """The one-strip plan of ``slide``: every patch once, in raster order."""
    make_plan = require("harness.plan", "make_plan")
    return make_plan(slide.shape, slide.mpp, config, channels, 2**40, None, strips=False)


def read_all_patches(slide: Any, plan: Any) -> None:
    """Read every input patch of ``plan`` once, in plan order."""
    for i in range(plan.n_patches):
        slide.read(plan.input_box(i), plan.config.mpp)


def _floor_writer(plan: Any, out: Path) -> Any:
    """A chunk writer for ``out`` in whatever form this commit has."""
    meta = {"benchmark": "physical floor"}
    try:
        store_cls = require("harness.output", "ZarrStore")
        writer_cls = require("harness.output", "ChunkWriter")
    except NotImplementedError:  # commits before the run-state output package
        try:
            old = require("harness.output", "ZarrOutput")
        except NotImplementedError:
            old = require("harness.output", "OutputWriter")
        return old(out, plan, meta, "float32", True)
    shutil.rmtree(out, ignore_errors=True)
    store = store_cls.create(out, plan.out_shape, plan.config.chunk_hw, plan.channels, meta)
    return writer_cls(store)


def write_all_chunks(plan: Any, out: Path) -> None:
    """Write every touched output chunk of ``plan`` once (seeded probabilities)."""
    writer = _floor_writer(plan, out)
    probs, labels = floor_chunk(plan.config, plan.channels)
    for c in np.flatnonzero(plan.expected):
        y0, y1, x0, x1 = plan.chunk_box(int(c))
        h, w = y1 - y0, x1 - x0
        writer.write_chunk((y0, y1, x0, x1), probs[:h, :w], labels[:h, :w])


def physical_floor(slide: Any, config: Any, out: Path, channels: int = 3) -> int:
    """Read every input patch once and write every output chunk once: no model, no merge.

    Returns the number of output pixels, for a throughput.
    """
    plan = floor_plan(slide, config, channels)
    read_all_patches(slide, plan)
    write_all_chunks(plan, out)
    return int(plan.out_shape[0] * plan.out_shape[1])


def megapixels(size: int) -> float:
    """Output megapixels of a ``size`` x ``size`` slide at the benchmark resolution."""
    return size * size / 1e6


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """``(seconds, result)`` of one call."""
    import time

    t0 = time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, result


#: Merge variants: ``name -> (engine, merge budget, order)``. ``streaming-8MB`` runs narrow
#: column strips (halo patches re-run); ``raster-8MB`` keeps raster order and spills. The
#: merge budget is the merge buffers' share alone (``merge_budget``); ``None`` lets the
#: run's whole budget (the default) decide it.
VARIANTS: dict[str, tuple[str, str | None, str]] = {
    "streaming": ("streaming", None, "strips"),
    "dense": ("dense", None, "strips"),
    "streaming-8MB": ("streaming", "8MB", "strips"),
    "raster-8MB": ("streaming", "8MB", "raster"),
}


def segment_kwargs(variant: str, model: str = "passthrough") -> dict[str, Any]:
    """Keyword arguments of :func:`harness.segment.segment` for one variant.

    Older commits took ``budget`` as the merge budget and no ``merge_budget``;
    :func:`run_segment` falls back to that form there.
    """
    engine, merge, order = VARIANTS[variant]
    kwargs: dict[str, Any] = {
        "model": model,
        "config": plan_config(order=order),
        "engine": engine,
        "batch_size": 16,
        "workers": 0,
        "overwrite": True,
        "progress": False,
    }
    if merge is not None:
        kwargs["merge_budget"] = parse_budget(merge)
    return kwargs


def run_segment(slide: Any, out: Path, variant: str, model: str = "passthrough") -> Any:
    """One end-to-end run; returns the :class:`~harness.segment.SegmentResult`."""
    segment = require("harness.segment", "segment")
    kwargs = segment_kwargs(variant, model)
    try:
        require("harness.config", "RunConfig")
    except NotImplementedError:  # before the run budget: budget meant the merge buffers
        kwargs["budget"] = kwargs.pop("merge_budget", parse_budget(DEFAULT_BUDGET))
    return segment(slide, out=out, **kwargs)
