"""Whole-chunk writes to a local zarr v3 array without zarr's per-call machinery.

zarr-python 3 routes every ``array[box] = data`` through its asyncio event
loop, selection indexing and codec pipeline: about 2.1 ms of CPU per 256 x 256
uint8 chunk here, against 0.55 ms to blosc-encode the same chunk and write its
file. A 16k slide has 4096 label chunks, and the writer thread holds the GIL
for most of that time, so it competes with the model for the 2 cores.

:class:`ChunkFiles` writes the encoded bytes of a *whole, non-empty* chunk
straight to the file zarr would write (``<array>/c/<i>/<j>...``). It trusts
nothing it cannot check: the first such chunk goes through zarr, and the fast
path turns on only if zarr's file is byte-for-byte this class's encoding of the
same data. Edge chunks (zarr pads them with the fill value), chunks equal to
the fill value (zarr skips them), other codecs and non-local stores all go
through zarr itself, so the store is always exactly what zarr would have written.

Both paths commit atomically: zarr 3's ``LocalStore`` writes every key to a
``*.partial`` temporary and renames it, and :func:`commit_bytes` does the same,
so a ``kill -9`` at any instant leaves whole files or none.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numcodecs
import numpy as np
from zarr.codecs import BloscCodec, BytesCodec
from zarr.storage import LocalStore

if TYPE_CHECKING:
    import zarr
    from numpy.typing import NDArray

_SHUFFLE = {"noshuffle": 0, "shuffle": 1, "bitshuffle": 2}
PARTIAL = ".partial"
"""Suffix of a file still being written (zarr's LocalStore uses the same one)."""


COMMIT_ENV = "WSI_HARNESS_COMMIT"
"""``plain`` turns off the temporary-and-rename commit and the progress records: only for
measuring what they cost (``docs/resume.md``); a killed plain run may leave torn chunks."""


def plain_commits() -> bool:
    """Whether ``$WSI_HARNESS_COMMIT`` asks for plain (non-atomic) writes."""
    return os.environ.get(COMMIT_ENV, "").lower() == "plain"


def commit_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` whole or not at all: a temporary file, then a rename.

    The temporary name sits in the same folder (rename is atomic only within a
    filesystem) and ends in :data:`PARTIAL`, as zarr's own ``LocalStore`` names
    its temporaries, so one sweep (:func:`remove_partials`) cleans both after a
    kill. A reader sees the old file, or the new one, never a torn one.
    """
    if plain_commits():
        path.write_bytes(data)
        return
    tmp = path.with_name(f"{path.name}.{os.getpid()}-{threading.get_ident()}{PARTIAL}")
    try:
        with tmp.open("wb") as f:
            f.write(data)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def remove_partials(root: Path) -> int:
    """Delete every ``*.partial`` file under ``root`` (a killed writer's); return how many."""
    removed = 0
    for dirpath, _, names in os.walk(root):
        for name in names:
            if name.endswith(PARTIAL):
                (Path(dirpath) / name).unlink(missing_ok=True)
                removed += 1
    return removed


def _blosc(array: zarr.Array[Any]) -> numcodecs.Blosc | None:
    """numcodecs' Blosc configured like ``array``'s codecs, or None for any other pipeline."""
    codecs = array.metadata.codecs if array.metadata.zarr_format == 3 else ()
    if len(codecs) != 2 or not isinstance(codecs[0], BytesCodec):
        return None
    blosc = codecs[1]
    if not isinstance(blosc, BloscCodec) or blosc.cname is None or blosc.shuffle is None:
        return None
    return numcodecs.Blosc(
        cname=blosc.cname.value, clevel=blosc.clevel,
        shuffle=_SHUFFLE[blosc.shuffle.value], blocksize=blosc.blocksize,
    )  # fmt: skip


class ChunkFiles:
    """Write whole chunks of one local zarr v3 array, encoded here, verified against zarr."""

    def __init__(self, array: zarr.Array[Any]) -> None:
        self.array = array
        self._whole = (tuple(array.chunks), array.dtype)  # shape and dtype of a whole chunk
        store = array.store
        self.root = Path(store.root) / array.path if isinstance(store, LocalStore) else None
        self.codec = _blosc(array) if self.root is not None else None
        self.verified: bool | None = None if self.codec is not None else False
        self.direct_writes = 0
        self._dirs: set[Path] = set()

    def write(self, box: tuple[int, int, int, int], data: NDArray[Any], empty: bool) -> None:
        """Write chunk ``box = (y0, y1, x0, x1)``; ``empty``: it is all fill value."""
        y0, y1, x0, x1 = box
        if (data.shape, data.dtype) != self._whole or empty or self.verified is False:
            self.array[y0:y1, x0:x1] = data
            return
        assert self.codec is not None and self.root is not None
        encoded = self.codec.encode(np.ascontiguousarray(data))
        index = (y0 // data.shape[0], x0 // data.shape[1]) + (0,) * (data.ndim - 2)
        path = self.root / self.array.metadata.encode_chunk_key(index)
        if self.verified is None:
            self.array[y0:y1, x0:x1] = data
            if path.is_file():  # zarr skips a chunk equal to its fill value: check the next
                self.verified = path.read_bytes() == encoded
            return
        if path.parent not in self._dirs:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._dirs.add(path.parent)
        commit_bytes(path, encoded)
        self.direct_writes += 1
