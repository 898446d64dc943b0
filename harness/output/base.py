"""The output seam: what a merger hands finished chunks to, and how a run ends.

A merger only ever calls :meth:`ChunkSink.write_chunk`, once per output chunk,
with the chunk's final probabilities and labels. The run that owns the output
then calls :meth:`OutputSink.finish` (every chunk is on disk: mark the output
complete, last of all writes) or :meth:`OutputSink.abort` (the run stopped:
keep what is committed, never look complete). A format is one module that
implements :class:`OutputSink` (today :mod:`harness.output.zarr_store`);
exports that read a finished output live beside it (:mod:`harness.output.export`).
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING, Any, Protocol

from harness.errors import HarnessError

if TYPE_CHECKING:
    from pathlib import Path

    import numpy as np
    from numpy.typing import NDArray

Box = tuple[int, int, int, int]
"""``(y0, y1, x0, x1)`` of an output chunk, in output pixels."""


class OutputError(HarnessError):
    """The output store cannot be created, written or read."""


def os_error(path: Path, exc: OSError, what: str) -> OutputError:
    """One line for a failed filesystem operation on output ``path``."""
    if exc.errno == errno.ENOSPC:
        return OutputError(f"disk full while writing {path}; output left incomplete")
    return OutputError(f"cannot {what} output {path}: {exc.strerror or exc}")


class ChunkSink(Protocol):
    """Where finalised chunks go."""

    def write_chunk(self, box: Box, probs: NDArray[np.float32], labels: NDArray[np.uint8]) -> None:
        """Write one whole chunk: ``box = (y0, y1, x0, x1)``, probs ``(h, w, C)``."""
        ...


class OutputSink(ChunkSink, Protocol):
    """A chunk sink that owns an output: it is finished or aborted, exactly once."""

    def finish(self, record: dict[str, Any]) -> None:
        """Every chunk is written: flush, record ``record``, mark the output complete."""
        ...

    def abort(self) -> None:
        """The run stopped early: keep what is committed, leave the output incomplete."""
        ...
