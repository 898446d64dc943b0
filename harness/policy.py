"""Process-wide settings for a segmentation process, applied once, at an entry point.

A library call never changes its caller's process: :func:`harness.segment.segment`
applies none of this. The entry points that own their process do, from here:
the ``wsi-harness`` CLI (:func:`harness.cli.main`) and every dask worker
(:class:`harness.distributed.ProcessPolicy`, a worker plugin). Python callers
who want the same behaviour call :func:`apply` themselves.

What and why (each measured on the 2-core machines, see the linked modules):

* ``OMP_WAIT_POLICY=PASSIVE`` (unless set): idle OpenMP threads sleep instead
  of spinning between model calls, leaving the cores to the reader, merger and
  writer (8192² tiny-cnn: 20 CPU-s instead of 27). It must be in the
  environment before torch loads its OpenMP runtime: :func:`prepare_environment`.
* the glibc malloc policy (:func:`harness._malloc.configure`): batch buffers
  recycled from the heap, bounded by :class:`harness._malloc.HeapTrimmer`.
* torch intra-op threads, when asked.
* ``gc.freeze()`` after imports: the million objects torch creates never become
  garbage; keeping them out of every collection saves 0.5 s per run.
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass

OMP_ENV = {"OMP_WAIT_POLICY": "PASSIVE"}


@dataclass(frozen=True)
class Applied:
    """What :func:`apply` did (for logs and worker reports)."""

    malloc: bool
    threads: int | None
    omp_wait_policy: str | None
    frozen: bool


def prepare_environment() -> None:
    """Set the OpenMP environment (before ``import torch``; existing values win)."""
    for key, value in OMP_ENV.items():
        os.environ.setdefault(key, value)


def apply(threads: int | None = None, freeze: bool = True) -> Applied:
    """Apply the process policy: OpenMP env, malloc, torch threads, ``gc.freeze``."""
    prepare_environment()
    from harness import _malloc

    malloc = _malloc.configure()
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    if freeze:
        gc.freeze()
    return Applied(malloc, threads, os.environ.get("OMP_WAIT_POLICY"), freeze)
