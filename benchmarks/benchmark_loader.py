"""Loader workers and the floor: does ``--workers N`` help, and how near its floor is a run?

:class:`LoaderWorkers` times whole tiny-cnn runs at ``--workers 0/1/2``, reader
processes and reader threads, from a synthetic slide and from a JPEG TIFF of it
(issue 15's target: the best worker setting at least 1.5x faster than 0 at
16384²). :class:`FloorRatio` tracks end-to-end over floor, CPU and wall, from
:func:`harness.measure.floor.measure_floor` (the parts alone: read once,
preprocess, forward, merge adds, finalise, write).
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any

from benchmarks.common import OneShot, Scratch, grid, make_slide, plan_config, require

SIZES = grid(4096, slow=(16384,))
WORKERS = grid(0, 1, 2)
READERS = grid("process", "thread")
READERS_ENV = "WSI_HARNESS_READERS"


def _write_tiffs() -> dict[str, str]:
    """The benchmark slide of every size as a JPEG pyramidal TIFF, in asv's cache folder."""
    write_tiff = require("harness.slides", "write_tiff")
    # asv runs setup_cache in a folder of its own that it removes afterwards.
    return {str(size): str(write_tiff(make_slide(size), Path(f"slide-{size}.tif").resolve(),
                                      progress=False))
            for size in SIZES}  # fmt: skip


class LoaderWorkers(OneShot):
    """Wall time of one tiny-cnn run per worker count, reader kind and slide reader."""

    params = (SIZES, grid("synthetic", "tiff"), WORKERS, READERS)
    param_names = ("size", "slide", "workers", "readers")
    timeout = 1200

    def setup_cache(self) -> dict[str, str]:
        """Write the TIFF slides once."""
        try:
            require("harness.loader", "PatchLoader")
        except NotImplementedError:
            return {}  # asv counts a raising setup_cache as a failure, not a skip
        return _write_tiffs()

    setup_cache.timeout = 1800  # type: ignore[attr-defined]

    def setup(self, cache: dict[str, str], size: int, slide: str, workers: int, readers: str):
        """Pick the slide and the reader kind; one reader kind for workers 0 (inline)."""
        self.scratch = Scratch()  # first: asv calls teardown after a skip too
        require("harness.loader", "PatchLoader")
        if workers == 0 and readers != READERS[0]:
            raise NotImplementedError("workers 0 reads inline: the reader kind does not apply")
        self.slide = make_slide(size) if slide == "synthetic" else cache[str(size)]
        self.previous = os.environ.get(READERS_ENV)
        os.environ[READERS_ENV] = readers

    def teardown(self, cache: dict[str, str], size: int, slide: str, workers: int, readers: str):
        """Delete the output, restore the reader kind."""
        self.scratch.close()
        if getattr(self, "previous", None) is None:
            os.environ.pop(READERS_ENV, None)
        else:
            os.environ[READERS_ENV] = self.previous

    def time_segment(self, cache: dict[str, str], size: int, slide: str, workers: int,
                     readers: str) -> None:  # fmt: skip
        """One whole run (patch 256, stride 128, batch 8, default budget)."""
        segment = require("harness.segment", "segment")
        segment(self.slide, "tiny-cnn", plan_config(), self.scratch.path("out.zarr"),
                workers=workers, overwrite=True, progress=False)  # fmt: skip


FLOOR_MODELS = grid("passthrough", "tiny-cnn")
FLOOR_WORKERS = grid(0, 2)
FLOOR_ROUNDS = 1 if os.environ.get("WSI_BENCH_SMALLEST") else 3
"""Interleaved rounds per floor (medians): one run's CPU moves 10-20 % on shared cores."""


class FloorRatio:
    """End-to-end over the floor (the parts alone), CPU and wall: medians of interleaved rounds.

    :data:`FLOOR_ROUNDS` rounds where the code has ``measure_floor(rounds=)``, one before.
    """

    params = (SIZES, FLOOR_MODELS, FLOOR_WORKERS)
    param_names = ("size", "model", "workers")
    timeout = 3600

    def setup_cache(self) -> dict[str, Any]:
        """Measure every case once: the parts alone, then the run."""
        try:
            measure_floor = require("harness.measure.floor", "measure_floor")
            run_config = require("harness.config", "RunConfig")
        except NotImplementedError:
            return {}
        rounds = ({"rounds": FLOOR_ROUNDS}
                  if "rounds" in inspect.signature(measure_floor).parameters else {})  # fmt: skip
        out: dict[str, Any] = {}
        for size in SIZES:
            for model in FLOOR_MODELS:
                for workers in FLOOR_WORKERS:
                    run = run_config(plan=plan_config(), model=model, workers=workers)
                    scratch = Scratch()
                    try:
                        report = measure_floor(f"synthetic:{size}", run, scratch.root, **rounds)
                    finally:
                        scratch.close()
                    out[f"{size}|{model}|{workers}"] = report.to_dict()
        return out

    setup_cache.timeout = 3600  # type: ignore[attr-defined]

    def setup(self, cache: dict[str, Any], size: int, model: str, workers: int) -> None:
        """Pick this case's report; skip cases not measured."""
        self.report = cache.get(f"{size}|{model}|{workers}")
        if self.report is None:
            raise NotImplementedError(f"floor not measured for {size} {model} {workers}")

    def track_cpu_ratio(self, cache: dict[str, Any], size: int, model: str, workers: int):
        """End-to-end CPU seconds over the sum of the parts' (issue 15: passthrough <= 1.5)."""
        return float(self.report["cpu_ratio"])

    track_cpu_ratio.unit = "ratio"  # type: ignore[attr-defined]

    def track_wall_ratio(self, cache: dict[str, Any], size: int, model: str, workers: int):
        """End-to-end wall seconds over the parts' one after another (< 1: they overlap)."""
        return float(self.report["wall_ratio"])

    track_wall_ratio.unit = "ratio"  # type: ignore[attr-defined]

    def track_floor_cpu(self, cache: dict[str, Any], size: int, model: str, workers: int):
        """CPU seconds of the parts alone."""
        return float(self.report["floor_cpu_s"])

    track_floor_cpu.unit = "seconds"  # type: ignore[attr-defined]

    def track_end_to_end_wall(self, cache: dict[str, Any], size: int, model: str, workers: int):
        """Wall seconds of the run itself."""
        return float(self.report["end_to_end"]["wall_s"])

    track_end_to_end_wall.unit = "seconds"  # type: ignore[attr-defined]

    def track_end_to_end_sys(self, cache: dict[str, Any], size: int, model: str, workers: int):
        """System (kernel) CPU seconds of the run: file creation, faults (docs/loader.md)."""
        sys_s = self.report["end_to_end"].get("sys_s")
        if sys_s is None:
            raise NotImplementedError("this commit's floor report has no system time")
        return float(sys_s)

    track_end_to_end_sys.unit = "seconds"  # type: ignore[attr-defined]
