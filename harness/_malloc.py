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
bounds what the heap keeps: it reads the process's RSS after each batch and calls
``malloc_trim(0)`` (which hands every free page inside the heap back to the
kernel) only when RSS has grown more than :data:`SLACK` above its level after
the first batch since the last trim.

Why a growth trigger and not a batch count. The heap does creep: small
long-lived allocations (decoded tiles, chunk accumulators, Python objects, and
with DataLoader workers every received batch message) land in the holes freed
batch buffers leave, so later batches' buffers need fresh pages. Never trimming,
the heap kept about 40 MiB of freed blocks (passthrough, 32 MB budget, 1 thread:
peak 356.5 MiB at 4096², 358.9 at 16384²); a trim every 16 batches reached that
plateau only on long runs (308.9 -> 352.0 MiB). Trimming every 2 batches held
301-304 MiB, but each trim also discards the recycled batch buffers, so the next
batch faults them in again: 1.0 M minor faults and 5 s of sys time at 8192² with
the tiny model, 28 % slower than never trimming. The growth trigger keeps both:
320.2 / 318.6 MiB on the same runs, whatever their length, and a steady heap is
never trimmed (2-5 trims in the 497 batches at 8192²).

Why the reference is the *highest* RSS of the first :data:`SETTLE` batches. A
run's working set is not flat from batch to batch: merge accumulators come and
go with the strip, the block cache fills and turns over, the writer's queue
holds more or fewer chunks. Taking the reference from the first batch after a
trim caught it at a low point as often as not, and the next ordinary high point
(20-30 MiB above it) triggered another trim: 20-59 trims in those 497 batches
(issue 15's profile), each faulting the batch buffers back in (300-870 k minor
faults, 4.5-6.7 s of sys time, against 89 k faults in a run that happened not to
trim), while RSS stayed at 365-388 MiB throughout. The maximum over the settling
window is the working set's own range; only growth past it by :data:`SLACK` is
the creep the trim is for. While settling, a trim still fires if RSS passes the
level that caused the last one by the slack, so no window is unbounded.

Why a limit as well. The reference rule lets the heap keep the working set's
range plus the slack, and the run budget counts only the slack: at 8192² with a
128 MB budget runs added 122-139 MB above their baseline. So a run's trimmer
also takes the budget as an RSS limit (``limit``, set by
:func:`harness.blocks.heap_trimmer` one batch share below the budget): past it a
tick trims whatever the reference says (docs/budget.md).
"""

from __future__ import annotations

import ctypes
import os
import sys
from typing import Any

from harness.measure.runner import current_rss_bytes
from harness.units import parse_bytes

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
THRESHOLD = 32 << 20
"""Fixed mmap and trim thresholds: larger than a batch's buffers at the defaults."""
ARENAS = 2
"""malloc arenas: the main thread's and one for the writer and loader threads."""
SLACK = 32 << 20
"""RSS growth since the last trim that triggers the next one."""
SETTLE = 16
"""Batches after a start or a trim whose highest RSS is the reference."""
SLACK_ENV = "WSI_HARNESS_HEAP_SLACK"
"""Environment variable overriding :data:`SLACK` (a byte size: ``32MiB``; ``1TB`` never trims)."""


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


def default_slack() -> int:
    """:data:`SLACK`, or the byte size in ``$WSI_HARNESS_HEAP_SLACK``."""
    text = os.environ.get(SLACK_ENV)
    return SLACK if text is None else parse_bytes(text)


class HeapTrimmer:
    """Call ``malloc_trim(0)`` when RSS has grown ``slack`` bytes (a no-op off glibc).

    The reference level is the highest RSS of the first ``settle`` ticks after
    construction or after a trim (the working set's own range, see the module
    notes); during those ticks the ceiling is the RSS that caused the last trim
    (at construction: the first tick's), plus ``slack``.

    ``limit``, where given, is the run's budget as an RSS (its baseline plus the
    budget, less the headroom a batch rises above its tick): a tick above it
    trims whatever the reference says, because the reference rule alone lets the
    heap keep the working set's range plus the slack, which the budget does not
    count (see the module notes). A limit trim that returns less than a quarter
    of the slack found live memory, not free heap, over the limit; the limit then
    moves up to that RSS plus the slack, so the run is not trimmed every batch
    for nothing, and :attr:`over_limit` keeps the highest such RSS.
    """

    def __init__(
        self, slack: int | None = None, settle: int = SETTLE, limit: int | None = None
    ) -> None:
        slack = default_slack() if slack is None else slack
        if slack < 0:
            raise ValueError(f"slack must be >= 0 bytes, got {slack}")
        if settle < 1:
            raise ValueError(f"settle must be >= 1 tick, got {settle}")
        self.slack, self.settle, self.trims = slack, settle, 0
        self.limit, self.limit_trims, self.over_limit = limit, 0, 0
        self._budget_limit = limit  # as given: ``limit`` steps up past live memory
        self.reference: int | None = None  # highest RSS of the settling ticks so far
        self.ceiling: int | None = None  # while settling: the RSS that caused the last trim
        self._settling = settle
        self._libc = _libc()

    def tick(self) -> None:
        """After one batch: trim if RSS is more than ``slack`` over the reference."""
        libc = self._libc
        if libc is None:
            return
        rss = current_rss_bytes()
        if self.ceiling is None:
            self.ceiling = rss
        if self.limit is not None and rss > self.limit:
            self._trim_to_limit(libc, rss)
        elif self._settling > 0:
            self._settling -= 1
            if rss > self.ceiling + self.slack:
                self._trim(libc, rss)
            else:
                self.reference = max(self.reference or 0, rss)
        elif self.reference is not None and rss > self.reference + self.slack:
            self._trim(libc, rss)

    def _trim(self, libc: Any, rss: int) -> None:
        libc.malloc_trim(0)
        self.trims += 1
        self.reference, self.ceiling, self._settling = None, rss, self.settle

    def record(self) -> dict[str, int]:
        """What the trimmer did: ``trims``, ``budget_trims`` (for the limit), and
        ``live_over_limit_bytes``, how far live memory (what no trim returned) rose past
        the limit as given."""
        given = self._budget_limit
        over = self.over_limit - given if given is not None and self.over_limit else 0
        return {"trims": self.trims, "budget_trims": self.limit_trims,
                "live_over_limit_bytes": max(0, over)}  # fmt: skip

    def _trim_to_limit(self, libc: Any, rss: int) -> None:
        self._trim(libc, rss)
        self.limit_trims += 1
        after = current_rss_bytes()
        if rss - after < self.slack // 4 and self.limit is not None:
            self.over_limit = max(self.over_limit, after)
            self.limit = max(self.limit, after + self.slack)
