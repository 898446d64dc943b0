"""Direct chunk-file writes produce exactly the store zarr itself writes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numcodecs
import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec

from harness.output._chunkfiles import ChunkFiles

if TYPE_CHECKING:
    from pathlib import Path

SHAPE, CHUNK = (600, 520), (256, 256)  # edge chunks on both axes
BLOSC = BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")


def _array(root: Path, name: str, dtype: str, fill: Any, channels: int) -> zarr.Array[Any]:
    group = zarr.open_group(root / name, mode="a", zarr_format=3)
    shape, chunks = (SHAPE, CHUNK) if not channels else ((*SHAPE, channels), (*CHUNK, channels))
    return group.create_array(
        "a", shape=shape, chunks=chunks, dtype=dtype, fill_value=fill, compressors=BLOSC
    )


def _boxes() -> list[tuple[int, int, int, int]]:
    (h, w), (ch, cw) = SHAPE, CHUNK
    rows = [(y, min(y + ch, h)) for y in range(0, h, ch)]
    return [(y0, y1, x, min(x + cw, w)) for y0, y1 in rows for x in range(0, w, cw)]


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("c/**/*") if p.is_file()}


@pytest.mark.parametrize(
    ("dtype", "fill", "channels"),
    [pytest.param("uint8", 255, 0, id="labels"), pytest.param("float32", np.nan, 3, id="probs")],
)
def test_store_is_byte_for_byte_what_zarr_writes(
    tmp_path: Path, dtype: str, fill: Any, channels: int
) -> None:
    # GIVEN the same chunks (whole, edge, and one all-fill) for zarr and for ChunkFiles
    rng = np.random.default_rng(0)
    ours, theirs = (_array(tmp_path, n, dtype, fill, channels) for n in ("ours", "zarr"))
    files = ChunkFiles(ours)
    for k, (y0, y1, x0, x1) in enumerate(_boxes()):
        shape = (y1 - y0, x1 - x0) + ((channels,) if channels else ())
        data = (rng.random(shape) * 3).astype(dtype)
        empty = k == 1
        if empty:
            data[...] = fill
        # WHEN one is written through zarr and the other through ChunkFiles
        theirs[y0:y1, x0:x1] = data
        files.write((y0, y1, x0, x1), data, empty)
    # THEN the fast path really ran, and every chunk file is identical (the empty one absent)
    assert files.verified is True and files.direct_writes >= 1
    assert _files(tmp_path / "ours") == _files(tmp_path / "zarr")
    np.testing.assert_array_equal(ours[:], theirs[:])


def test_falls_back_to_zarr_when_its_bytes_differ(tmp_path: Path) -> None:
    # GIVEN a ChunkFiles whose encoder does not match the array's codec
    arr = _array(tmp_path, "x", "uint8", 255, 0)
    files = ChunkFiles(arr)
    files.codec = numcodecs.Blosc(cname="zstd", clevel=1)
    data = np.arange(256 * 256, dtype=np.uint8).reshape(CHUNK)
    # WHEN whole chunks are written
    files.write((0, 256, 0, 256), data, False)
    files.write((256, 512, 0, 256), data, False)
    # THEN verification fails, everything goes through zarr, and the data reads back
    assert files.verified is False and files.direct_writes == 0
    np.testing.assert_array_equal(arr[:512, :256], np.vstack([data, data]))


def test_a_chunk_zarr_skips_leaves_verification_for_the_next(tmp_path: Path) -> None:
    # GIVEN a first whole chunk that is all fill value, though the caller did not say so
    arr = _array(tmp_path, "x", "uint8", 255, 0)
    files = ChunkFiles(arr)
    files.write((0, 256, 0, 256), np.full(CHUNK, 255, np.uint8), False)
    # THEN zarr wrote no file, nothing was decided, and the next whole chunk verifies
    assert files.verified is None
    files.write((256, 512, 0, 256), np.zeros(CHUNK, np.uint8), False)
    assert files.verified is True and arr[300, 10] == 0


def test_other_codecs_never_take_the_fast_path(tmp_path: Path) -> None:
    group = zarr.open_group(tmp_path / "z", mode="w", zarr_format=3)
    arr = group.create_array("a", shape=SHAPE, chunks=CHUNK, dtype="uint8", fill_value=0)
    files = ChunkFiles(arr)  # zarr's default compressor is zstd
    assert files.verified is False
    files.write((0, 256, 0, 256), np.ones(CHUNK, np.uint8), False)
    assert arr[0, 0] == 1 and files.direct_writes == 0
