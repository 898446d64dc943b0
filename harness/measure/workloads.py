"""Workloads with a known memory footprint, for testing the instruments.

Module-level functions, so :func:`harness.measure.run_callable` can pickle
them by name.
"""

from __future__ import annotations

import multiprocessing
import time

import numpy as np


def touch_bytes(nbytes: int, hold_s: float = 0.2) -> int:
    """Allocate ``nbytes`` of ones (every page touched), hold them, return the sum."""
    block = np.ones(nbytes, dtype=np.uint8)
    time.sleep(hold_s)
    return int(block[::4096].sum())


def touch_in_children(n_children: int, nbytes: int, hold_s: float = 0.5) -> int:
    """Fork ``n_children`` processes that each touch ``nbytes`` at the same time.

    The parent allocates nothing itself, so its own ``ru_maxrss`` stays near
    the interpreter's size while the tree holds about ``n_children * nbytes``.

    Returns
    -------
    int
        Number of children that exited with status 0.
    """
    ctx = multiprocessing.get_context("fork")  # what DataLoader workers use on Linux
    procs = [ctx.Process(target=touch_bytes, args=(nbytes, hold_s)) for _ in range(n_children)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join()
    return sum(proc.exitcode == 0 for proc in procs)


def grow(steps: int, nbytes_per_step: int, pause_s: float = 0.02) -> int:
    """Keep every block allocated, like a leak; return the bytes held at the end."""
    held = []
    for _ in range(steps):
        held.append(np.ones(nbytes_per_step, dtype=np.uint8))
        time.sleep(pause_s)
    return sum(block.nbytes for block in held)
