"""Figures for scaling studies and profiles (matplotlib, Agg backend, loaded lazily)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from pathlib import Path

    from harness.measure.rss import RssTimeline
    from harness.measure.scaling import GrowthVerdict, ScalingRecord

_MIB = 2**20
_PHASE_COLOURS = {"plan": "tab:blue", "inference": "tab:green", "finalise": "tab:orange"}


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_scaling(
    records: Sequence[ScalingRecord],
    budget_bytes: int | None,
    path: Path,
    verdict: GrowthVerdict | None = None,
) -> Path:
    """Peak RSS against slide area, one line per engine, log-log.

    The run budget bounds what a run allocates above its baseline, so the
    largest baseline measured (dotted) and baseline + budget (dashed) are drawn:
    a bounded engine stays under the dashed line at every size. Log y keeps a
    flat streaming line readable beside a dense one that grows by orders of
    magnitude. Skipped runs appear as hollow markers at their predicted peak;
    the growth verdict, when one was asked for, is in the title.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    drawn = [
        r for r in records if r.status == "ok" or (r.status == "skipped" and r.predicted_peak_bytes)
    ]
    for engine in dict.fromkeys(r.engine for r in drawn):
        _plot_engine(ax, [r for r in drawn if r.engine == engine], engine)
    _plot_baseline(ax, records, budget_bytes)
    if drawn:
        ax.set_xscale("log")
        ax.set_yscale("log")
    else:  # nothing to draw on log axes: say so instead of a blank (or warning) plot
        ax.text(0.5, 0.5, "no run measured or predicted", ha="center", transform=ax.transAxes)
    ax.set_xlabel("slide area (megapixels, level 0)")
    ax.set_ylabel("peak RSS (MiB)")
    title = "Peak memory against slide size"
    if verdict is not None:
        title += f"\n{verdict.describe()}"
    ax.set_title(title, fontsize="medium")
    ax.grid(True, which="both", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:  # matplotlib warns on a legend with nothing in it
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _plot_engine(ax: Any, records: Sequence[ScalingRecord], engine: str) -> None:
    """One engine's measured peaks (a line) and skipped runs' predictions (hollow markers)."""
    ok = sorted((r for r in records if r.status == "ok"), key=lambda r: r.size)
    line = ax.plot(
        [r.area / 1e6 for r in ok],
        [(r.peak_rss_bytes or 0) / _MIB for r in ok],
        marker="o",
        label=f"{engine} (process-tree peak RSS)",
    )
    skipped = [r for r in records if r.status == "skipped"]
    if skipped:
        ax.scatter(
            [r.area / 1e6 for r in skipped],
            [(r.predicted_peak_bytes or 0) / _MIB for r in skipped],
            facecolors="none",
            edgecolors=line[0].get_color(),
            label=f"{engine} skipped (predicted)",
        )


def _plot_baseline(ax: Any, records: Sequence[ScalingRecord], budget_bytes: int | None) -> None:
    """The largest measured baseline (dotted) and baseline + budget (dashed)."""
    baselines = [r.baseline_rss_bytes for r in records if r.baseline_rss_bytes]
    if not baselines:
        return
    base = max(baselines)
    ax.axhline(base / _MIB, linestyle=":", color="grey", label="baseline (after imports)")
    if budget_bytes is not None:
        ax.axhline((base + budget_bytes) / _MIB, linestyle="--", color="grey",
                   label="baseline + budget")  # fmt: skip


def plot_timeline(
    timeline: RssTimeline,
    path: Path,
    *,
    start: float,
    phases: Mapping[str, Sequence[float]] | None = None,
    baseline_bytes: int | None = None,
    budget_bytes: int | None = None,
) -> Path:
    """Process-tree RSS over time, phases shaded, baseline and baseline + budget drawn."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.5))
    t = [s - start for s in timeline.times]
    ax.plot(t, [b / _MIB for b in timeline.rss_bytes], color="black", lw=1, label="tree RSS")
    for name, (begin, end) in (phases or {}).items():
        colour = _PHASE_COLOURS.get(name, "tab:purple")
        ax.axvspan(begin - start, end - start, color=colour, alpha=0.15, label=name)
    if baseline_bytes is not None:
        ax.axhline(baseline_bytes / _MIB, ls=":", color="grey", label="baseline")
        if budget_bytes is not None:
            top = (baseline_bytes + budget_bytes) / _MIB
            ax.axhline(top, ls="--", color="grey", label="baseline + budget")
    ax.set_xlabel("seconds since start")
    ax.set_ylabel("RSS (MiB)")
    ax.set_title(f"Process-tree RSS (peak {timeline.peak_bytes / _MIB:.0f} MiB)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small", loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
