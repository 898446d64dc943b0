"""A process beside pytest that samples pytest's process tree on request.

Why not a thread inside pytest (as :class:`~harness.measure.rss.TreeSampler`
is used by the runner, which measures *another* process): a sampling thread
in the measured process needs its GIL. A test body that holds the GIL -- one
``bytearray(b"x") * 200_000_000`` holds it for the whole fill -- starves the
thread, and the allocation is never sampled (measured here: a 200 MB body
sampled at 68.8 MiB by an in-process thread; the kernel's high-water mark
said 259.4 MiB). And on Python 3.12+ a second thread makes every
``os.fork()`` of the body (DataLoader workers) warn that forking a
multi-threaded process may deadlock, an error under ``-W error``.

So one watcher process per pytest session, started on the first ``limit_rss``
test, samples the tree with a :class:`TreeSampler` of its own, leaving
itself out of the sum. The protocol is one JSON line each way on its
stdin/stdout: ``{"cmd": "start", "period_s": 0.01}`` answers
``{"baseline": BYTES}`` once the first sample is taken; ``{"cmd": "stop"}``
answers the :class:`TreeSample` as JSON; ``{"cmd": "exit"}`` or end of
input ends the watcher.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, TextIO

import psutil

from harness.errors import HarnessError
from harness.measure.rss import TreeSampler, descendants

if TYPE_CHECKING:
    from collections.abc import Sequence

#: Processes kept from the peak sample.
TOP_PROCESSES = 5
#: Longest wait for the watcher to answer (it answers in milliseconds).
REPLY_TIMEOUT_S = 60.0
_COMMAND_CHARS = 100
_BOOT = (
    "import json, sys; sys.path[:] = json.loads(sys.argv[1]); "
    "from harness.testing.plugin.watcher import serve; "
    "serve(int(sys.argv[2]), sys.stdin, sys.stdout)"
)


@dataclass(frozen=True)
class ProcessRss:
    """One process of the tree at the peak sample."""

    pid: int
    rss_bytes: int
    command: str


@dataclass(frozen=True)
class TreeSample:
    """What the watcher saw between ``start`` and ``stop``.

    Attributes
    ----------
    baseline_bytes
        Tree RSS of the first sample, taken before ``start`` was answered.
    peak_bytes
        Largest sampled tree RSS (the first and a last sample included).
    top
        The largest processes of the peak sample, largest first.
    n_samples, max_processes
        Samples taken, and the most processes seen in one.
    """

    baseline_bytes: int
    peak_bytes: int
    top: tuple[ProcessRss, ...]
    n_samples: int
    max_processes: int

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> TreeSample:
        """Inverse of ``dataclasses.asdict``."""
        top = tuple(ProcessRss(**p) for p in doc["top"])
        return cls(doc["baseline_bytes"], doc["peak_bytes"], top, doc["n_samples"],
                   doc["max_processes"])  # fmt: skip


def _command(proc: psutil.Process) -> str:
    try:
        text = " ".join(proc.cmdline()) or proc.name()
    except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
        return "?"
    return text if len(text) <= _COMMAND_CHARS else text[: _COMMAND_CHARS - 3] + "..."


class PeakSampler(TreeSampler):
    """A :class:`TreeSampler` that leaves some pids out and keeps who held the peak.

    Only ``sample_once`` differs: it walks the tree as
    :func:`~harness.measure.rss.tree_rss` does, but keeps each process's RSS
    so a failure can say *who* held the memory. Commands are read only when
    a sample sets a new peak, and only for the few largest processes.
    """

    def __init__(self, pid: int, period_s: float, exclude: Sequence[int] = ()) -> None:
        super().__init__(pid, period_s)
        self._exclude = frozenset(exclude)
        self.peak_top: tuple[ProcessRss, ...] = ()
        self._peak = -1

    def sample_once(self) -> None:
        sizes: list[tuple[int, int]] = []
        try:
            pids = [self._root.pid, *descendants(self._root)]
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            return
        for pid in pids:
            if pid in self._exclude:
                continue
            try:
                proc = self._cache.get(pid) or self._cache.setdefault(pid, psutil.Process(pid))
                sizes.append((proc.memory_info().rss, pid))
            except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
                continue  # exited between listing and reading: contributes nothing
        total = sum(rss for rss, _ in sizes)
        self._times.append(time.time())
        self._rss.append(total)
        self._counts.append(len(sizes))
        if total > self._peak:
            self._peak = total
            top = sorted(sizes, reverse=True)[:TOP_PROCESSES]
            self.peak_top = tuple(ProcessRss(p, r, _command(self._cache[p])) for r, p in top)

    def summary(self) -> TreeSample:
        """The samples so far, as a :class:`TreeSample`."""
        timeline = self.timeline()
        return TreeSample(
            baseline_bytes=timeline.rss_bytes[0] if timeline.rss_bytes else 0,
            peak_bytes=timeline.peak_bytes,
            top=self.peak_top,
            n_samples=len(timeline.rss_bytes),
            max_processes=timeline.max_processes,
        )


def serve(root: int, stdin: TextIO, stdout: TextIO) -> None:
    """The watcher's loop: answer ``start``/``stop`` until end of input."""
    sampler: PeakSampler | None = None
    for line in stdin:
        cmd = json.loads(line)
        if cmd["cmd"] == "exit":
            return
        if cmd["cmd"] == "start":
            sampler = PeakSampler(root, float(cmd["period_s"]), exclude=(os.getpid(),))
            sampler.sample_once()  # the baseline, before the body may start
            sampler.__enter__()
            reply: dict[str, Any] = {"baseline": sampler.summary().baseline_bytes}
        elif cmd["cmd"] == "stop" and sampler is not None:
            sampler.stop()
            sampler.sample_once()
            reply = asdict(sampler.summary())
            sampler = None
        else:
            reply = {"error": f"unexpected command {cmd!r}"}
        stdout.write(json.dumps(reply) + "\n")
        stdout.flush()


