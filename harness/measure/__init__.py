"""Measuring memory honestly: process-tree RSS, kernel peaks, memray, scaling studies.

Which figure means what (details in :mod:`harness.measure.runner`):

* ``peak_rss_bytes`` -- peak of the summed RSS of the whole process tree,
  sampled every ~10 ms. Every gate (``tests/test_memory_rss.py``,
  ``wsi-harness scaling --max-growth``) uses this one: it includes DataLoader
  workers, mapped files and allocator caches, which is what can run a machine
  out of memory.
* ``ru_maxrss_bytes`` -- the kernel's peak RSS of the largest *single* process
  (``os.wait4``); a cross-check of the sampler, never a gate on a tree.
* ``baseline_rss_bytes`` -- RSS after imports and model load, before the work;
  ``peak_above_baseline_bytes`` is what the segmentor itself added.
* ``memray.peak_bytes`` -- heap high-water mark of the root process (live
  allocations only; no mapped files, caches or unfollowed children), for
  finding *where* memory goes, not for gating.

The package import is light (psutil only); matplotlib and memray load lazily.
"""

from __future__ import annotations

from harness.measure.memray_capture import (
    FlameGraph,
    MemrayCapture,
    flamegraph,
    memray_run_argv,
    read_capture,
)
from harness.measure.rss import RssTimeline, TreeSampler, tree_rss
from harness.measure.runner import (
    BASELINE_ENV,
    Measurement,
    current_rss_bytes,
    run_callable,
    run_command,
    write_baseline,
)

__all__ = [
    "BASELINE_ENV",
    "FlameGraph",
    "Measurement",
    "MemrayCapture",
    "RssTimeline",
    "TreeSampler",
    "current_rss_bytes",
    "flamegraph",
    "memray_run_argv",
    "read_capture",
    "run_callable",
    "run_command",
    "tree_rss",
    "write_baseline",
]
