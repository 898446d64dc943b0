"""What a patch reader does, wherever it runs: fill its share of each batch into a ring slot.

:mod:`harness.loader` runs readers inline, on threads, or as processes
(``python -m harness._readers``); this module is the part they share, the
reader process's entry point, and the consumer's side of its pipes
(:class:`ProcessReaders`). It imports neither torch nor the loader, so a
reader process costs an interpreter, numpy and the slide readers (about
41 MiB), not the 250 MiB of torch that a forked DataLoader worker maps.

Shares
------
Batch ``b`` holds plan entries ``b * batch_size ...``. With several readers,
each entry belongs to the reader that owns its column range (:func:`owners`):
ranges ``period`` output pixels wide, dealt round-robin across each strip, so
a reader keeps revisiting the same slide columns row after row and its own
block or tile cache serves its next rows; dealing whole batches round-robin
instead made every reader decode nearly every tile. The period is what the
ring's slots span together (``slots x batch x stride / readers``), so the
batches in flight always hold work for every reader.

Flow control
------------
Batch ``b`` lives in slot ``b % slots``. A reader may write batch ``b`` once
the consumer has released batch ``b - slots`` (``released > b - slots``); it
reports each batch it finished, and the consumer waits for the readers that
own part of a batch before it hands the batch on.

Reader processes
----------------
A reader process is started with SIGINT and SIGTERM blocked (the mask survives
``exec``) and ignores both before unblocking them: stopping is the consumer's
decision, taken at a batch boundary, after which it closes the pipes and the
reader leaves. A reader asks the kernel to SIGKILL it when its parent dies
(``PR_SET_PDEATHSIG``), so a killed run leaves no reader behind. Errors travel
as the pickled exception without its traceback: one line, as raised.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import mmap
import os
import pickle
import signal
import struct
import subprocess
import sys
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from harness.errors import HarnessError
from harness.slides.base import CachedSlide, read_into

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from harness.plan import Plan, PlanConfig
    from harness.slides.base import Slide

DONE, ERROR, READY, FINISHED, RELEASE = b"D", b"E", b"R", b"F", b"L"
_INT = struct.Struct("<q")
_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}
EXIT_GRACE_S = 5.0
"""How long a reader that has finished its share may take to exit before it is killed."""


class LoaderError(HarnessError):
    """A reader process could not start, could not rebuild the slide, or died."""


@dataclass(frozen=True)
class Ring:
    """Geometry of the ring of batch slots: ``slots`` uint8 batches ``(batch, h, w, 3)``."""

    slots: int
    batch_size: int
    patch_hw: tuple[int, int]

    @property
    def nbytes(self) -> int:
        """Bytes of the whole ring."""
        return self.slots * self.batch_size * self.patch_hw[0] * self.patch_hw[1] * 3

    def view(self, buffer: Any) -> NDArray[np.uint8]:
        """The ring over ``buffer`` (an mmap or bytes-like of :attr:`nbytes`), slot first."""
        flat = np.frombuffer(buffer, dtype=np.uint8, count=self.nbytes)
        return flat.reshape(self.slots, self.batch_size, *self.patch_hw, 3)


@dataclass(frozen=True)
class ReaderJob:
    """Everything one reader needs (picklable: a reader process receives it)."""

    slide: Slide
    plan: Plan
    ring: Ring
    entries: NDArray[np.int64]  # the plan entries this reader fills, ascending
    cache_bytes: int | None = None  # its share of the read cache (None: leave the slide's)


def owners(plan: Plan, readers: int, period: int) -> NDArray[np.int64]:
    """Reader of every plan entry: column ranges of ``period`` output px, dealt round-robin.

    Ranges restart at each strip's first column, so each reader's share of a
    strip is the same columns on every patch row.
    """
    if readers <= 1:
        return np.zeros(plan.n_patches, dtype=np.int64)
    x = plan.origins[:, 1].astype(np.int64)
    strip = np.repeat(np.arange(len(plan.strip_starts) - 1), np.diff(plan.strip_starts))
    first = np.zeros(len(plan.strip_starts) - 1, dtype=np.int64)
    for s in range(len(first)):
        lo, hi = plan.strip_starts[s], plan.strip_starts[s + 1]
        first[s] = x[lo:hi].min() if hi > lo else 0
    return np.asarray(((x - first[strip]) // max(1, period)) % readers, dtype=np.int64)


def period_for(
    config: PlanConfig, batch_size: int, readers: int, slots: int, width: int | None = None
) -> int:
    """Column range width: the slots in flight span one range of every reader.

    Strips narrower than ``readers`` such ranges (``width`` output px) get
    narrower ranges, whole strides, so that every reader still has columns.
    """
    sw = config.stride_hw[1]
    period = slots * batch_size * sw // max(1, readers)
    if width is not None and readers > 1:
        period = min(period, -(-width // (readers * sw)) * sw)
    return max(sw, period)


def share_widths(strip_width: int, period: int, readers: int) -> list[list[int]]:
    """Output-pixel widths of each reader's column ranges across a strip ``strip_width`` wide."""
    shares: list[list[int]] = [[] for _ in range(max(1, readers))]
    for k in range(math.ceil(strip_width / max(1, period))):
        shares[k % len(shares)].append(min(period, strip_width - k * period))
    return shares


