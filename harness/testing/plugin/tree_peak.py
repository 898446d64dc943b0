"""The process-tree RSS of one test body, and the ``limit_rss`` verdict on it.

pytest-memray's ``limit_memory`` tracks the heap of the test process only: the
memory of a forked DataLoader worker, a dask worker or a ``subprocess`` child
is invisible to it (pytest-memray issue #89). Here the *summed RSS of the
pytest process and every descendant* (the walk of :mod:`harness.measure.rss`:
``/proc/PID/task/TID/children``, so forked and spawned children alike) is
sampled while the body runs, and nothing else: sampling starts after the
fixtures are set up and stops before they are torn down. The sampling runs
in a watcher process beside pytest (:mod:`~harness.testing.plugin.watcher`
says why not a thread).

What the figure can miss, and the kernel's cross-checks:

* A spike shorter than the sampling period (10 ms by default) can fall
  between two samples. The kernel's high-water mark of *this* process
  (``getrusage(RUSAGE_SELF).ru_maxrss``) has no such gap; when it rose
  during the body, the body set it, so it is a floor for the peak and the
  verdict uses it. (It cannot help once an earlier test set a higher mark.)
* ``getrusage(RUSAGE_CHILDREN).ru_maxrss`` is the largest peak of a single
  descendant that has been *waited for* (reaped by ``wait``, as
  ``subprocess.run`` and ``multiprocessing`` joins do; a grandchild counts
  only if its own parent waited for it too). Children still running, or never
  reaped, are not in it, it is one process rather than a sum, and Linux lets a
  child inherit at ``fork``/``exec`` the high-water mark of the process it was
  forked from -- possibly set by an earlier test. So it is reported beside the
  sampled peak, never used as a floor.
* The sum counts pages shared copy-on-write between a parent and its forked
  children once per process: an upper bound on physical memory, the
  conservative side for a gate.
"""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from harness.errors import ConfigError
from harness.measure.rss import DEFAULT_PERIOD_S
from harness.units import format_bytes, parse_bytes

if TYPE_CHECKING:
    import pytest

    from harness.testing.plugin.watcher import ProcessRss, TreeWatcher


@dataclass(frozen=True)
class RssLimit:
    """What a ``limit_rss`` marker asks for, validated.

    Attributes
    ----------
    limit_bytes
        The limit, parsed by :func:`harness.units.parse_bytes`.
    text
        The limit as written (``"1.5 GB"``), for messages.
    above_baseline
        Limit the peak *minus* the tree's RSS at the start of the body.
    period_s
        Sampling period.
    """

    limit_bytes: int
    text: str
    above_baseline: bool = False
    period_s: float = DEFAULT_PERIOD_S

    def __post_init__(self) -> None:
        if not 0.0005 <= self.period_s <= 10.0:
            raise ConfigError(f"limit_rss period_s must be in [0.0005, 10] s, got {self.period_s}")

    @classmethod
    def from_marker(cls, marker: pytest.Mark, default_period_s: float) -> RssLimit:
        """Read ``limit_rss(limit, *, above_baseline=False, period_s=...)``."""
        if len(marker.args) != 1 or not isinstance(marker.args[0], str | int):
            raise ConfigError(
                f"limit_rss takes one byte size such as '1.5 GB', got {marker.args!r}"
            )
        unknown = set(marker.kwargs) - {"above_baseline", "period_s"}
        if unknown:
            raise ConfigError(f"limit_rss got unknown options {sorted(unknown)}")
        limit = marker.args[0]
        return cls(
            limit_bytes=parse_bytes(limit),
            text=str(limit),
            above_baseline=bool(marker.kwargs.get("above_baseline", False)),
            period_s=float(marker.kwargs.get("period_s") or default_period_s),
        )

    def failure(self, body: BodyRss) -> str | None:
        """The failure message when ``body`` broke the limit, else ``None``."""
        figure = body.above_baseline_bytes if self.above_baseline else body.peak_bytes
        if figure <= self.limit_bytes:
            return None
        what = "peak above the baseline" if self.above_baseline else "process-tree peak RSS"
        head = (
            f"limit_rss: {what} {format_bytes(figure)} is over the limit of {self.text} "
            f"({format_bytes(self.limit_bytes)})"
        )
        return f"{head}\n{body.describe()}"


