"""Whole cohorts: many slides, one output each, as one job that survives failures.

:func:`run_cohort` segments every slide of a :class:`CohortSpec` into
``OUT/<name>.zarr``, each through :func:`harness.segment.segment` (so each slide
has its own lock, identity and resume), with ``resume`` on: a slide whose output
is complete and whose identity matches is skipped, an incomplete one continues
from its committed chunks, a missing one starts. A slide that fails (unreadable,
a mask of the wrong shape, an identity mismatch) fails alone, with its one-line
error in the summary; the others finish.

On a cluster, several slides are driven at once (:attr:`CohortSpec.concurrent`)
so that the last blocks of one slide do not leave workers idle; their blocks
share the cluster. A first SIGINT/SIGTERM stops every slide at its next batch
(or block) boundary, and the same command run again continues where it stopped.
"""

from __future__ import annotations

import csv
import json
import re
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.errors import ConfigError, HarnessError
from harness.interrupt import Interrupted, StopRequest, stop_on_signals

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from harness.config import RunConfig


@dataclass(frozen=True)
class CohortItem:
    """One slide of a cohort: its source, optional mask, and output name."""

    slide: str
    mask: str | None = None
    name: str | None = None

    @property
    def out_name(self) -> str:
        """The output folder name: given, or the slide's file stem (specs sanitised)."""
        if self.name:
            return self.name if self.name.endswith(".zarr") else f"{self.name}.zarr"
        stem = Path(self.slide).stem if not self.slide.startswith("synthetic:") else self.slide
        return re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("_") + ".zarr"


@dataclass(frozen=True)
class SlideOutcome:
    """What happened to one slide."""

    slide: str
    status: str  # "done", "resumed", "skipped" (already complete), "failed", "stopped"
    output: str
    patches: int = 0
    wall_s: float = 0.0
    peak_worker_rss_bytes: int | None = None
    error: str = ""


@dataclass(frozen=True)
class CohortReport:
    """Every slide's outcome, and where the summary was written."""

    outcomes: list[SlideOutcome] = field(default_factory=list)
    csv: str = ""
    json: str = ""

    @property
    def failed(self) -> int:
        """Slides that failed."""
        return sum(o.status == "failed" for o in self.outcomes)

    def table(self) -> str:
        """The summary as an aligned text table."""
        head = f"{'slide':32s} {'status':8s} {'patches':>9s} {'wall s':>8s} {'peak MiB':>9s}"
        rows = [head + "  output"]
        for o in self.outcomes:
            rss = o.peak_worker_rss_bytes
            peak = "-" if rss is None else f"{rss / 2**20:.0f}"
            note = f"  ({o.error})" if o.error else ""
            rows.append(
                f"{o.slide[-32:]:32s} {o.status:8s} {o.patches:9d} {o.wall_s:8.1f} "
                f"{peak:>9s}  {o.output}{note}"
            )
        return "\n".join(rows)


def read_list(path: Path) -> list[CohortItem]:
    """Slides from a text file (one per line) or a CSV with ``slide[,mask][,name]`` columns."""
    if not path.is_file():
        raise ConfigError(f"slide list {path} does not exist")
    text = path.read_text()
    if path.suffix.lower() == ".csv":
        rows = list(csv.DictReader(text.splitlines()))
        if not rows or "slide" not in rows[0]:
            raise ConfigError(f"{path}: a CSV slide list needs a 'slide' column (and optional "
                              "'mask', 'name')")  # fmt: skip
        return [CohortItem(r["slide"].strip(), (r.get("mask") or "").strip() or None,
                           (r.get("name") or "").strip() or None) for r in rows]  # fmt: skip
    lines = [ln.strip() for ln in text.splitlines()]
    return [CohortItem(ln) for ln in lines if ln and not ln.startswith("#")]


def check_names(items: Sequence[CohortItem]) -> None:
    """Refuse two slides that would write the same output."""
    seen: dict[str, str] = {}
    for item in items:
        if item.out_name in seen:
            raise ConfigError(f"slides {seen[item.out_name]} and {item.slide} would both write "
                              f"{item.out_name}; name them in a CSV 'name' column")  # fmt: skip
        seen[item.out_name] = item.slide


def _one(
    item: CohortItem, out_dir: Path, run: RunConfig, client: Any, stop: StopRequest
) -> SlideOutcome:
    from harness.segment import segment

    out = out_dir / item.out_name
    t0 = time.time()
    if stop.requested:
        return SlideOutcome(item.slide, "stopped", str(out))
    try:
        cfg = run.replace(resume=not run.overwrite, progress=False,
                          **({"mask": item.mask} if item.mask else {}))  # fmt: skip
        result = segment(item.slide, out=out, run=cfg, client=client, stop=stop)
    except Interrupted:
        return SlideOutcome(item.slide, "stopped", str(out), wall_s=time.time() - t0)
    except HarnessError as exc:
        return SlideOutcome(item.slide, "failed", str(out), wall_s=time.time() - t0,
                            error=str(exc))  # fmt: skip
    status = "skipped" if result.already_complete else "resumed" if result.resumed else "done"
    peaks = result.workers.get("peak_rss_bytes", {})
    peak = max(peaks.values()) if peaks else _own_peak()
    return SlideOutcome(item.slide, status, str(out), result.patches, result.wall_s, peak)


def _own_peak() -> int:
    """This process's kernel peak RSS so far (slides run here, one after another)."""
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def run_cohort(
    items: Sequence[CohortItem],
    out_dir: Path,
    run: RunConfig,
    client: Any = None,
    concurrent: int = 2,
    on_outcome: Callable[[SlideOutcome], None] | None = None,
) -> CohortReport:
    """Segment every slide (see the module docstring); write ``cohort.csv`` and ``cohort.json``."""
    if not items:
        raise ConfigError("a cohort needs at least one slide")
    check_names(items)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create cohort folder {out_dir}: {exc.strerror}") from exc
    outcomes: dict[int, SlideOutcome] = {}
    lock = threading.Lock()

    def work(k: int, stop: StopRequest) -> None:
        outcome = _one(items[k], out_dir, run, client, stop)
        with lock:
            outcomes[k] = outcome
        if on_outcome is not None:
            on_outcome(outcome)

    with stop_on_signals() as stop:
        if client is None or concurrent <= 1:
            for k in range(len(items)):
                work(k, stop)
        else:
            with ThreadPoolExecutor(max_workers=concurrent, thread_name_prefix="cohort") as pool:
                for future in [pool.submit(work, k, stop) for k in range(len(items))]:
                    future.result()
        report = _write(CohortReport([outcomes[k] for k in range(len(items))]), out_dir)
        if stop.requested:
            assert stop.signum is not None
            finished = sum(o.status in ("done", "resumed", "skipped") for o in report.outcomes)
            raise CohortInterrupted(stop.signum, finished, len(items))
    return report


class CohortInterrupted(Interrupted):
    """A cohort stopped by a signal: every slide keeps what it committed."""

    def __init__(self, signum: int, done: int, total: int) -> None:
        super().__init__(signum, done, total)
        self.args = (
            f"interrupted by {signal.Signals(signum).name} after {done} of {total} slides "
            "(summary written); run the same command again to continue",
        )


def _write(report: CohortReport, out_dir: Path) -> CohortReport:
    rows = [asdict(o) for o in report.outcomes]
    csv_path, json_path = out_dir / "cohort.csv", out_dir / "cohort.json"
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    json_path.write_text(json.dumps({"slides": rows}, indent=2))
    return CohortReport(report.outcomes, str(csv_path), str(json_path))