def share_need(slide: CachedSlide, config: PlanConfig, widths: list[int], scale: float) -> int:
    """Cache bytes for one reader to read each slide pixel of its ranges once.

    A range of ``w`` output columns reads ``w + patch`` input columns across the
    band of two patch rows (:meth:`~harness.plan.Plan.read_band`); each range is
    a band of its own (the reader jumps between them), so their needs add.
    """
    (ph, pw), sh = config.patch_hw, config.stride_hw[0]
    height = math.ceil((ph + sh) * scale)
    return sum(slide.cache_need((height, math.ceil((w + pw) * scale))) for w in widths)


def fill(slide: Slide, plan: Plan, entries: NDArray[np.int64], slot: NDArray[np.uint8]) -> None:
    """Read plan ``entries`` (all in one batch) into their places of ``slot``."""
    mpp = plan.config.mpp
    batch_size = slot.shape[0]
    for i in entries:
        read_into(slide, plan.input_box(int(i)), mpp, slot[int(i) % batch_size])


class Gate(Protocol):
    """How a reader learns it may write a batch, and says it has."""

    def admit(self, batch: int) -> None:
        """Block until ``batch``'s slot is free."""
        ...

    def done(self, batch: int) -> None:
        """Report ``batch``'s share written."""
        ...


def run_share(job: ReaderJob, ring: NDArray[np.uint8], gate: Gate) -> None:
    """Fill every batch of ``job``'s share, in order, each once its slot is free."""
    if job.cache_bytes is not None and isinstance(job.slide, CachedSlide):
        job.slide.resize_cache(job.cache_bytes)
    size, slots = job.ring.batch_size, job.ring.slots
    batches = job.entries // size
    bounds = np.flatnonzero(np.diff(batches)) + 1
    for group in np.split(job.entries, bounds) if len(job.entries) else []:
        b = int(group[0]) // size
        gate.admit(b)
        fill(job.slide, job.plan, group, ring[b % slots])
        gate.done(b)


def portable(exc: BaseException) -> bytes:
    """``exc`` pickled without its traceback, or a RuntimeError naming it if it cannot be."""
    exc.__traceback__ = exc.__cause__ = exc.__context__ = None
    try:
        data = pickle.dumps(exc)
        pickle.loads(data)
        return data
    except Exception:
        return pickle.dumps(RuntimeError(f"{type(exc).__name__}: {exc}"))


class _PipeGate:
    """:class:`Gate` over the reader process's two pipes."""

    def __init__(self, control: Connection, results: Connection, slots: int) -> None:
        self.control, self.results, self.slots = control, results, slots
        self.released = 0

    def admit(self, batch: int) -> None:
        while self.control.poll():  # keep the consumer's pipe drained
            self._release(self.control.recv_bytes())
        while batch >= self.released + self.slots:
            self._release(self.control.recv_bytes())

    def _release(self, message: bytes) -> None:
        self.released = max(self.released, _INT.unpack(message[1:])[0])

    def done(self, batch: int) -> None:
        self.results.send_bytes(DONE + _INT.pack(batch))


