#!/usr/bin/env python3
"""Summarise repeated ``wsi-harness versus`` studies: every round's ratios and their median.

Usage::

    scripts/versus_rounds.py reports/versus-r1 reports/versus-r2 reports/versus-r3

On a machine whose speed drifts, one study is one sample: run it a few times
and read the per-size median of ours/peer (each ratio is still measured
within one round, minutes apart). Prints a markdown table; reads only the
``versus.json`` files.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path


def _rows(study: Path) -> dict[int, dict[str, float]]:
    data = json.loads((study / "versus.json").read_text())
    rows = {}
    for r in data["results"]:
        ours, peer = r.get("ours") or {}, r.get("tiatoolbox") or {}
        if ours.get("wall_s") and peer.get("wall_s"):
            rows[int(r["size"])] = {
                "ours_wall": ours["wall_s"],
                "peer_wall": peer["wall_s"],
                "ours_cpu": ours["cpu_s"],
                "peer_cpu": peer["cpu_s"],
                "rss": ours["peak_rss_bytes"] / peer["peak_rss_bytes"],
            }
    return rows


def main(argv: list[str]) -> int:
    """Print the table for the studies named in ``argv``."""
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    studies = [_rows(Path(a)) for a in argv]
    sizes = sorted({s for rows in studies for s in rows})
    print("| size | round | ours wall s | TIA wall s | wall ratio | CPU ratio | RSS ratio |")
    print("|---|---|---|---|---|---|---|")
    for size in sizes:
        walls, cpus, rsss = [], [], []
        for k, rows in enumerate(studies, 1):
            if size not in rows:
                continue
            r = rows[size]
            wall, cpu = r["ours_wall"] / r["peer_wall"], r["ours_cpu"] / r["peer_cpu"]
            walls.append(wall)
            cpus.append(cpu)
            rsss.append(r["rss"])
            print(
                f"| {size} | {k} | {r['ours_wall']:.1f} | {r['peer_wall']:.1f} | {wall:.3f} "
                f"| {cpu:.3f} | {r['rss']:.3f} |"
            )
        print(
            f"| {size} | **median** | | | **{statistics.median(walls):.3f}** "
            f"| **{statistics.median(cpus):.3f}** | **{statistics.median(rsss):.3f}** |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
