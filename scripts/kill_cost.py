#!/usr/bin/env python3
"""Kill a real segmentation at a random moment; report what the kill cost against the bound.

Usage: scripts/kill_cost.py SLIDE OUT.zarr [SEED] -- segment options...
Runs ``wsi-harness segment SLIDE --out OUT.zarr ...`` with its progress bar, SIGKILLs it
at a random moment of its run (uniform over 5-95 % of an estimate from the first
progress lines), then prints one JSON line: patches completed before the kill (the
bar's last count), patches a resume must run again, and ``loss_bound`` of the plan.
"""

from __future__ import annotations

import json
import random
import re
import signal
import subprocess
import sys
import threading
import time

from harness.status import kill_cost

COUNT = re.compile(r"(\d+)/(\d+)")


def main(argv: list[str]) -> int:
    """Run, kill, measure."""
    if "--" not in argv or len(argv[: argv.index("--")]) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    head, options = argv[: argv.index("--")], argv[argv.index("--") + 1 :]
    slide, out = head[0], head[1]
    rng = random.Random(int(head[2]) if len(head) > 2 else 0)
    argv_run = [sys.executable, "-m", "harness", "segment", slide, "--out", out, *options]
    proc = subprocess.Popen(argv_run, stderr=subprocess.PIPE, text=True, bufsize=1)
    seen: list[tuple[float, int, int]] = []

    def read() -> None:
        assert proc.stderr is not None
        for chunk in iter(lambda: proc.stderr.read(256), ""):  # type: ignore[union-attr]
            for done, total in COUNT.findall(chunk):
                seen.append((time.monotonic(), int(done), int(total)))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    while len(seen) < 20 and proc.poll() is None:
        time.sleep(0.2)
    t0, d0, total = seen[0]
    rate = (seen[-1][1] - d0) / max(seen[-1][0] - t0, 1e-3)
    eta = (total - seen[-1][1]) / max(rate, 1e-3)
    time.sleep(rng.uniform(0.05, 0.95) * eta)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    reader.join(timeout=5)
    completed = max(d for _, d, _ in seen)
    redone, bound = kill_cost(out, completed)
    print(json.dumps({"slide": slide, "completed": completed, "total": total,
                      "redone": redone, "bound": bound}))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
