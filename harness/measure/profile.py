"""Profile one segmentation: memray capture + flame graph + RSS timeline by phase.

The run happens under ``memray run --native --follow-fork``, so its RSS
includes memray's own overhead (a few tens of MiB, more with many small
allocations); use :mod:`harness.measure.scaling` for the figures to quote,
and this report to see *where* memory and time go.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from harness.errors import HarnessError
from harness.measure.memray_capture import FlameGraph, flamegraph
from harness.measure.plots import plot_timeline
from harness.measure.runner import Measurement, run_command

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

#: Flags ``profile`` adds to the segment command when the user did not.
_ALWAYS = ("--json", "--no-progress", "--overwrite")


@dataclass(frozen=True)
class ProfileReport:
    """Files written by :func:`run_profile` and the measurement behind them."""

    report_dir: Path
    capture: Path
    flamegraph: FlameGraph | None
    rss_png: Path
    summary: Path
    measurement: Measurement


def profile_argv(slide: str, segment_args: Sequence[str], report_dir: Path) -> list[str]:
    """The segment command: ``segment_args`` plus ``--out`` and the flags it needs."""
    args = list(segment_args)
    if "--out" not in args:
        args += ["--out", str(report_dir / "output.zarr")]
    args += [flag for flag in _ALWAYS if flag not in args]
    return [sys.executable, "-m", "harness", "segment", slide, *args]


def _summary(
    measured: Measurement, segment: dict[str, Any] | None, files: dict[str, Any]
) -> dict[str, Any]:
    return {
        "measurement": measured.to_dict(timeline=True),
        "segment": segment,
        "files": files,
        "notes": (
            "peak_rss_bytes: sampled whole-tree RSS, inflated by memray's overhead; "
            "memray.peak_bytes: heap high-water mark of the root process."
        ),
    }


def run_profile(
    slide: str,
    segment_args: Sequence[str],
    report_dir: Path,
    *,
    period_s: float = 0.01,
    with_flamegraph: bool = True,
) -> ProfileReport:
    """Run one segmentation under memray and the RSS sampler; write the report.

    Writes ``capture.bin``, ``flamegraph.html``, ``rss.png`` (phases from the
    segment JSON shaded) and ``summary.json`` (measurement with its timeline,
    the segment JSON, memray peaks) into ``report_dir``.

    Raises
    ------
    HarnessError
        If the segmentation fails (its stderr tail is in the message).
    """
    report_dir.mkdir(parents=True, exist_ok=True)
    capture = report_dir / "capture.bin"
    for stale in report_dir.glob("capture.bin*"):
        stale.unlink()  # memray --force overwrites the root file only
    argv = profile_argv(slide, segment_args, report_dir)
    measured = run_command(argv, memray_file=capture, period_s=period_s).check()
    segment = measured.stdout_json()
    html = flamegraph(capture, report_dir / "flamegraph.html") if with_flamegraph else None
    png = plot_timeline(
        measured.timeline,
        report_dir / "rss.png",
        start=measured.started_at,
        phases=segment.get("phases"),
        baseline_bytes=measured.baseline_rss_bytes,
        budget_bytes=segment.get("budget_bytes"),
    )
    files = {
        "capture": str(capture),
        "rss_png": str(png),
        "flamegraph": None if html is None else str(html.path),
        "flamegraph_native": None if html is None else html.native,
        "flamegraph_note": None if html is None else html.note,
    }
    summary = report_dir / "summary.json"
    summary.write_text(json.dumps(_summary(measured, segment, files), indent=2, default=str))
    if measured.memray is None:
        raise HarnessError(f"memray wrote no capture at {capture}")
    return ProfileReport(report_dir, capture, html, png, summary, measured)
