"""Launcher between the measuring parent and the workload (``python -S _launch.py``).

Why it exists: a child's ``ru_maxrss`` starts from the high-water mark of the
memory it was forked from (Linux carries it across ``exec``), so a workload
started straight from a large parent (a pytest process that imported torch)
would report the parent's size. This tiny, site-less interpreter spawns the
workload with ``posix_spawn``, so its ``ru_maxrss`` starts from a few MiB,
reaps it with ``os.wait4``, writes the rusage as JSON to ``argv[1]`` and exits
with the workload's status (re-raising a fatal signal). Stdlib only.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys


def main() -> None:
    """Spawn ``sys.argv[2:]``, record its rusage in ``sys.argv[1]``, mirror its exit."""
    target, argv = sys.argv[1], sys.argv[2:]
    try:
        pid = os.posix_spawnp(argv[0], argv, os.environ)
    except OSError as exc:
        print(f"cannot run {argv[0]!r}: {exc}", file=sys.stderr)
        sys.exit(127)
    _, status, usage = os.wait4(pid, 0)
    record = {"ru_maxrss_kib": usage.ru_maxrss, "utime": usage.ru_utime, "stime": usage.ru_stime}
    with open(target, "w") as f:  # noqa: PTH123 (site-less: keep imports minimal)
        json.dump(record, f)
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        with contextlib.suppress(OSError, ValueError):  # SIGKILL/SIGSTOP: always default
            signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    sys.exit(code)


if __name__ == "__main__":
    main()
