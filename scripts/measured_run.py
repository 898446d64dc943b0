#!/usr/bin/env python3
"""Run one command in a fresh process under harness.measure; write its record as JSON.

Usage: scripts/measured_run.py OUT.json -- COMMAND ARGS...   (the whole process tree is
sampled; the command's last stdout JSON line, e.g. ``segment --json``, is kept as "result").
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from harness.errors import HarnessError
from harness.measure import run_command


def main(argv: list[str]) -> int:
    """Measure ``argv[2:]`` (after ``--``) and write the record to ``argv[0]``."""
    if len(argv) < 3 or argv[1] != "--":
        print(__doc__, file=sys.stderr)
        return 2
    m = run_command(argv[2:], aggregate=True)
    record = m.to_dict()
    try:
        record["result"] = m.stdout_json()
    except HarnessError:
        record["stderr_tail"] = m.stderr[-4000:]
    Path(argv[0]).write_text(json.dumps(record, indent=2))
    return m.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
