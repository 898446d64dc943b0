"""glibc malloc policy for the segmentation loop: reuse batch buffers, bound the heap.

Each batch allocates the same few buffers (the float input, every layer's
activations, the probabilities), a few MB to tens of MB each. Two glibc
defaults work against a long loop of such batches:

* Left alone, glibc raises its mmap threshold each time a large mmapped block
  is freed, so later batch buffers come from the heap, where chunk buffers and
  Python objects with other lifetimes fragment it: with DataLoader workers the
  main process grew by about one batch per batch (1.6 GB at 4096 x 4096).
* Pinning the thresholds low (every batch buffer its own mapping, as this module
  first did) bounds the heap but makes the kernel fault in and zero every buffer
  again for every batch: measured 3x slower for the tiny model (3.2 vs 1.1 ms per
  256 px patch on 2 cores), sys time a third of the run.

So :func:`configure` fixes the thresholds high (:data:`THRESHOLD`), so batch
buffers are recycled from the heap without faults, and :class:`HeapTrimmer`
calls ``malloc_trim(0)`` every :data:`TRIM_EVERY` batches, which hands the
free pages inside the heap back to the kernel: what the heap keeps between
trims is bounded by a couple of batches' buffers. Every 16 batches was too
rare: the peak then grew with the length of the run (streaming, 32 MB budget,
passthrough: +13.9 % from 4096² to 16384², against +0.9 % when trimming every
2 batches, which kept the tiny model's speed-up).

With DataLoader workers the main process receives every batch as a message,
whose small long-lived allocations land inside the freed batch blocks: the
heap then grew by about one float batch per batch (measured: 567 MiB peak with
a trim every 16 batches, 302 MiB with one every batch, passthrough at 4096 x
4096, batch 16). :func:`trim_interval` therefore trims after every batch there.
"""

from __future__ import annotations

import ctypes
import sys
from typing import Any

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
THRESHOLD = 32 << 20
"""Fixed mmap and trim thresholds: larger than a batch's buffers at the defaults."""
ARENAS = 2
"""malloc arenas: the main thread's and one for the writer and loader threads."""
TRIM_EVERY = 2
"""Batches between ``malloc_trim`` calls."""


def _libc() -> Any | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        # Not ctypes.util.find_library: it forks ldconfig from this (large) process, and
        # the fork's duplicate RSS showed up in process-tree measurements.
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt  # noqa: B018  (glibc, not musl)
        libc.malloc_trim  # noqa: B018
    except (OSError, AttributeError):
        return None
    return libc


def configure() -> bool:
    """Fix glibc's thresholds and arena count; False where this is not glibc."""
    libc = _libc()
    if libc is None:
        return False
    ok = libc.mallopt(M_MMAP_THRESHOLD, THRESHOLD) and libc.mallopt(M_TRIM_THRESHOLD, THRESHOLD)
    return bool(ok and libc.mallopt(M_ARENA_MAX, ARENAS))


def trim_interval(workers: int) -> int:
    """Batches between trims: every batch with loader workers, else :data:`TRIM_EVERY`."""
    return 1 if workers > 0 else TRIM_EVERY


class HeapTrimmer:
    """Call ``malloc_trim(0)`` once every ``every`` ticks (a no-op off glibc)."""

    def __init__(self, every: int = TRIM_EVERY) -> None:
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.every, self.ticks, self.trims = every, 0, 0
        self._libc = _libc()

    def tick(self) -> None:
        """Count one batch; trim when the count comes round."""
        self.ticks += 1
        if self._libc is not None and self.ticks % self.every == 0:
            self._libc.malloc_trim(0)
            self.trims += 1