class TreeWatcher:
    """The pytest side: start the watcher once, then ask it to sample test bodies."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[str] | None = None

    def _ensure(self) -> subprocess.Popen[str]:
        if self._proc is None or self._proc.poll() is not None:
            # The child gets this sys.path, so it runs the harness this pytest imported.
            self._proc = subprocess.Popen(
                [sys.executable, "-c", _BOOT, json.dumps(sys.path), str(os.getpid())],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            )  # fmt: skip
        return self._proc

    def _ask(self, cmd: dict[str, Any]) -> dict[str, Any]:
        proc = self._ensure()
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(json.dumps(cmd) + "\n")
        proc.stdin.flush()
        ready, _, _ = select.select([proc.stdout], [], [], REPLY_TIMEOUT_S)
        line = proc.stdout.readline() if ready else ""
        if not line:
            raise HarnessError(f"the RSS watcher (pid {proc.pid}) did not answer {cmd['cmd']!r}")
        reply: dict[str, Any] = json.loads(line)
        if "error" in reply:
            raise HarnessError(f"the RSS watcher refused {cmd['cmd']!r}: {reply['error']}")
        return reply

    def start(self, period_s: float) -> int:
        """Take the baseline sample, start sampling; returns the baseline in bytes."""
        return int(self._ask({"cmd": "start", "period_s": period_s})["baseline"])

    def stop(self) -> TreeSample:
        """Stop sampling and return what was seen since :meth:`start`."""
        return TreeSample.from_json(self._ask({"cmd": "stop"}))

    def close(self) -> None:
        """End the watcher (end of input) and reap it."""
        if self._proc is None:
            return
        with contextlib.suppress(OSError):  # already gone
            assert self._proc.stdin is not None
            self._proc.stdin.write(json.dumps({"cmd": "exit"}) + "\n")
            self._proc.stdin.close()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._proc = None
