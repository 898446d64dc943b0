"""Report a side-by-side study: ``versus.json``, a text table, targets and a plot."""

from __future__ import annotations

import itertools
import json
import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

    from harness.peers.versus import EngineRun, SizeResult, VersusConfig

GB = 1e9
#: Issue 6 targets: ours at most this share of the peer's peak RSS and wall time.
RSS_RATIO_TARGET = 0.10
WALL_RATIO_TARGET = 0.25
#: Wall time may grow at most this much faster than area (64k within 17x of 16k).
LINEARITY_SLACK = 17 / 16


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def targets(results: Sequence[SizeResult]) -> dict[str, Any]:
    """Check the issue's targets on every size where both engines ran.

    Returns per-size RSS and wall ratios (ours / peer) with pass flags, and
    our wall-time growth between successive sizes against their area ratio.
    """
    per_size = []
    for r in results:
        if not (r.ours.ok and r.peer.ok):
            continue
        rss = _ratio(r.ours.peak_rss_bytes, r.peer.peak_rss_bytes)
        wall = _ratio(r.ours.wall_s, r.peer.wall_s)
        per_size.append(
            {
                "size": r.size,
                "rss_ratio": rss,
                "rss_ok": rss is not None and rss <= RSS_RATIO_TARGET,
                "wall_ratio": wall,
                "wall_ok": wall is not None and wall <= WALL_RATIO_TARGET,
            }
        )
    return {"per_size": per_size, "ours_scaling": _scaling([r.ours for r in results])}


def _scaling(runs: Sequence[EngineRun]) -> list[dict[str, Any]]:
    ok = sorted((r for r in runs if r.ok and r.wall_s), key=lambda r: r.area_px)
    steps = []
    for small, big in itertools.pairwise(ok):
        area = big.area_px / small.area_px
        wall = (big.wall_s or 0.0) / (small.wall_s or 1.0)
        steps.append(
            {
                "from": small.size,
                "to": big.size,
                "area_ratio": area,
                "wall_ratio": wall,
                "linear_ok": wall <= area * LINEARITY_SLACK,
            }
        )
    return steps


def study_dict(
    cfg: VersusConfig, results: Sequence[SizeResult], env: dict[str, Any]
) -> dict[str, Any]:
    """Everything ``versus.json`` holds: config, environment, runs, agreement, targets."""
    config = {k: (str(v) if k == "peer_python" else v) for k, v in vars(cfg).items()}
    config["engines"] = list(cfg.engines)
    return {
        "config": config,
        "environment": env,
        "results": [r.to_dict() for r in results],
        "targets": targets(results),
    }


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` as indented JSON (NaN written as null)."""
    path.write_text(json.dumps(_clean(data), indent=2) + "\n")


def _clean(x: Any) -> Any:
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    return x


def _cell(run: EngineRun) -> tuple[str, str, str]:
    if run.skipped:
        pred = run.predicted_peak_bytes
        return ("—" if pred is None else f"(pred {pred / GB:.1f})", "—", "—")
    if not run.ok:
        return ("failed", f"status {run.returncode}", "—")
    return (
        f"{(run.peak_rss_bytes or 0) / GB:.2f}",
        f"{(run.ru_maxrss_bytes or 0) / GB:.2f}",
        f"{run.wall_s or 0:.1f}",
    )


def format_table(results: Sequence[SizeResult]) -> str:
    """A Markdown table: per size, each engine's peak RSS, ru_maxrss, wall and the ratios."""
    head = (
        "| size | ours peak RSS GB | ours ru_maxrss GB | ours wall s "
        "| TIA peak RSS GB | TIA ru_maxrss GB | TIA wall s | RSS ours/TIA | wall ours/TIA "
        "| labels agree | max abs Δp |\n"
    )
    rule = "|" + "---|" * 11 + "\n"
    rows = [head, rule]
    for r in results:
        rss = _ratio(r.ours.peak_rss_bytes, r.peer.peak_rss_bytes) if r.peer.ok else None
        wall = _ratio(r.ours.wall_s, r.peer.wall_s) if r.peer.ok else None
        agree, diff = _agreement_cells(r)
        cells = [f"{r.size}", *_cell(r.ours), *_cell(r.peer)]
        cells += [_fmt(rss, "{:.3f}"), _fmt(wall, "{:.3f}"), agree, diff]
        rows.append("| " + " | ".join(cells) + " |\n")
    notes = [f"- {r.size}: TIAToolbox {r.peer.skipped}\n" for r in results if r.peer.skipped]
    return "".join(rows) + ("\n" + "".join(notes) if notes else "")


def _agreement_cells(r: SizeResult) -> tuple[str, str]:
    a = r.agreement
    if a is None:
        return "—", "—"
    return f"{a.overall.label_agreement:.6f}", _fmt(a.overall.prob_max_abs_diff, "{:.2e}")


def _fmt(x: float | None, spec: str) -> str:
    return "—" if x is None else spec.format(x)


def plot(results: Sequence[SizeResult], path: Path) -> None:
    """Peak RSS and wall time vs slide size, both engines, log axes (matplotlib Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_rss, ax_wall) = plt.subplots(1, 2, figsize=(11, 4.2))
    for engine, style in (("ours", "o-"), ("tiatoolbox", "s-")):
        runs = [r.ours if engine == "ours" else r.peer for r in results]
        ok = [r for r in runs if r.ok]
        sizes = [r.size for r in ok]
        ax_rss.plot(sizes, [(r.peak_rss_bytes or 0) / GB for r in ok], style, label=engine)
        ax_wall.plot(sizes, [r.wall_s or 0 for r in ok], style, label=engine)
        skipped = [r for r in runs if r.skipped and r.predicted_peak_bytes]
        if skipped:
            ax_rss.plot(
                [r.size for r in skipped],
                [(r.predicted_peak_bytes or 0) / GB for r in skipped],
                "x",
                color="grey",
                label=f"{engine} predicted (skipped)",
            )
    _axes(ax_rss, "peak RSS of process tree (GB)")
    _axes(ax_wall, "wall time (s)")
    fig.suptitle("wsi-harness vs TIAToolbox SemanticSegmentor")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _axes(ax: Any, ylabel: str) -> None:
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("slide side (pixels at processing mpp)")
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
