"""Resident-set size of a whole process tree, sampled from a background thread.

:class:`TreeSampler` polls a root process and every descendant it can see
(:func:`descendants`) about every 10 ms and records
the *sum* of their RSS at each tick. A process that exits between being
listed and being read simply contributes nothing to that tick.

The sampler runs beside the workload, so its own cost is kept small: psutil's
``children(recursive=True)`` scans every process on the machine and took
1.4 ms of CPU per sample here (14 % of a core at 10 ms), which slowed a
2-thread workload on 2 cores by up to a fifth. :func:`descendants` reads
``/proc/PID/task/TID/children`` instead, walking only the tree.

Two limits to keep in mind when reading the figure:

* Sampling can miss a spike shorter than the period; the kernel's
  ``ru_maxrss`` (see :mod:`harness.measure.runner`) has no such gap but
  covers one process at a time. The runner reports both.
* Summing RSS counts pages shared between processes (a forked DataLoader
  worker shares the parent's imported libraries copy-on-write) once per
  process, so the tree figure is an upper bound on the physical memory the
  tree uses. That makes it the conservative choice for a gate.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

#: Default sampling period in seconds.
DEFAULT_PERIOD_S = 0.01


@dataclass(frozen=True)
class RssTimeline:
    """RSS of a process tree over time.

    Attributes
    ----------
    times
        Sample times in ``time.time()`` epoch seconds.
    rss_bytes
        Sum of RSS over the tree at each sample.
    n_processes
        How many processes contributed to each sample.
    """

    times: tuple[float, ...]
    rss_bytes: tuple[int, ...]
    n_processes: tuple[int, ...]

    @property
    def peak_bytes(self) -> int:
        """Largest sampled tree RSS (0 when nothing was sampled)."""
        return max(self.rss_bytes, default=0)

    @property
    def peak_time(self) -> float | None:
        """Epoch time of the first sample at the peak."""
        if not self.rss_bytes:
            return None
        return self.times[self.rss_bytes.index(self.peak_bytes)]

    @property
    def max_processes(self) -> int:
        """Most processes seen in one sample."""
        return max(self.n_processes, default=0)


def _proc_children(pid: int) -> list[int] | None:
    """Direct children of ``pid`` from ``/proc`` (None where the kernel lacks the file)."""
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return []  # gone
    kids: list[int] = []
    for task in tasks:
        try:
            kids += map(int, (task / "children").read_text().split())
        except FileNotFoundError:
            if not task.exists():
                continue  # the thread ended
            return None  # no CONFIG_PROC_CHILDREN
        except OSError:
            continue
    return kids


def descendants(root: psutil.Process) -> list[int]:
    """The pids below ``root``, walking only its tree where ``/proc`` allows."""
    found: list[int] = []
    todo = [root.pid]
    while todo:
        kids = _proc_children(todo.pop())
        if kids is None:
            return [p.pid for p in root.children(recursive=True)]
        found += kids
        todo += kids
    return found


def tree_rss(
    root: psutil.Process,
    cache: dict[int, psutil.Process] | None = None,
    *,
    include_root: bool = True,
) -> tuple[int, int]:
    """Sum the RSS of ``root`` and all its live descendants.

    Parameters
    ----------
    root
        The process at the top of the tree.
    cache
        ``pid -> Process`` objects kept between calls, so each process is
        opened once (psutil also uses the object to detect pid reuse).
    include_root
        Count ``root`` itself; ``False`` when it is measuring machinery (the
        launcher of :mod:`harness.measure.runner`), not workload.

    Returns
    -------
    tuple[int, int]
        ``(bytes, processes counted)``; ``(0, 0)`` once ``root`` is gone.
    """
    cache = {} if cache is None else cache
    try:
        pids = descendants(root)
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return 0, 0
    if include_root:
        cache.setdefault(root.pid, root)
        pids.insert(0, root.pid)
    total = counted = 0
    for pid in pids:
        try:
            proc = cache.get(pid) or cache.setdefault(pid, psutil.Process(pid))
            total += proc.memory_info().rss
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            continue  # exited between listing and reading: contributes nothing
        counted += 1
    return total, counted


class TreeSampler:
    """Sample the RSS of a process tree in a daemon thread.

    Use as a context manager around the life of the process::

        with TreeSampler(pid) as sampler:
            ...  # wait for the process
        timeline = sampler.timeline()

    Parameters
    ----------
    pid
        Root of the tree.
    period_s
        Time between samples.
    include_root
        Count the root process itself (see :func:`tree_rss`).
    """

    def __init__(
        self, pid: int, period_s: float = DEFAULT_PERIOD_S, *, include_root: bool = True
    ) -> None:
        self._root = psutil.Process(pid)
        self._period_s = period_s
        self._include_root = include_root
        self._stop = threading.Event()
        self._times: list[float] = []
        self._rss: list[int] = []
        self._counts: list[int] = []
        self._cache: dict[int, psutil.Process] = {}
        self._thread = threading.Thread(target=self._run, name=f"rss-sampler-{pid}", daemon=True)

    def __enter__(self) -> TreeSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop sampling and wait for the thread to finish."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def sample_once(self) -> None:
        """Take one sample now (also called by the thread)."""
        rss, count = tree_rss(self._root, self._cache, include_root=self._include_root)
        if count:
            self._times.append(time.time())
            self._rss.append(rss)
            self._counts.append(count)

    def _run(self) -> None:
        next_tick = time.monotonic()
        while not self._stop.is_set():
            self.sample_once()
            next_tick += self._period_s
            # Fixed-rate schedule; if a sample overran, start the next one at once.
            self._stop.wait(max(0.0, next_tick - time.monotonic()))

    def timeline(self) -> RssTimeline:
        """The samples taken so far."""
        return RssTimeline(tuple(self._times), tuple(self._rss), tuple(self._counts))
