"""Non-time figures of whole runs, measured once per case for ``SegmentFigures``.

* process-tree peak RSS: the run in a fresh interpreter under
  :func:`harness.measure.run_callable` (imports and model load included, as a
  user sees it); absent at commits without ``harness.measure``.
* memray heap peak: ``memray.Tracker`` around the ``segment`` call in this
  process, so it counts only what the run itself allocates.
* spill bytes, merger peak live bytes, Mpx/s: the run's ``SegmentResult``.
* ratio to floor: run Mpx/s over :func:`benchmarks.common.physical_floor` Mpx/s.
* max abs difference to the dense output of the same slide.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from benchmarks.common import (
    VARIANTS,
    dense_fits,
    make_slide,
    megapixels,
    physical_floor,
    plan_config,
    require,
    run_segment,
    segment_kwargs,
    timed,
)

if TYPE_CHECKING:
    from pathlib import Path

    from benchmarks.common import Scratch


def fresh_process_run(slide: Any, out: Path, variant: str) -> tuple[Any, int | None]:
    """``(SegmentResult, tree peak RSS)``; in-process with no RSS where measure is missing."""
    try:
        from harness.measure import run_callable
    except ImportError:
        return run_segment(slide, out, variant), None
    segment = require("harness.segment", "segment")
    measured = run_callable(segment, slide, out=out, timeout_s=1200, **segment_kwargs(variant))
    if measured.returncode != 0 or measured.result is None:
        raise RuntimeError(f"segment {variant} failed in a fresh process:\n{measured.stderr}")
    return measured.result, int(measured.peak_rss_bytes)


def memray_heap_peak(slide: Any, out: Path, variant: str) -> int:
    """Heap high-water mark of one ``segment`` call, native allocations included."""
    import memray

    capture = out.with_suffix(".memray")
    capture.unlink(missing_ok=True)
    with memray.Tracker(capture):
        run_segment(slide, out, variant)
    peak = int(memray.FileReader(capture).metadata.peak_memory)
    capture.unlink()
    return peak


def floor_megapixels_per_s(slide: Any, scratch: Scratch) -> float:
    """Throughput of the physical floor on ``slide``."""
    seconds, pixels = timed(
        lambda: physical_floor(slide, plan_config(), scratch.path("floor.zarr"))
    )
    return pixels / 1e6 / seconds


def max_abs_diff(out: Path, reference: Path | None) -> float | None:
    """Largest probability difference between two outputs (None without a reference)."""
    if reference is None:
        return None
    compare = require("harness.compare", "compare_outputs")
    return float(compare(out, reference).max_abs_diff)


def measure_case(slide: Any, variant: str, scratch: Scratch, floor: float) -> dict[str, Any]:
    """Every figure of one variant on ``slide``; its output stays in ``scratch``."""
    out = scratch.path(f"{variant}.zarr")
    memray_peak = memray_heap_peak(slide, out, variant)
    result, tree_rss = fresh_process_run(slide, out, variant)
    return {
        "tree_peak_rss": tree_rss,
        "memray_heap_peak": memray_peak,
        "peak_live_bytes": result.peak_live_bytes,
        "spill_bytes": result.spill_bytes,
        "megapixels_per_s": result.megapixels_per_s,
        "ratio_to_floor": result.megapixels_per_s / floor,
        "out": out,
    }


def measure_size(size: int, variants: list[str], scratch: Scratch) -> dict[str, dict[str, Any]]:
    """Figures of ``variants`` on one slide; differences against its dense output."""
    slide = make_slide(size)
    floor = floor_megapixels_per_s(slide, scratch)
    wanted = [v for v in variants if VARIANTS[v][0] != "dense" or dense_fits(size)]
    if dense_fits(size) and "dense" not in wanted:
        wanted.append("dense")  # the reference for the differences
    cases = {v: measure_case(slide, v, scratch, floor) for v in wanted}
    reference = cases["dense"]["out"] if "dense" in cases else None
    for case in cases.values():
        case["max_abs_diff"] = max_abs_diff(case.pop("out"), reference)
        case["floor_megapixels_per_s"] = floor
        case["megapixels"] = megapixels(size)
    return {v: c for v, c in cases.items() if v in variants}
