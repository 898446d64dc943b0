"""An in-memory :class:`~harness.merge.ChunkSink` that also checks the write contract."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from harness.output import NO_LABEL

if TYPE_CHECKING:
    from numpy.typing import NDArray


class CanvasSink:
    """Collects written chunks into full arrays; refuses a second write of any chunk."""

    def __init__(self, shape: tuple[int, int], channels: int) -> None:
        self.probs = np.full((*shape, channels), np.nan, dtype=np.float32)
        self.labels = np.full(shape, NO_LABEL, dtype=np.uint8)
        self.boxes: set[tuple[int, int, int, int]] = set()

    def write_chunk(
        self, box: tuple[int, int, int, int], probs: NDArray[np.float32], labels: NDArray[np.uint8]
    ) -> None:
        """Store one chunk; a repeated box is a merger bug (read-modify-write)."""
        if box in self.boxes:
            raise AssertionError(f"chunk {box} written twice")
        self.boxes.add(box)
        y0, y1, x0, x1 = box
        self.probs[y0:y1, x0:x1] = probs
        self.labels[y0:y1, x0:x1] = labels
