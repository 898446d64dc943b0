"""The zarr v3 output: one group per slide, written chunk by whole chunk.

Layout of ``OUT.zarr``::

    probabilities   (H, W, C)  float32 (or float16), fill NaN  (absent with labels only)
    labels          (H, W)     uint8, fill 255
    attrs["wsi_harness"] = {version, complete, mpp, classes, model, plan, slide, ...}

Both arrays are at the processing resolution and chunked like the plan's
output chunks, so every write is one whole chunk and nothing is ever read
back. Pixels no patch covered (masked background, or chunks never touched)
read as NaN probabilities and label 255 (:data:`NO_LABEL`);
untouched chunks are never written, so the store stays sparse.

``complete`` is written ``false`` first and set ``true`` only after the last
chunk is on disk: an interrupted or failed run never looks complete.
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec

from harness import __version__
from harness.output._chunkfiles import ChunkFiles
from harness.output.base import OutputError

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from harness.output.base import Box
    from harness.plan import Plan

ATTR = "wsi_harness"
"""Group attribute holding this format's record (version, complete, mpp, classes, ...)."""
NO_LABEL = 255
"""Label where no patch output covers a pixel (probabilities are NaN there)."""
PROBABILITY_FILL = float("nan")
"""Fill value of ``probabilities``: what uncovered pixels read as."""
OUTPUT_DTYPES = ("float32", "float16")
PROBABILITIES, LABELS = "probabilities", "labels"


def _prepare_path(path: Path, overwrite: bool) -> None:
    if path.exists():
        if not overwrite:
            raise OutputError(f"output {path} already exists; pass --overwrite to replace it")
        if path.is_dir() and ((path / "zarr.json").exists() or not any(path.iterdir())):
            shutil.rmtree(path)
        else:
            raise OutputError(
                f"output {path} exists and is not a zarr store; refusing to delete it"
            )
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create output directory {parent}: {exc.strerror}") from exc


class ZarrOutput:
    """The zarr v3 output as an :class:`~harness.output.base.OutputSink`: creates the group,
    writes finalised chunks, marks it complete."""

    def __init__(
        self,
        path: str | Path,
        plan: Plan,
        meta: dict[str, Any],
        dtype: str = "float32",
        overwrite: bool = False,
        probabilities: bool = True,
    ) -> None:
        if dtype not in OUTPUT_DTYPES:
            raise OutputError(f"output dtype must be one of {OUTPUT_DTYPES}, got {dtype!r}")
        self.path = Path(path)
        _prepare_path(self.path, overwrite)
        (h, w), (ch, cw), c = plan.out_shape, plan.config.chunk_hw, plan.channels
        compress = BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")
        try:
            self.group = zarr.open_group(self.path, mode="w-", zarr_format=3)
            probs = None if not probabilities else self.group.create_array(
                PROBABILITIES, shape=(h, w, c), chunks=(ch, cw, c), dtype=dtype,
                fill_value=PROBABILITY_FILL, compressors=compress,
                dimension_names=("y", "x", "class"),
            )  # fmt: skip
            labels = self.group.create_array(
                LABELS, shape=(h, w), chunks=(ch, cw), dtype="uint8",
                fill_value=NO_LABEL, compressors=compress, dimension_names=("y", "x"),
            )  # fmt: skip
            self.group.attrs[ATTR] = {**meta, "version": __version__, "complete": False}
        except OSError as exc:
            raise self._os_error(exc, "create") from exc
        self.dtype = np.dtype(dtype)
        # Whole-chunk writers (see harness._chunkfiles), one per array.
        self.probs = None if probs is None else ChunkFiles(probs)
        self.labels = ChunkFiles(labels)

    def _os_error(self, exc: OSError, what: str) -> OutputError:
        if exc.errno == errno.ENOSPC:
            return OutputError(f"disk full while writing {self.path}; output left incomplete")
        return OutputError(f"cannot {what} output {self.path}: {exc.strerror or exc}")

    def write_chunk(self, box: Box, probs: NDArray[np.float32], labels: NDArray[np.uint8]) -> None:
        """Write one finalised chunk (``box = (y0, y1, x0, x1)``)."""
        # All fill value (NaN, label 255) exactly where no patch covered any pixel.
        empty = labels[0, 0] == NO_LABEL and bool((labels == NO_LABEL).all())
        try:
            if self.probs is not None:
                self.probs.write(box, probs.astype(self.dtype, copy=False), empty)
            self.labels.write(box, labels, empty)
        except OSError as exc:
            raise self._os_error(exc, "write") from exc

    def finish(self, record: dict[str, Any]) -> None:
        """Add ``record`` to the attributes and set the completion marker, last of all writes."""
        try:
            attrs = dict(self.group.attrs[ATTR])  # type: ignore[arg-type]
            self.group.attrs[ATTR] = {**attrs, **record, "complete": True}
        except OSError as exc:
            raise self._os_error(exc, "finish") from exc

    def abort(self) -> None:
        """Nothing to undo: every committed chunk stays, ``complete`` stays false."""


def open_output(path: str | Path, require_complete: bool = True) -> zarr.Group:
    """Open a segmentation output, refusing incomplete ones unless asked."""
    p = Path(path)
    if not (p / "zarr.json").exists():
        raise OutputError(f"{p} is not a wsi-harness output (no zarr.json)")
    group = zarr.open_group(p, mode="r")
    meta = group.attrs.get(ATTR)
    if not isinstance(meta, dict):
        raise OutputError(f"{p} is a zarr group but not a wsi-harness output")
    if require_complete and not meta.get("complete"):
        raise OutputError(f"{p} is incomplete (the run that wrote it did not finish)")
    return group


def output_meta(group: zarr.Group) -> dict[str, Any]:
    """The format's record (``attrs[ATTR]``) of an output group, as a plain dict."""
    meta = group.attrs.get(ATTR)
    if not isinstance(meta, dict):
        raise OutputError(f"{group.store} is a zarr group but not a wsi-harness output")
    return dict(meta)


def output_array(group: zarr.Group, name: str) -> zarr.Array[Any]:
    """The array ``name`` of an output group, or a clear error when it is missing."""
    arr = group.get(name)
    if not isinstance(arr, zarr.Array):
        raise OutputError(f"{group.store} has no {name!r} array")
    return arr