def _rss() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * mmap.PAGESIZE


def _peak_rss() -> int:
    """This process's peak RSS since exec (VmHWM; ru_maxrss keeps the forked parent's)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def _die_with_parent(parent: int) -> None:
    """Ask the kernel to SIGKILL this process when its parent dies (Linux), and check it lives."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:
        os._exit(1)


def _job(payload: bytes) -> ReaderJob:
    """The job, or one line saying why this process cannot rebuild it."""
    try:
        job = pickle.loads(payload)
    except Exception as exc:
        raise LoaderError(
            f"a patch reader process could not rebuild its slide ({type(exc).__name__}: {exc}); "
            "reader processes import the slide's class by name, so define it in an importable "
            "module, or read in the main process (workers=0)"
        ) from None
    assert isinstance(job, ReaderJob)
    return job


def main(argv: list[str] | None = None) -> None:
    """Reader process: ``python -m harness._readers CONTROL_FD RESULTS_FD RING_FD PARENT_PID``."""
    control_fd, results_fd, ring_fd, parent = (int(a) for a in (argv or sys.argv[1:]))
    # The consumer stops readers (closing their pipe); ^C and SIGTERM are its to handle.
    # They arrive blocked (see ProcessReaders.start): ignore them first, then unblock.
    for sig in _STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
    _die_with_parent(parent)
    control = Connection(control_fd, writable=False)
    results = Connection(results_fd, readable=False)
    try:
        sys.path[:0] = [p for p in pickle.loads(control.recv_bytes()) if p not in sys.path]
        job = _job(control.recv_bytes())
        # Never closed: the process ends with the share, and views of it may outlive a with.
        buffer = mmap.mmap(ring_fd, job.ring.nbytes)
        results.send_bytes(READY + _INT.pack(_rss()))
        run_share(job, job.ring.view(buffer), _PipeGate(control, results, job.ring.slots))
        results.send_bytes(FINISHED + _INT.pack(_peak_rss()))
    except (EOFError, BrokenPipeError):
        pass  # the consumer is gone or stopped early: nothing to report to
    except BaseException as exc:
        with contextlib.suppress(OSError):
            results.send_bytes(ERROR + portable(exc))


@dataclass
class _Reader:
    """The consumer's handle on one reader process."""

    proc: subprocess.Popen[bytes]
    control: Connection
    results: Connection
    last_batch: int  # the last batch it owns part of (-1: none)
    done: int = -1  # the last batch it reported written
    baseline: int = 0  # its RSS once started (imports and the job), from READY
    peak: int = 0  # its kernel peak RSS, from FINISHED
    finished: bool = False


