"""Run state kept inside an output: the writer lock and the progress records.

Layout, beside the zarr arrays (zarr ignores a folder without ``zarr.json``)::

    OUT.zarr/.wsi-harness/lock                 who writes this output (JSON), flock'd
    OUT.zarr/.wsi-harness/progress/<block>.json  chunks final, one record per block writer
    OUT.zarr/.wsi-harness/spill/               default scratch of raster-order spills

**One writer per output.** :class:`OutputLock` holds an exclusive ``flock`` on
the lock file for the whole run; the kernel releases it when the process dies,
however it dies, so a lock whose holder is gone is *stale* by construction and
can be taken over (``--resume``, ``--overwrite``), while a live holder makes a
second run refuse with one line naming its pid and host. Forked children
(DataLoader workers) close the descriptor (``os.register_at_fork``), so the
lock ends with the process that took it. ``flock`` is local to one machine
(and to NFS with lockd): a lock naming another host is refused unless taken over.

**Progress.** A :class:`ProgressRecord` is a bitmap of the block's final chunks,
replaced atomically (temporary file + rename) at most every
:data:`RECORD_INTERVAL_S` and at the block's end or interruption, after a
``syncfs`` so that every chunk it lists is on stable storage, power cuts
included. The record lags the chunks by at most that interval, but nothing is
lost by the lag: every chunk file reaches its final name whole
(:func:`harness.output._chunkfiles.commit_bytes`, zarr's own ``LocalStore``),
and only final chunks are ever written, so on resume a chunk whose files exist
and decode is final too (:meth:`harness.output.zarr_store.ZarrStore.final_chunks`).
What a kill loses is therefore exactly the chunks not yet final: those live
in the merger (partial sums in RAM) and those queued for the writer.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import fcntl
import json
import os
import socket
import sys
import threading
import time
import weakref
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from harness.errors import hint
from harness.output._chunkfiles import commit_bytes, plain_commits
from harness.output.base import OutputError, os_error

if TYPE_CHECKING:
    from pathlib import Path

    from numpy.typing import NDArray

STATE_DIR = ".wsi-harness"
RECORD_INTERVAL_S = 5.0
"""Longest time between two progress records of a running block."""

_OPEN_LOCKS: weakref.WeakSet[OutputLock] = weakref.WeakSet()


def _close_locks_in_child() -> None:
    for lock in list(_OPEN_LOCKS):
        lock.forget()


os.register_at_fork(after_in_child=_close_locks_in_child)


def state_dir(root: Path) -> Path:
    """The run-state folder of output ``root``."""
    return root / STATE_DIR


@dataclass(frozen=True)
class Holder:
    """Who holds (or last held) an output's lock."""

    pid: int
    host: str
    started: float
    run_id: str = ""
    spill: tuple[str, ...] = ()

    @property
    def here(self) -> bool:
        """Whether the holder ran on this machine."""
        return self.host == socket.gethostname()

    def describe(self) -> str:
        """``pid 123 on host, started 2026-12-03 10:00:00``."""
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started))
        return f"pid {self.pid} on {self.host}, started {when}"

    @classmethod
    def read(cls, path: Path) -> Holder | None:
        """The holder recorded in lock file ``path`` (None when empty or unreadable)."""
        try:
            data = json.loads(path.read_text())
            return cls(int(data["pid"]), str(data["host"]), float(data["started"]),
                       str(data.get("run_id", "")), tuple(data.get("spill", ())))  # fmt: skip
        except (OSError, ValueError, KeyError, TypeError):
            return None


class OutputLock:
    """An exclusive, crash-released lock on one output (see the module docstring)."""

    def __init__(self, root: Path) -> None:
        self.path = state_dir(root) / "lock"
        self.fd: int | None = None
        self.previous: Holder | None = None

    def acquire(self, takeover: bool) -> Holder | None:
        """Take the lock; return the stale holder it replaced (``takeover`` allows one).

        Raises
        ------
        OutputError
            When a live run holds it, or a stale one does and ``takeover`` is False.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = Holder.read(self.path)
            who = holder.describe() if holder else "another process"
            raise OutputError(
                f"output {self.path.parent.parent} is being written by {who}; "
                "one writer per output: wait for it to finish or stop it"
            ) from None
        previous = Holder.read(self.path)
        if previous is not None and not takeover:
            os.close(fd)
            raise OutputError(
                f"output {self.path.parent.parent} was left by a run that stopped "
                f"({previous.describe()}); continue it with {hint('resume')}"
            )
        self.fd, self.previous = fd, previous
        _OPEN_LOCKS.add(self)
        return previous

    def record(self, run_id: str = "", spill: tuple[str, ...] = ()) -> None:
        """Write this process as the holder, with its run id and the spill folders it uses."""
        assert self.fd is not None, "record() needs the lock"
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
              "run_id": run_id, "spill": list(spill)}  # fmt: skip
        data = json.dumps(me).encode()
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, data, 0)

    def release(self, remove: bool = True) -> None:
        """Drop the lock (and its file, when the output is finished)."""
        if self.fd is None:
            return
        if remove:
            with contextlib.suppress(OSError):
                self.path.unlink()
        with contextlib.suppress(OSError):
            os.close(self.fd)
        self.fd = None
        _OPEN_LOCKS.discard(self)

    def forget(self) -> None:
        """In a forked child: close the inherited descriptor without touching the lock."""
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None


# ------------------------------------------------------------------ progress


def _syncfs(path: Path) -> None:
    """Flush the filesystem holding ``path`` (Linux ``syncfs``; ``os.sync`` elsewhere)."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            fd = os.open(path, os.O_RDONLY)
            try:
                libc.syncfs(fd)
            finally:
                os.close(fd)
            return
        except OSError:
            pass
    os.sync()


