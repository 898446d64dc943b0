"""Outputs: the sink protocol, the zarr v3 store format, and exports for viewers.

* :mod:`harness.output.base` -- :class:`ChunkSink` / :class:`OutputSink`, the seam
  between mergers and formats, and :class:`OutputError`.
* :mod:`harness.output.zarr_store` -- the run's own output (zarr v3 group), its
  constants (:data:`NO_LABEL`, :data:`ATTR`) and readers (:func:`open_output`).
* :mod:`harness.output.threaded` -- :class:`ThreadedSink`, writes on a background thread.
"""

from __future__ import annotations

from harness.output.base import Box, ChunkSink, OutputError, OutputSink
from harness.output.threaded import ThreadedSink
from harness.output.zarr_store import (
    ATTR,
    LABELS,
    NO_LABEL,
    OUTPUT_DTYPES,
    PROBABILITIES,
    PROBABILITY_FILL,
    ChunkWriter,
    ZarrStore,
    open_output,
    output_array,
    output_meta,
)

__all__ = [
    "ATTR",
    "LABELS",
    "NO_LABEL",
    "OUTPUT_DTYPES",
    "PROBABILITIES",
    "PROBABILITY_FILL",
    "Box",
    "ChunkSink",
    "ChunkWriter",
    "OutputError",
    "OutputSink",
    "ThreadedSink",
    "ZarrStore",
    "open_output",
    "output_array",
    "output_meta",
]
