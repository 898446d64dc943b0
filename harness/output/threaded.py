"""A sink that writes on a background thread, so encoding and I/O overlap compute."""

from __future__ import annotations

import os
import queue
import threading
from typing import TYPE_CHECKING, Any

from harness.errors import ConfigError

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

    from harness.output.base import Box, OutputSink


class ThreadedSink:
    """Hands finalised chunks to a writer thread in front of another :class:`OutputSink`.

    At most ``depth`` chunks wait in the queue (about 0.85 MB each at the
    defaults), so memory stays bounded. A write error is kept and raised in the
    caller's thread at the next ``write_chunk``, or at :meth:`finish`.
    """

    def __init__(self, sink: OutputSink, depth: int = 4) -> None:
        self.sink, self.depth = sink, depth
        self.queue: queue.Queue[tuple[Any, ...] | None] = queue.Queue(maxsize=depth)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="wsi-harness-writer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (item := self.queue.get()) is not None:
            if self.error is None:
                try:
                    self.sink.write_chunk(*item)
                except BaseException as exc:  # re-raised in the caller's thread
                    self.error = exc

    def write_chunk(self, box: Box, probs: NDArray[np.float32], labels: NDArray[np.uint8]) -> None:
        """Queue one finalised chunk (blocks while the queue is full)."""
        if self.error is not None:
            raise self.error
        self.queue.put((box, probs, labels))

    def _stop(self) -> None:
        """Let queued writes finish and end the thread (safe to call twice)."""
        if self.thread.is_alive():
            self.queue.put(None)
            self.thread.join()

    def finish(self, record: dict[str, Any]) -> None:
        """Wait for every queued write, raise the first write error, then finish the sink."""
        self._stop()
        if self.error is not None:
            raise self.error
        self.sink.finish(record)

    def abort(self) -> None:
        """Let queued (final) chunks reach the disk, then abort the sink."""
        self._stop()
        self.sink.abort()


WRITER_ENV = "WSI_HARNESS_WRITER"
"""``thread`` (the default) or ``inline``: where a run's chunk writes happen."""


def writer_sink(sink: OutputSink) -> OutputSink:
    """``sink`` behind a writer thread, or ``sink`` itself with ``$WSI_HARNESS_WRITER=inline``.

    The thread overlaps encoding and I/O with the loop, which pays where a core
    would otherwise be idle (a cheap or GPU model). A CPU model whose threads
    take every core is stalled by writes landing in its forward; writing inline,
    after each merge, then costs less CPU at about the same wall (docs/loader.md:
    tiny-cnn at 8192² on 2 cores, ~1.2 s less CPU of 20; passthrough 15-20 % more
    wall). The output is the same either way.
    """
    return ThreadedSink(sink) if writer_mode() == "thread" else sink


def writer_mode() -> str:
    """``$WSI_HARNESS_WRITER`` (``thread`` when unset); a :class:`ConfigError` for other values."""
    mode = os.environ.get(WRITER_ENV, "").strip().lower() or "thread"
    if mode not in ("thread", "inline"):
        raise ConfigError(f"{WRITER_ENV} must be thread or inline, got {mode!r}")
    return mode
