#!/usr/bin/env python3
"""Wall time of atomic commits + progress records vs plain writes, alternating in one run.

Usage: scripts/commit_overhead.py [SLIDE] [ROUNDS] -- each round runs ``segment`` twice in
fresh processes (atomic, then plain, order alternating), tiny-cnn, labels and probabilities.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from harness.config import RunConfig
from harness.measure import run_command
from harness.measure.scaling import segment_argv


def main(argv: list[str]) -> int:
    """Print per-round walls and the median overhead of the atomic commit."""
    slide = argv[0] if argv else "synthetic:16384"
    rounds = int(argv[1]) if len(argv) > 1 else 3
    run = RunConfig(model="tiny-cnn")
    walls: dict[str, list[float]] = {"atomic": [], "plain": []}
    scratch = Path(tempfile.mkdtemp(prefix="commit-overhead-"))
    try:
        for r in range(rounds):
            modes = ["atomic", "plain"] if r % 2 == 0 else ["plain", "atomic"]
            for mode in modes:
                out = scratch / f"{mode}.zarr"
                env = {**os.environ, "WSI_HARNESS_COMMIT": "plain" if mode == "plain" else ""}
                m = run_command(segment_argv(slide, out, run), env=env).check()
                walls[mode].append(float(m.stdout_json()["wall_s"]))
                shutil.rmtree(out, ignore_errors=True)
                os.sync()
            print(f"round {r + 1}: atomic {walls['atomic'][-1]:.1f} s, plain "
                  f"{walls['plain'][-1]:.1f} s", flush=True)  # fmt: skip
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    a, p = statistics.median(walls["atomic"]), statistics.median(walls["plain"])
    print(json.dumps({"slide": slide, "walls": walls, "median_atomic_s": a,
                      "median_plain_s": p, "overhead": a / p - 1}))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