def pack(bits: NDArray[np.bool_]) -> str:
    """A boolean vector as compact text (zlib'd bit-packing, base64)."""
    return base64.b64encode(zlib.compress(np.packbits(bits).tobytes())).decode("ascii")


def unpack(text: str, n: int) -> NDArray[np.bool_]:
    """The inverse of :func:`pack` for ``n`` booleans."""
    raw = np.frombuffer(zlib.decompress(base64.b64decode(text)), dtype=np.uint8)
    return np.unpackbits(raw, count=n).astype(bool)


class ProgressRecord:
    """Final chunks of one block, persisted atomically (see the module docstring).

    ``mark`` is called from the writer thread after a chunk's files are
    committed. Every :data:`RECORD_INTERVAL_S` it hands a snapshot to a
    background thread that runs the ``syncfs`` and replaces the record, so the
    writer never waits on the filesystem flush: ``syncfs`` waits for *every*
    dirty page of the filesystem, other processes' too, and inline it cost a
    16k run ~10 s while another job wrote gigabytes. :meth:`persist` (block
    end, interruption) waits for that thread and writes synchronously. A
    background failure (disk full) is raised by the next ``mark`` or
    ``persist``.
    """

    def __init__(
        self, root: Path, key: str, n_chunks: int, interval_s: float = RECORD_INTERVAL_S
    ) -> None:
        self.root = root
        self.path = state_dir(root) / "progress" / f"{key}.json"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.final = np.zeros(n_chunks, dtype=bool)
        old = read_records(root, n_chunks, only=self.path)
        self.final |= old
        self.interval_s = interval_s
        self.last = time.monotonic()
        self.dirty = False
        self.writes = 0
        self._lock = threading.Lock()  # the bitmap, between the writer and the flusher
        self._flusher: threading.Thread | None = None
        self._error: BaseException | None = None

    def mark(self, chunk: int) -> None:
        """Chunk ``chunk`` is committed."""
        self._raise_background_error()
        with self._lock:
            self.final[chunk] = True
            self.dirty = True
        due = time.monotonic() - self.last >= self.interval_s
        if due and (self._flusher is None or not self._flusher.is_alive()):
            self.last = time.monotonic()
            self._flusher = threading.Thread(target=self._flush_in_background, daemon=True,
                                             name="wsi-progress")  # fmt: skip
            self._flusher.start()

    def persist(self) -> None:
        """Sync the filesystem, then replace the record (no-op when nothing changed)."""
        if self._flusher is not None:
            self._flusher.join()
        self._raise_background_error()
        self._flush()

    def _flush_in_background(self) -> None:
        try:
            self._flush()
        except BaseException as exc:  # re-raised in the writer thread by mark/persist
            self._error = exc

    def _raise_background_error(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _flush(self) -> None:
        with self._lock:
            if not self.dirty or plain_commits():
                return
            final, self.dirty = self.final.copy(), False
        _syncfs(self.root)  # every chunk the snapshot lists is on stable storage first
        body = {"version": 1, "chunks": int(final.size), "final": pack(final),
                "written": time.time(), "pid": os.getpid()}  # fmt: skip
        try:
            commit_bytes(self.path, json.dumps(body).encode())
        except OSError as exc:
            with self._lock:
                self.dirty = True
            raise os_error(self.root, exc, "write the progress record of") from exc
        self.writes += 1


def read_records(root: Path, n_chunks: int, only: Path | None = None) -> NDArray[np.bool_]:
    """Union of the final chunks in every progress record of output ``root``."""
    final = np.zeros(n_chunks, dtype=bool)
    folder = state_dir(root) / "progress"
    paths = [only] if only is not None else sorted(folder.glob("*.json"))
    for path in paths:
        try:
            body: dict[str, Any] = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # absent, or (never, given atomic replace) unreadable: not trusted
        if body.get("chunks") == n_chunks:
            final |= unpack(body["final"], n_chunks)
    return final
