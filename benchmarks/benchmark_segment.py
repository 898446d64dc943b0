"""End-to-end segmentation: streaming vs dense, slide sizes, budgets, models.

``peakmem_*`` is the ``ru_maxrss`` of the benchmark process, setup included:
read each one against the ``peakmem_reference`` beside it (same setup, empty
body). The ``track_*`` figures of :class:`SegmentFigures` come from fresh
processes (process-tree RSS) and memray (heap high-water mark).
"""

from __future__ import annotations

from typing import Any

from benchmarks.common import (
    SKIP_SLOW,
    VARIANTS,
    OneShot,
    Scratch,
    dense_fits,
    grid,
    make_slide,
    require,
    run_segment,
)


def _skip_invalid(size: int, variant: str, model: str = "passthrough") -> None:
    """Skip dense where its canvas would not fit, and the small CNN on big slides if slow."""
    if VARIANTS[variant][0] == "dense" and not dense_fits(size):
        raise NotImplementedError(f"dense canvas of a {size} slide does not fit")
    if SKIP_SLOW and model != "passthrough" and size > 2048:
        raise NotImplementedError("ASV_SKIP_SLOW: small CNN only on the smallest slide")


class Segment(OneShot):
    """Whole runs, streaming vs dense, per slide size and model (default 256 MB budget)."""

    params = (
        grid(2048, 8192, slow=(16384,)),
        grid("streaming", "dense"),
        grid("passthrough", "tiny-cnn"),
    )
    param_names = ("size", "engine", "model")
    timeout = 900

    def setup(self, size: int, engine: str, model: str) -> None:
        """Describe the slide; skip combinations that do not fit."""
        self.scratch = Scratch()  # first: asv calls teardown after a skip too
        _skip_invalid(size, engine, model)
        require("harness.segment", "segment")
        self.slide = make_slide(size)

    def teardown(self, size: int, engine: str, model: str) -> None:
        """Delete the output."""
        self.scratch.close()

    def time_segment(self, size: int, engine: str, model: str) -> None:
        """Wall time of one run."""
        run_segment(self.slide, self.scratch.path("out.zarr"), engine, model)

    def peakmem_segment(self, size: int, engine: str, model: str) -> None:
        """Peak RSS of the process over one run."""
        run_segment(self.slide, self.scratch.path("out.zarr"), engine, model)

    def peakmem_reference(self, size: int, engine: str, model: str) -> None:
        """Peak RSS of setup alone: subtract it from ``peakmem_segment``."""


class SegmentBudget(OneShot):
    """Streaming under a tight budget: narrow strips (halo re-runs) vs raster order (spills)."""

    params = (grid(2048, slow=(8192,)), grid("streaming", "streaming-8MB", "raster-8MB"))
    param_names = ("size", "variant")
    timeout = 600

    def setup(self, size: int, variant: str) -> None:
        """Describe the slide."""
        self.scratch = Scratch()  # first: asv calls teardown after a skip too
        require("harness.segment", "segment")
        self.slide = make_slide(size)

    def teardown(self, size: int, variant: str) -> None:
        """Delete the output and spill files."""
        self.scratch.close()

    def time_segment(self, size: int, variant: str) -> None:
        """Wall time of one run."""
        run_segment(self.slide, self.scratch.path("out.zarr"), variant)

    def peakmem_segment(self, size: int, variant: str) -> None:
        """Peak RSS of the process over one run."""
        run_segment(self.slide, self.scratch.path("out.zarr"), variant)

    def peakmem_reference(self, size: int, variant: str) -> None:
        """Peak RSS of setup alone."""


FIGURE_SIZES = grid(2048, slow=(8192,))
FIGURE_VARIANTS = grid("streaming", "raster-8MB", "dense")


def _figures_cache() -> dict[str, Any]:
    """Run every figure case once (passthrough model); key ``"size|variant"``."""
    from benchmarks import figures

    scratch = Scratch()
    try:
        return {
            f"{size}|{variant}": case
            for size in FIGURE_SIZES
            for variant, case in figures.measure_size(size, FIGURE_VARIANTS, scratch).items()
        }
    finally:
        scratch.close()


class SegmentFigures:
    """Non-time figures of whole runs with the ``passthrough`` model, one run per case."""

    params = (FIGURE_SIZES, FIGURE_VARIANTS)
    param_names = ("size", "variant")
    timeout = 900

    def setup_cache(self) -> dict[str, Any]:
        """Run the cases (fresh processes where ``harness.measure`` exists)."""
        try:
            require("harness.segment", "segment")
        except NotImplementedError:
            return {}  # asv counts a raising setup_cache as a failure, not a skip
        return _figures_cache()

    setup_cache.timeout = 1800  # type: ignore[attr-defined]

    def setup(self, cache: dict[str, Any], size: int, variant: str) -> None:
        """Pick this case's figures; skip cases not run."""
        self.case = cache.get(f"{size}|{variant}")
        if self.case is None:
            raise NotImplementedError(f"{variant} not run at {size}")

    def _figure(self, name: str) -> float:
        value = self.case.get(name)
        if value is None:
            from benchmarks.common import SkipNotImplemented

            raise SkipNotImplemented(f"{name} not measured at this commit")
        return float(value)

    def track_tree_peak_rss(self, cache: dict[str, Any], size: int, variant: str) -> float:
        """Peak summed RSS of the run's process tree (fresh process, imports included)."""
        return self._figure("tree_peak_rss")

    track_tree_peak_rss.unit = "bytes"  # type: ignore[attr-defined]

    def track_memray_heap_peak(self, cache: dict[str, Any], size: int, variant: str) -> float:
        """memray heap high-water mark of the ``segment`` call alone."""
        return self._figure("memray_heap_peak")

    track_memray_heap_peak.unit = "bytes"  # type: ignore[attr-defined]

    def track_peak_live_bytes(self, cache: dict[str, Any], size: int, variant: str) -> float:
        """The merger's own peak of accumulator bytes."""
        return self._figure("peak_live_bytes")

    track_peak_live_bytes.unit = "bytes"  # type: ignore[attr-defined]

    def track_spill_bytes(self, cache: dict[str, Any], size: int, variant: str) -> float:
        """Partial sums written to scratch (raster order under a tight budget)."""
        return self._figure("spill_bytes")

    track_spill_bytes.unit = "bytes"  # type: ignore[attr-defined]

    def track_megapixels_per_s(self, cache: dict[str, Any], size: int, variant: str) -> float:
        """Output megapixels per wall second of the run."""
        return self._figure("megapixels_per_s")

    track_megapixels_per_s.unit = "Mpx/s"  # type: ignore[attr-defined]

    def track_ratio_to_floor(self, cache: dict[str, Any], size: int, variant: str) -> float:
        """Run throughput over the physical floor's (read every patch, write once)."""
        return self._figure("ratio_to_floor")

    track_ratio_to_floor.unit = "ratio"  # type: ignore[attr-defined]

    def track_max_abs_diff_to_dense(self, cache: dict[str, Any], size: int, variant: str) -> float:
        """Largest absolute probability difference to the dense reference (0: bitwise)."""
        return self._figure("max_abs_diff")

    track_max_abs_diff_to_dense.unit = "probability"  # type: ignore[attr-defined]