@dataclass(frozen=True)
class BodyRss:
    """The process-tree RSS of one test body.

    Attributes
    ----------
    baseline_bytes
        Tree RSS sampled right before the body started.
    sampled_peak_bytes
        Largest sampled tree RSS during the body (baseline and a last sample
        at its end included).
    self_maxrss_bytes
        ``RUSAGE_SELF`` ``ru_maxrss`` of this process when the body raised
        it, else ``None`` (the body stayed under an earlier high-water mark).
    children_maxrss_bytes
        ``RUSAGE_CHILDREN`` ``ru_maxrss`` when a child reaped during the body
        raised it, else ``None`` (see the module docstring for what it covers).
    top
        The largest processes of the peak sample, largest first.
    n_samples, duration_s, max_processes, period_s
        How the figure was sampled.
    """

    baseline_bytes: int
    sampled_peak_bytes: int
    self_maxrss_bytes: int | None
    children_maxrss_bytes: int | None
    top: tuple[ProcessRss, ...]
    n_samples: int
    duration_s: float
    max_processes: int
    period_s: float

    @property
    def peak_bytes(self) -> int:
        """The peak the verdict uses: sampled, floored by this process's kernel peak."""
        return max(self.sampled_peak_bytes, self.self_maxrss_bytes or 0)

    @property
    def above_baseline_bytes(self) -> int:
        """What the body added over the tree it started with."""
        return self.peak_bytes - self.baseline_bytes

    def describe(self) -> str:
        """The figures behind a verdict, one per line."""
        lines = [
            f"  peak:      {format_bytes(self.peak_bytes)} (sum over the process tree; sampled "
            f"every {self.period_s * 1000:g} ms: {self.n_samples} samples over "
            f"{self.duration_s:.2f} s, up to {self.max_processes} processes)",
            *self._missed_line(),
            f"  baseline:  {format_bytes(self.baseline_bytes)} at the start of the body; "
            f"peak above it: {format_bytes(self.above_baseline_bytes)}",
            f"  kernel:    {self._kernel_line()}",
            "  largest processes at the peak:",
            f"    {'pid':>8}  {'RSS':>10}  command",
        ]
        lines += [f"    {p.pid:>8}  {format_bytes(p.rss_bytes):>10}  {p.command}" for p in self.top]
        return "\n".join(lines)

    def _missed_line(self) -> list[str]:
        if self.peak_bytes == self.sampled_peak_bytes:
            return []
        return [
            f"             the samples peaked at {format_bytes(self.sampled_peak_bytes)}; the "
            "kernel's high-water mark of this process is higher (a spike between samples)"
        ]

    def _kernel_line(self) -> str:
        own = (
            "this process stayed under its earlier high-water mark"
            if self.self_maxrss_bytes is None
            else f"this process peaked at {format_bytes(self.self_maxrss_bytes)}"
        )
        kids = (
            "no reaped child set a new high"
            if self.children_maxrss_bytes is None
            else f"largest reaped child {format_bytes(self.children_maxrss_bytes)} "
            "(one process; may include a high-water mark inherited at fork)"
        )
        return f"ru_maxrss: {own}; {kids}"


def _maxrss(who: int) -> int:
    """``ru_maxrss`` in bytes (Linux reports KiB)."""
    return resource.getrusage(who).ru_maxrss * 1024


class BodyWatch:
    """Sample the tree from :meth:`start` to :meth:`finish` (the test body)."""

    def __init__(self, watcher: TreeWatcher, period_s: float) -> None:
        self._watcher = watcher
        self._period_s = period_s
        self._self0 = self._children0 = 0
        self._t0 = 0.0

    @classmethod
    def start(cls, watcher: TreeWatcher, period_s: float) -> BodyWatch:
        """Take the baseline sample and start sampling."""
        watch = cls(watcher, period_s)
        watch._self0 = _maxrss(resource.RUSAGE_SELF)
        watch._children0 = _maxrss(resource.RUSAGE_CHILDREN)
        watcher.start(period_s)
        watch._t0 = time.perf_counter()
        return watch

    def finish(self) -> BodyRss:
        """Stop sampling (one last sample included) and summarise."""
        duration = time.perf_counter() - self._t0
        sample = self._watcher.stop()
        self_now, children_now = _maxrss(resource.RUSAGE_SELF), _maxrss(resource.RUSAGE_CHILDREN)
        return BodyRss(
            baseline_bytes=sample.baseline_bytes,
            sampled_peak_bytes=sample.peak_bytes,
            self_maxrss_bytes=self_now if self_now > self._self0 else None,
            children_maxrss_bytes=children_now if children_now > self._children0 else None,
            top=sample.top,
            n_samples=sample.n_samples,
            duration_s=duration,
            max_processes=sample.max_processes,
            period_s=self._period_s,
        )


def user_properties(body: BodyRss) -> list[tuple[str, Any]]:
    """The figures as ``(name, value)`` pairs for ``item.user_properties`` (JUnit XML)."""
    return [
        ("rss_peak_bytes", body.peak_bytes),
        ("rss_baseline_bytes", body.baseline_bytes),
        ("rss_peak_above_baseline_bytes", body.above_baseline_bytes),
    ]
