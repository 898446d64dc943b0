"""Run a workload in a fresh process and measure its memory and time.

A workload is either a command (an argv list) or a picklable, importable
callable with its arguments, run in a fresh interpreter the way the
``spawn`` start method would. Either way :func:`run_command` /
:func:`run_callable` return a frozen :class:`Measurement` holding:

``peak_rss_bytes``
    Peak of the *sum* of RSS over the child and all its descendants,
    sampled every ~10 ms by :class:`~harness.measure.rss.TreeSampler`, and
    never less than ``ru_maxrss_bytes`` (a floor the sampler may miss). This
    is the figure the gates use: it includes DataLoader workers, mapped
    files, allocator caches and the interpreter, i.e. what the OOM killer
    sees (shared copy-on-write pages are counted once per process, so it
    errs high).
``ru_maxrss_bytes``
    The kernel's ``ru_maxrss`` for the workload, from ``os.wait4``: the peak
    RSS of the *largest single process* among the workload and the
    descendants it waited for, not a sum. The workload is started by a tiny
    launcher (:mod:`harness.measure._launch`) because Linux carries the
    high-water mark of the memory a process was forked from across ``exec``:
    started straight from a 300 MB pytest process, a 30 MB workload would
    report 300 MB. It never misses a spike, so it cross-checks the
    sampler: for a one-process workload the two agree within a few percent;
    for a tree the sampled peak is larger.
``baseline_rss_bytes``
    RSS of the child right before the workload body (after imports and model
    load). Callables get it automatically; a command reports it by writing
    ``{"rss_bytes": N}`` to the file named by :data:`BASELINE_ENV` (see
    :func:`write_baseline`). ``None`` when the command did not.
``memray``
    Optional memray heap high-water mark (see
    :mod:`harness.measure.memray_capture`), lower than RSS because it only
    counts live heap allocations.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.errors import HarnessError
from harness.measure.memray_capture import MemrayCapture, memray_run_argv, read_capture
from harness.measure.rss import DEFAULT_PERIOD_S, RssTimeline, TreeSampler

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

#: Environment variable naming the file a child writes its baseline RSS to.
BASELINE_ENV = "WSI_HARNESS_BASELINE_FILE"


def current_rss_bytes() -> int:
    """RSS of this process now (Linux ``/proc/self/statm``, else psutil)."""
    try:
        resident_pages = int(Path("/proc/self/statm").read_text().split()[1])
        return resident_pages * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import psutil

        return int(psutil.Process().memory_info().rss)


def write_baseline(path: str | os.PathLike[str] | None = None) -> int | None:
    """Record this process's RSS now as the workload baseline.

    Call it after imports and model load, before the work to be measured.
    With no ``path`` it writes to the file named by :data:`BASELINE_ENV` and
    does nothing when that variable is unset.

    Returns
    -------
    int or None
        The RSS written, or ``None`` when there was nowhere to write it.
    """
    target = path if path is not None else os.environ.get(BASELINE_ENV)
    if not target:
        return None
    rss = current_rss_bytes()
    Path(target).write_text(json.dumps({"rss_bytes": rss}))
    return rss


@dataclass(frozen=True)
class Measurement:
    """What one measured run did (see the module docstring for each figure).

    Attributes
    ----------
    argv
        The command run (for callables, the child bootstrap).
    returncode
        Exit status; negative for a signal, as in :mod:`subprocess`.
    timed_out
        The run was killed for exceeding its time limit.
    started_at
        ``time.time()`` when the child was started.
    wall_s
        Wall-clock seconds from start to exit.
    cpu_user_s, cpu_sys_s
        CPU seconds of the child and the descendants it waited for.
    peak_rss_bytes
        Peak of the process-tree RSS sum: ``max(timeline.peak_bytes, ru_maxrss_bytes)``.
    ru_maxrss_bytes
        Kernel peak RSS of the largest single process in the tree.
    baseline_rss_bytes
        Child RSS before the workload body, if reported.
    timeline
        All RSS samples.
    stdout, stderr
        Captured output.
    memray
        memray capture, when requested.
    result
        The callable's return value (callables only, ``None`` on failure).
    """

    argv: tuple[str, ...]
    returncode: int
    timed_out: bool
    started_at: float
    wall_s: float
    cpu_user_s: float
    cpu_sys_s: float
    peak_rss_bytes: int
    ru_maxrss_bytes: int
    baseline_rss_bytes: int | None
    timeline: RssTimeline = field(repr=False)
    stdout: str = field(repr=False)
    stderr: str = field(repr=False)
    memray: MemrayCapture | None = None
    result: Any = field(default=None, repr=False)

    @property
    def cpu_s(self) -> float:
        """User plus system CPU seconds."""
        return self.cpu_user_s + self.cpu_sys_s

    @property
    def peak_above_baseline_bytes(self) -> int | None:
        """Tree peak minus the baseline: what the workload body added."""
        if self.baseline_rss_bytes is None:
            return None
        return self.peak_rss_bytes - self.baseline_rss_bytes

    def check(self) -> Measurement:
        """Return ``self``, or raise :class:`HarnessError` if the run failed."""
        if self.returncode != 0:
            why = "timed out" if self.timed_out else f"exited with status {self.returncode}"
            tail = self.stderr.strip()[-800:]
            raise HarnessError(f"{' '.join(self.argv[:6])} ... {why}: {tail}")
        return self

    def stdout_json(self) -> dict[str, Any]:
        """The last line of stdout that parses as a JSON object.

        Raises
        ------
        HarnessError
            If no line of stdout is a JSON object.
        """
        for line in reversed(self.stdout.strip().splitlines()):
            try:
                value = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(value, dict):
                return value
        raise HarnessError(f"no JSON object on stdout of {' '.join(self.argv[:6])}")

    def to_dict(self, *, timeline: bool = False) -> dict[str, Any]:
        """JSON-ready form (no stdout/stderr/result; the timeline on request)."""
        out: dict[str, Any] = {
            "argv": list(self.argv),
            "returncode": self.returncode,
            "timed_out": self.timed_out,
            "started_at": self.started_at,
            "wall_s": self.wall_s,
            "cpu_user_s": self.cpu_user_s,
            "cpu_sys_s": self.cpu_sys_s,
            "peak_rss_bytes": self.peak_rss_bytes,
            "ru_maxrss_bytes": self.ru_maxrss_bytes,
            "baseline_rss_bytes": self.baseline_rss_bytes,
            "peak_above_baseline_bytes": self.peak_above_baseline_bytes,
            "max_processes": self.timeline.max_processes,
            "n_samples": len(self.timeline.rss_bytes),
            "memray": None if self.memray is None else self.memray.to_dict(),
        }
        if timeline:
            out["timeline"] = {
                "times": list(self.timeline.times),
                "rss_bytes": list(self.timeline.rss_bytes),
                "n_processes": list(self.timeline.n_processes),
            }
        return out


#: The launcher script; run with ``python -S`` so it stays a few MiB.
_LAUNCHER = str(Path(__file__).with_name("_launch.py"))


@dataclass(frozen=True)
class _Exit:
    """How the workload ended: status, and its rusage as the launcher reaped it."""

    returncode: int
    timed_out: bool
    ru_maxrss_bytes: int
    cpu_user_s: float
    cpu_sys_s: float


def _read_rusage(path: Path, returncode: int, timed_out: bool) -> _Exit:
    try:
        usage = json.loads(path.read_text())
    except (OSError, ValueError):  # launcher killed (timeout) before it could write
        return _Exit(returncode, timed_out, 0, 0.0, 0.0)
    maxrss = int(usage["ru_maxrss_kib"]) * 1024  # Linux reports KiB
    return _Exit(returncode, timed_out, maxrss, float(usage["utime"]), float(usage["stime"]))


def _wait(proc: subprocess.Popen[bytes], sampler: TreeSampler, timeout_s: float | None) -> _Exit:
    """Wait for ``proc`` to exit, stop ``sampler`` before reaping, then reap it."""
    fired = threading.Event()

    def kill() -> None:
        fired.set()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the whole session: workers too

    timer = threading.Timer(timeout_s, kill) if timeout_s is not None else None
    if timer is not None:
        timer.daemon = True
        timer.start()
    try:
        # WNOWAIT leaves the child a zombie, so its pid cannot be reused while
        # the sampler may still be reading it.
        os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
    except BaseException:  # e.g. KeyboardInterrupt: take the workload down with us
        kill()
        raise
    finally:
        if timer is not None:
            timer.cancel()
        sampler.stop()
    proc.wait()
    return _Exit(proc.returncode, fired.is_set(), 0, 0.0, 0.0)


def _read_baseline(path: Path) -> int | None:
    try:
        return int(json.loads(path.read_text())["rss_bytes"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def run_command(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    period_s: float = DEFAULT_PERIOD_S,
    timeout_s: float | None = None,
    memray_file: Path | None = None,
    aggregate: bool = False,
) -> Measurement:
    """Run ``argv`` in a new process session and measure it.

    Parameters
    ----------
    argv
        The command. With ``memray_file`` it must be a Python command (see
        :func:`~harness.measure.memray_capture.memray_run_argv`).
    env
        Extra environment variables (on top of this process's).
    cwd
        Working directory of the child.
    period_s
        RSS sampling period.
    timeout_s
        Kill the whole process group after this many seconds.
    memray_file
        Capture the run with ``memray run --native --follow-fork`` to this file.
    aggregate
        Pass ``--aggregate`` to memray (small capture, peak only).

    Returns
    -------
    Measurement
        Whatever the exit status; call :meth:`Measurement.check` to insist on 0.
    """
    cmd = list(argv)
    if memray_file is not None:
        cmd = memray_run_argv(cmd, memray_file, aggregate=aggregate)
    with tempfile.TemporaryDirectory(prefix="wsi-measure-") as tmp:
        baseline, rusage = Path(tmp) / "baseline.json", Path(tmp) / "rusage.json"
        full_env = {**os.environ, **(env or {}), BASELINE_ENV: str(baseline)}
        out_path, err_path = Path(tmp) / "stdout", Path(tmp) / "stderr"
        launch = [sys.executable, "-S", _LAUNCHER, str(rusage), *cmd]
        with out_path.open("wb") as out, err_path.open("wb") as err:
            started, t0 = time.time(), time.perf_counter()
            proc = subprocess.Popen(
                launch, stdout=out, stderr=err, env=full_env, cwd=cwd, start_new_session=True
            )
            with TreeSampler(proc.pid, period_s, include_root=False) as sampler:
                waited = _wait(proc, sampler, timeout_s)
            wall = time.perf_counter() - t0
        ended = _read_rusage(rusage, waited.returncode, waited.timed_out)
        return _measurement(cmd, ended, sampler.timeline(), (started, wall), Path(tmp), memray_file)


def _measurement(
    cmd: list[str],
    ended: _Exit,
    timeline: RssTimeline,
    times: tuple[float, float],
    tmp: Path,
    memray_file: Path | None,
) -> Measurement:
    """Assemble a command's record from its rusage, RSS timeline and files in ``tmp``."""
    maxrss = ended.ru_maxrss_bytes
    return Measurement(
        argv=tuple(cmd),
        returncode=ended.returncode,
        timed_out=ended.timed_out,
        started_at=times[0],
        wall_s=times[1],
        cpu_user_s=ended.cpu_user_s,
        cpu_sys_s=ended.cpu_sys_s,
        # The kernel's single-process peak is a floor for the tree's: never report
        # less, even for a spike or a run shorter than the sampling period.
        peak_rss_bytes=max(timeline.peak_bytes, maxrss),
        ru_maxrss_bytes=maxrss,
        baseline_rss_bytes=_read_baseline(tmp / "baseline.json"),
        timeline=timeline,
        stdout=(tmp / "stdout").read_text(errors="replace"),
        stderr=(tmp / "stderr").read_text(errors="replace"),
        memray=read_capture(memray_file) if memray_file and memray_file.is_file() else None,
    )


def run_callable(
    fn: Callable[..., Any],
    *args: Any,
    period_s: float = DEFAULT_PERIOD_S,
    timeout_s: float | None = None,
    memray_file: Path | None = None,
    **kwargs: Any,
) -> Measurement:
    """Run ``fn(*args, **kwargs)`` in a fresh interpreter and measure it.

    ``fn`` must be importable by name (a module-level function, not one in
    ``__main__`` or a lambda), and its arguments and return value picklable,
    as with the ``spawn`` start method. The child gets this process's
    ``sys.path``, records its baseline RSS after unpickling (which imports
    ``fn``'s module), and the body may call :func:`write_baseline` again,
    e.g. after loading a model.

    Parameters
    ----------
    fn, args, kwargs
        The workload.
    period_s, timeout_s
        As for :func:`run_command`.
    memray_file
        Track the body with ``memray.Tracker(native_traces=True, follow_fork=True)``.

    Returns
    -------
    Measurement
        With ``result`` set to the return value when the call succeeded.
    """
    with tempfile.TemporaryDirectory(prefix="wsi-callable-") as tmp:
        payload, result = Path(tmp) / "payload.pkl", Path(tmp) / "result.pkl"
        with payload.open("wb") as f:
            header = {"sys_path": list(sys.path), "memray_file": memray_file}
            pickle.dump(header, f)
            pickle.dump((fn, args, kwargs), f)
        argv = [sys.executable, "-m", "harness.measure._child", str(payload), str(result)]
        measured = run_command(argv, period_s=period_s, timeout_s=timeout_s)
        if memray_file is not None and memray_file.is_file():
            measured = replace(measured, memray=read_capture(memray_file))
        if measured.returncode == 0 and result.is_file():
            with result.open("rb") as f:
                measured = replace(measured, result=pickle.load(f))
        return measured
