"""Clean interruption: SIGINT and SIGTERM stop a run at the next batch boundary.

While :func:`stop_on_signals` is active (in the main thread), the first SIGINT
or SIGTERM only records a :class:`StopRequest`; the engine loop checks it after
every batch, stops reading, lets the writer commit the chunks already final,
persists the progress record and raises :class:`Interrupted` (the CLI exits
130 or 143 with one line). A second signal exits at once with the same
status: chunk files and records are committed by rename, so even then nothing
is torn and ``--resume`` continues from the last committed chunk. The previous
handlers are restored on exit, so a Python caller's own Ctrl-C handling returns.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from harness.errors import HarnessError, hint

if TYPE_CHECKING:
    from collections.abc import Iterator
    from types import FrameType

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(HarnessError):
    """The run was stopped by a signal; the output is incomplete and resumable."""

    def __init__(self, signum: int, done: int, total: int) -> None:
        name = signal.Signals(signum).name
        super().__init__(
            f"interrupted by {name} after {done:,} of {total:,} patches; "
            f"continue with {hint('resume')}"
        )
        self.signum, self.done, self.total = signum, done, total

    @property
    def exit_code(self) -> int:
        """The shell convention: 128 + signal number (130 for SIGINT, 143 for SIGTERM)."""
        return 128 + self.signum


@dataclass
class StopRequest:
    """Set by the first signal; read by the engine loop at batch boundaries."""

    signum: int | None = None

    @property
    def requested(self) -> bool:
        """Whether a stop was asked for."""
        return self.signum is not None


def _handler(request: StopRequest) -> signal.Handlers | object:
    def handle(signum: int, frame: FrameType | None) -> None:
        if request.signum is not None:  # the second signal: leave now
            with contextlib.suppress(OSError):
                os.write(2, f"\n{signal.Signals(signum).name} again: exiting now\n".encode())
            os._exit(128 + signum)
        request.signum = signum
        with contextlib.suppress(OSError):
            os.write(2, b"\nstopping at the next batch (signal again to exit now)\n")

    return handle


@contextlib.contextmanager
def stop_on_signals(enabled: bool = True) -> Iterator[StopRequest]:
    """Turn SIGINT/SIGTERM into a :class:`StopRequest` for the duration (main thread only)."""
    request = StopRequest()
    usable = enabled and threading.current_thread() is threading.main_thread()
    previous = {}
    if usable:
        for sig in SIGNALS:
            previous[sig] = signal.signal(sig, _handler(request))  # type: ignore[arg-type]
    try:
        yield request
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
        sys.stderr.flush()


def ignore_sigint_in_worker(_: int = 0) -> None:
    """``worker_init_fn`` for reader processes: the parent stops them, not the terminal's ^C."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
