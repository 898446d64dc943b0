"""Report a side-by-side study: ``versus.json``, a text table, targets and a plot."""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

    from harness.peers.compare import Agreement
    from harness.peers.versus import EngineRun, SizeResult, VersusConfig

GB = 1e9


@dataclass(frozen=True)
class Target:
    """Issue 16's targets for ours against one peer: ratios ours / peer, where both ran."""

    rss_ratio: float | None
    wall_ratio: float | None
    rss_from_size: int = 0
    """The RSS target applies from this slide side up (at 4k import costs dominate)."""


#: Peak RSS <= 1/10 of TIAToolbox's from 8k and of MONAI's in-RAM merger at 16k, below
#: MONAI's on-disk merger everywhere; wall <= 1/8 of TIAToolbox's, <= 1/4 of MONAI's in-RAM.
TARGETS = {
    "tiatoolbox": Target(0.10, 1 / 8, rss_from_size=8192),
    "monai": Target(0.10, 1 / 4, rss_from_size=16384),
    "monai-zarr": Target(1.0, None),
}
#: Wall time may grow at most this much faster than area (64k within 17x of 16k).
LINEARITY_SLACK = 17 / 16


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def targets(results: Sequence[SizeResult]) -> dict[str, Any]:
    """Check the targets on every size where the reference and a peer both ran.

    Returns, per size and peer, the RSS and wall ratios (reference / peer)
    with pass flags (``None`` where no target applies), and the reference
    engine's wall-time growth between successive sizes against their area ratio.
    """
    per_size = []
    for r in results:
        ref = r.runs.get(r.reference)
        for name, run in r.runs.items():
            if ref is None or name == r.reference or not (ref.ok and run.ok):
                continue
            target = TARGETS.get(name, Target(None, None))
            rss = _ratio(ref.peak_rss_bytes, run.peak_rss_bytes)
            wall = _ratio(ref.wall_s, run.wall_s)
            rss_applies = target.rss_ratio is not None and r.size >= target.rss_from_size
            per_size.append(
                {
                    "size": r.size,
                    "engine": name,
                    "rss_ratio": rss,
                    "rss_target": target.rss_ratio if rss_applies else None,
                    "rss_ok": _ok(rss, target.rss_ratio) if rss_applies else None,
                    "wall_ratio": wall,
                    "wall_target": target.wall_ratio,
                    "wall_ok": _ok(wall, target.wall_ratio),
                }
            )
    refs = [r.runs[r.reference] for r in results if r.reference in r.runs]
    return {"per_size": per_size, "reference_scaling": _scaling(refs)}


def _ok(ratio: float | None, target: float | None) -> bool | None:
    if target is None:
        return None
    return ratio is not None and ratio <= target


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
    config = dict(vars(cfg))
    config["engines"] = list(cfg.engines)
    config["peer_pythons"] = dict(cfg.peer_pythons)
    config["reference"] = cfg.reference
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


def _cells(run: EngineRun) -> list[str]:
    if run.skipped:
        pred = run.predicted_peak_bytes
        return ["skipped" if pred is None else f"skipped (pred {pred / GB:.1f})", "—", "—", "—"]
    if not run.ok:
        return [f"failed (status {run.returncode})", "—", "—", "—"]
    return [
        f"{(run.peak_rss_bytes or 0) / GB:.2f}",
        f"{(run.ru_maxrss_bytes or 0) / GB:.2f}",
        f"{run.wall_s or 0:.1f}",
        f"{run.cpu_s or 0:.1f}",
    ]


def format_table(results: Sequence[SizeResult]) -> str:
    """Markdown: one row per engine per size, ratios and label agreement against the reference."""
    head = (
        "| size | engine | peak RSS GB | ru_maxrss GB | wall s | CPU s | RSS ref/engine "
        "| wall ref/engine | labels agree (common / overall) | max abs Δp |\n"
    )
    rows = [head, "|" + "---|" * 10 + "\n"]
    notes: list[str] = []
    for r in results:
        ref = r.runs.get(r.reference)
        for name, run in r.runs.items():
            both = ref is not None and ref.ok and run.ok and name != r.reference
            rss = _ratio(ref.peak_rss_bytes, run.peak_rss_bytes) if both and ref else None
            wall = _ratio(ref.wall_s, run.wall_s) if both and ref else None
            agree, diff = _agreement_cells(r.agreement.get(name))
            label = f"{name} (reference)" if name == r.reference else name
            cells = [f"{r.size}", label, *_cells(run)]
            cells += [_fmt(rss, "{:.3f}"), _fmt(wall, "{:.3f}"), agree, diff]
            rows.append("| " + " | ".join(cells) + " |\n")
            if run.skipped:
                notes.append(f"- {r.size}, {name}: {run.skipped}\n")
            left = run.detail.get("leftover", {}).get("temp_bytes") if run.ok else None
            if left:
                notes.append(
                    f"- {r.size}, {name}: left {left / 1e6:.0f} MB in the temp folder "
                    "(removed by the runner)\n"
                )
    return "".join(rows) + ("\n" + "".join(notes) if notes else "")


def _agreement_cells(a: Agreement | None) -> tuple[str, str]:
    if a is None:
        return "—", "—"
    common = f"{a.common.label_agreement:.6f}" if a.common.pixels else "—"
    return f"{common} / {a.overall.label_agreement:.6f}", _fmt(
        a.overall.prob_max_abs_diff, "{:.2e}"
    )


def _fmt(x: float | None, spec: str) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else spec.format(x)


_STYLES = ("o-", "s-", "^-", "D-", "v-", "P-", "X-")


def plot(results: Sequence[SizeResult], path: Path) -> None:
    """Peak RSS and wall time vs slide size, one line per engine, log axes (matplotlib Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_rss, ax_wall) = plt.subplots(1, 2, figsize=(11, 4.2))
    names = list(dict.fromkeys(name for r in results for name in r.runs))
    for name, style in zip(names, itertools.cycle(_STYLES), strict=False):
        runs = [r.runs[name] for r in results if name in r.runs]
        ok = [r for r in runs if r.ok]
        line = ax_rss.plot([r.size for r in ok], [(r.peak_rss_bytes or 0) / GB for r in ok],
                           style, label=name)  # fmt: skip
        ax_wall.plot([r.size for r in ok], [r.wall_s or 0 for r in ok], style, label=name,
                     color=line[0].get_color())  # fmt: skip
        skipped = [r for r in runs if r.skipped and r.predicted_peak_bytes]
        if skipped:
            ax_rss.plot(
                [r.size for r in skipped],
                [(r.predicted_peak_bytes or 0) / GB for r in skipped],
                "x",
                color=line[0].get_color(),
                label=f"{name} predicted (skipped)",
            )
    _axes(ax_rss, "peak RSS of process tree (GB)")
    _axes(ax_wall, "wall time (s)")
    fig.suptitle("Peak memory and wall time against slide size: " + ", ".join(names))
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