class ProcessReaders:
    """Reader processes over a shared-memory ring: the consumer's side of their pipes.

    :meth:`start` spawns one process per job; :meth:`wait` blocks until every
    reader that owns part of a batch has written it; :meth:`release` frees the
    slots of batches the consumer is done with; :meth:`close` ends them all.
    """

    def __init__(self, ring: Ring) -> None:
        self.ring = ring
        self.readers: list[_Reader] = []
        self._fd = _ring_fd(ring.nbytes)
        self._map = mmap.mmap(self._fd, ring.nbytes)
        self.view = ring.view(self._map)

    def start(self, jobs: list[ReaderJob]) -> None:
        """Spawn a reader per job (signals blocked across the spawn, see the module notes)."""
        import harness

        env = dict(os.environ)
        root = str(Path(harness.__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        path = pickle.dumps(list(sys.path))
        for job in jobs:
            payload = _payload(job)  # before spawning: an unpicklable slide fails here
            self.readers.append(self._spawn(env, job))
            self.readers[-1].control.send_bytes(path)
            self.readers[-1].control.send_bytes(payload)
        os.close(self._fd)
        self._fd = -1

    def _spawn(self, env: dict[str, str], job: ReaderJob) -> _Reader:
        from multiprocessing import Pipe

        control_r, control_w = Pipe(duplex=False)
        results_r, results_w = Pipe(duplex=False)
        fds = (control_r.fileno(), results_w.fileno(), self._fd)
        argv = [sys.executable, "-m", "harness._readers", *map(str, fds), str(os.getpid())]
        old = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        try:
            proc = subprocess.Popen(argv, pass_fds=fds, env=env, stdin=subprocess.DEVNULL)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
            control_r.close()
            results_w.close()
        last = int(job.entries[-1]) // self.ring.batch_size if len(job.entries) else -1
        return _Reader(proc, control_w, results_r, last)

    def wait(self, batch: int, owners: list[int]) -> None:
        """Block until readers ``owners`` have written their parts of ``batch``."""
        for r in owners:
            reader = self.readers[r]
            while reader.done < batch:
                self._receive(r, reader)

    def _receive(self, r: int, reader: _Reader) -> None:
        try:
            message = reader.results.recv_bytes()
        except EOFError:
            raise LoaderError(self._death(r, reader)) from None
        _handle(reader, message)

    def _death(self, r: int, reader: _Reader) -> str:
        try:
            code = reader.proc.wait(timeout=EXIT_GRACE_S)
        except subprocess.TimeoutExpired:
            code = None
        how = "closed its pipe" if code is None else _describe_exit(code)
        return f"patch reader process {r} (pid {reader.proc.pid}) {how} before it finished"

    def release(self, count: int) -> None:
        """Tell every reader with batches left that batches ``< count`` are free."""
        message = RELEASE + _INT.pack(count)
        for reader in self.readers:
            if reader.last_batch >= count:  # it still has batches that may wait for this
                with contextlib.suppress(BrokenPipeError, OSError):
                    reader.control.send_bytes(message)

    def close(self, completed: bool) -> None:
        """End every reader: let finished ones exit, kill the rest; reap them all."""
        for reader in self.readers:
            reader.control.close()
            if completed:
                self._drain(reader)
            reader.results.close()
            proc = reader.proc
            if not completed or proc.poll() is None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=EXIT_GRACE_S if completed else 0)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _drain(self, reader: _Reader) -> None:
        """Read what a finished reader still has to say (its peak RSS)."""
        with contextlib.suppress(EOFError, OSError):
            while not reader.finished and reader.results.poll(EXIT_GRACE_S):
                _handle(reader, reader.results.recv_bytes())


def _payload(job: ReaderJob) -> bytes:
    """``job`` pickled for a reader process, or one line saying why it cannot be."""
    try:
        return pickle.dumps(job)
    except Exception as exc:
        raise LoaderError(
            f"cannot send the slide {type(job.slide).__name__} to reader processes "
            f"({type(exc).__name__}: {exc}); read with threads (WSI_HARNESS_READERS=thread) "
            "or in the main process (workers=0)"
        ) from None


def _handle(reader: _Reader, message: bytes) -> None:
    """Apply one message from ``reader`` (raise the error it reports)."""
    kind, body = message[:1], message[1:]
    if kind == DONE:
        reader.done = _INT.unpack(body)[0]
    elif kind == READY:
        reader.baseline = _INT.unpack(body)[0]
    elif kind == FINISHED:
        reader.peak, reader.finished = _INT.unpack(body)[0], True
    elif kind == ERROR:
        raise _unpickled(body)


def _ring_fd(nbytes: int) -> int:
    """An anonymous shared file of ``nbytes`` (a memfd on Linux) to map in every process."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("wsi-harness-ring", 0)
    else:  # other POSIX systems: an unlinked temporary file serves the same purpose
        import tempfile

        with tempfile.TemporaryFile() as f:
            fd = os.dup(f.fileno())
    os.ftruncate(fd, max(1, nbytes))
    return fd


def _unpickled(body: bytes) -> BaseException:
    try:
        exc = pickle.loads(body)
    except Exception as err:  # a class this process cannot import
        return LoaderError(f"a patch reader failed and its error could not be read: {err}")
    return exc if isinstance(exc, BaseException) else LoaderError(f"patch reader: {exc!r}")


def _describe_exit(code: int) -> str:
    if code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with status {code}"


if __name__ == "__main__":
    # Run the imported module's main, not this __main__ copy: the job unpickles into
    # harness._readers' classes, which must be the ones main() checks against.
    from harness import _readers

    _readers.main()
