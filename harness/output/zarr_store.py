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

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec
from zarr.storage import LocalStore

from harness import __version__
from harness.output._chunkfiles import ChunkFiles
from harness.output.base import OutputError, os_error

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from harness.output.base import Box
    from harness.output.state import ProgressRecord

ATTR = "wsi_harness"
"""Group attribute holding this format's record (version, complete, mpp, classes, ...)."""
NO_LABEL = 255
"""Label where no patch output covers a pixel (probabilities are NaN there)."""
PROBABILITY_FILL = float("nan")
"""Fill value of ``probabilities``: what uncovered pixels read as."""
OUTPUT_DTYPES = ("float32", "float16")
PROBABILITIES, LABELS = "probabilities", "labels"


class ZarrStore:
    """One output group on local disk: create or open it, name its chunks, mark it complete.

    Writing goes through :class:`ChunkWriter`; the run that owns the output
    (:mod:`harness.output.session`) decides whether to create, resume or refuse.
    """

    def __init__(self, path: Path, group: zarr.Group) -> None:
        self.path, self.group = path, group
        self.labels = output_array(group, LABELS)
        self.probs = output_array(group, PROBABILITIES) if PROBABILITIES in group else None
        h, w = self.labels.shape
        ch, cw = self.labels.chunks
        self.shape, self.chunk = (int(h), int(w)), (int(ch), int(cw))
        self.grid = (-(-self.shape[0] // ch), -(-self.shape[1] // cw))

    @classmethod
    def create(
        cls, path: Path, shape: tuple[int, int], chunk: tuple[int, int], channels: int,
        meta: dict[str, Any], dtype: str = "float32", probabilities: bool = True,
    ) -> ZarrStore:  # fmt: skip
        """Create the group at ``path`` (which must not exist) with ``complete`` false."""
        if dtype not in OUTPUT_DTYPES:
            raise OutputError(f"output dtype must be one of {OUTPUT_DTYPES}, got {dtype!r}")
        (h, w), (ch, cw), c = shape, chunk, channels
        compress = BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")
        try:
            # Mode "a": the caller holds the output's lock and checked that no store is
            # there; "w-" would refuse the folder because of the lock's own state folder.
            group = zarr.open_group(path, mode="a", zarr_format=3)
            if probabilities:
                group.create_array(
                    PROBABILITIES, shape=(h, w, c), chunks=(ch, cw, c), dtype=dtype,
                    fill_value=PROBABILITY_FILL, compressors=compress,
                    dimension_names=("y", "x", "class"),
                )  # fmt: skip
            group.create_array(
                LABELS, shape=(h, w), chunks=(ch, cw), dtype="uint8",
                fill_value=NO_LABEL, compressors=compress, dimension_names=("y", "x"),
            )  # fmt: skip
            group.attrs[ATTR] = {**meta, "version": __version__, "complete": False}
        except OSError as exc:
            raise os_error(path, exc, "create") from exc
        return cls(path, group)

    @classmethod
    def open(cls, path: Path, writable: bool = True) -> ZarrStore:
        """Open an existing output (complete or not)."""
        open_output(path, require_complete=False)
        return cls(path, zarr.open_group(path, mode="r+" if writable else "r"))

    @property
    def meta(self) -> dict[str, Any]:
        """The format's record (``attrs[ATTR]``)."""
        return output_meta(self.group)

    def update_meta(self, **changes: Any) -> None:
        """Replace fields of the record (zarr writes ``zarr.json`` atomically)."""
        try:
            self.group.attrs[ATTR] = {**self.meta, **changes}
        except OSError as exc:
            raise os_error(self.path, exc, "update") from exc

    def mark_complete(self, record: dict[str, Any]) -> None:
        """Add ``record`` and set the completion marker: the last write of a run."""
        self.update_meta(**record, complete=True)

    def chunk_id(self, box: Box) -> int:
        """Row-major id of the chunk whose box starts at ``box[0], box[2]``."""
        return (box[0] // self.chunk[0]) * self.grid[1] + box[2] // self.chunk[1]

    def arrays(self) -> list[zarr.Array[Any]]:
        """The stored arrays (probabilities first, when present)."""
        return [a for a in (self.probs, self.labels) if a is not None]

    def final_chunks(self, candidates: NDArray[np.bool_]) -> NDArray[np.bool_]:
        """Which ``candidates`` chunks are final: in a progress record, or whole on disk.

        A chunk absent from every record but whose files exist for every array
        and decode to a whole chunk was committed after the last record (see
        :mod:`harness.output.state`); anything else is not final.
        """
        from harness.output.state import read_records

        final = read_records(self.path, candidates.size) & candidates
        for c in np.flatnonzero(candidates & ~final):
            final[c] = all(_chunk_whole(a, divmod(int(c), self.grid[1])) for a in self.arrays())
        return final


def _chunk_whole(array: zarr.Array[Any], rc: tuple[int, int]) -> bool:
    """Whether chunk ``rc`` of ``array`` is on disk and decodes to a whole chunk."""
    index = rc + (0,) * (array.ndim - 2)
    store = array.store
    assert isinstance(store, LocalStore), "outputs are local folders"
    path = Path(store.root) / array.path / array.metadata.encode_chunk_key(index)
    return path.is_file() and _decodes(array, index)


def _decodes(array: zarr.Array[Any], index: tuple[int, ...]) -> bool:
    try:
        block = np.asarray(array.get_block_selection(index))
    except Exception:  # a file torn by a power cut decodes to an error, never to data
        return False
    return block.size > 0


class ChunkWriter:
    """The :class:`~harness.output.base.OutputSink` of one block: writes its final chunks.

    Each chunk's arrays are committed whole (:mod:`harness.output._chunkfiles`),
    then the chunk is marked in the block's :class:`~harness.output.state.ProgressRecord`.
    ``finish`` and ``abort`` persist the record; marking the whole output
    complete is the owning run's last step (:meth:`ZarrStore.mark_complete`).
    """

    def __init__(self, store: ZarrStore, progress: ProgressRecord | None = None) -> None:
        self.store, self.progress = store, progress
        probs = store.probs
        self.dtype = None if probs is None else np.dtype(probs.dtype)
        # Whole-chunk writers (see harness.output._chunkfiles), one per array.
        self.probs = None if probs is None else ChunkFiles(probs)
        self.labels = ChunkFiles(store.labels)
        self.chunks_written = 0

    def write_chunk(self, box: Box, probs: NDArray[np.float32], labels: NDArray[np.uint8]) -> None:
        """Write one finalised chunk (``box = (y0, y1, x0, x1)``) and record it final."""
        # All fill value (NaN, label 255) exactly where no patch covered any pixel.
        empty = labels[0, 0] == NO_LABEL and bool((labels == NO_LABEL).all())
        try:
            if self.probs is not None:
                self.probs.write(box, probs.astype(self.dtype, copy=False), empty)
            self.labels.write(box, labels, empty)
            if self.progress is not None:
                self.progress.mark(self.store.chunk_id(box))
        except OSError as exc:
            raise os_error(self.store.path, exc, "write") from exc
        self.chunks_written += 1

    def finish(self, record: dict[str, Any]) -> None:
        """Every chunk of the block is written: persist its progress record."""
        self.abort()

    def abort(self) -> None:
        """Persist what is committed; the output stays incomplete."""
        if self.progress is not None:
            try:
                self.progress.persist()
            except OSError as exc:
                raise os_error(self.store.path, exc, "write progress of") from exc


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
