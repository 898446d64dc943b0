"""OME-Zarr (NGFF) export: a multiscale image with the label map as its label image.

Layout of ``A.ome.zarr`` (NGFF 0.5 on zarr v3 by default; 0.4 on zarr v2 for
viewers that read only 0.4, such as QuPath)::

    /                    multiscale image (c, y, x), levels 0/ 1/ 2/ ...
                         probabilities (the source dtype, NaN where uncovered), or,
                         for a labels-only output, the slide's RGB (uint8) re-read
                         from the recorded slide source, or a blank placeholder
    labels/classes/      multiscale label image (y, x) uint8, levels 0/ 1/ 2/ ...
                         values as in the source: class index, 255 = uncovered
    attrs["wsi_harness"] provenance: the run's record (slide, model, plan, version)

Why the parent image: NGFF keeps label images under an image's ``labels/``
group, so a labels-only output still needs one. The slide itself at the
processing resolution is what a viewer wants under the labels; when the
output does not record its source (or it no longer opens) a placeholder of
the same shape is written instead, all fill, so it costs no chunk files.

Level 0 of both is the source output, value for value (probabilities
transposed from ``(y, x, c)`` to ``(c, y, x)``). Each level halves the last
level (labels by mode or nearest, probabilities by the mean of non-NaN
values, RGB by the mean), down to one chunk. Coordinates: the scale of level
``k`` is ``mpp 2^k`` micrometres on y and x; NGFF puts array index ``i`` at
``i * scale + translation``, the *centre* of the pixel, so level 0 has
translation 0 (the centre of output pixel 0 is the origin, the slide's
level-0 grid at the same convention), and the mode / mean levels are moved
by ``(2^k - 1) / 2`` level-0 pixels to the centre of the block they
summarise (nearest levels keep translation 0).

Writes: arrays are sharded (zarr v3; one shard file per ``shard``-sized block,
so a 64k x 64k output has 4,096 files per level-0 array rather than 65,536
chunk files) and every shard (v2: chunk) of every level is written exactly
once (:mod:`harness.output._pyramid`). Everything goes to ``A.ome.zarr.partial``
and is renamed to ``A.ome.zarr`` only when complete; :meth:`abort` removes it.
The NGFF metadata is written by ome-zarr-py (``ome_zarr.writer``).
"""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from harness import __version__
from harness.errors import ConfigError
from harness.output._pyramid import (
    REDUCE,
    BlockAssembler,
    LevelWriter,
    build_level,
    centre_offset,
    level_shapes,
)
from harness.output.base import OutputError
from harness.output.zarr_store import NO_LABEL

if TYPE_CHECKING:
    import zarr
    from numpy.typing import NDArray

    from harness.output.base import Box
    from harness.output.export import SourceInfo
    from harness.slides.base import Slide

VERSIONS = ("0.5", "0.4")
LABEL_DOWNSAMPLE = ("mode", "nearest")
PARENTS = ("auto", "slide", "blank")
LABEL_NAME = "classes"
"""Name of the label image under ``labels/``."""
UNCOVERED_RGBA = (0, 0, 0, 0)
"""Colour of label 255 (no patch covered the pixel): transparent."""

Kind = Literal["probabilities", "slide", "blank"]


def _validate(version: str, chunk: int, shard: int, label_downsample: str, parent: str) -> None:
    if version not in VERSIONS:
        raise ConfigError(f"OME-Zarr version must be one of {VERSIONS}, got {version!r}")
    if chunk < 16 or chunk % 2:
        raise ConfigError(f"OME-Zarr chunk must be an even number >= 16, got {chunk}")
    if shard < chunk or shard % chunk:
        raise ConfigError(f"OME-Zarr shard must be a multiple of the chunk {chunk}, got {shard}")
    if label_downsample not in LABEL_DOWNSAMPLE:
        raise ConfigError(
            f"label downsample must be one of {LABEL_DOWNSAMPLE}, got {label_downsample!r}"
        )
    if parent not in PARENTS:
        raise ConfigError(f"parent image must be one of {PARENTS}, got {parent!r}")


def _is_store(path: Path) -> bool:
    if not path.is_dir():
        return False
    return any((path / n).exists() for n in ("zarr.json", ".zgroup")) or not any(path.iterdir())


def check_dest(dest: Path, overwrite: bool) -> None:
    """Refuse an existing ``dest`` unless ``overwrite``, and never replace a non-store."""
    if dest.exists():
        if not overwrite:
            raise OutputError(f"{dest} already exists; pass --overwrite to replace it")
        if not _is_store(dest):
            raise OutputError(f"{dest} exists and is not a zarr store; refusing to replace it")
    if not dest.parent.is_dir():
        raise OutputError(f"folder {dest.parent} does not exist")


class OmeZarrExporter:
    """Writes a complete output as OME-Zarr: a :class:`~harness.output.export.TileConsumer`.

    Parameters
    ----------
    info
        The source output (from :func:`harness.output.export.source_info`).
    dest
        ``A.ome.zarr`` to create (written as ``A.ome.zarr.partial`` until complete).
    version
        ``"0.5"`` (zarr v3, sharded) or ``"0.4"`` (zarr v2, one file per chunk).
    chunk
        Chunk side of every level (what a viewer reads at once).
    shard
        Shard side (zarr v3): the unit written once. Ignored by 0.4, whose unit
        is the chunk. Export tiles should be multiples of :attr:`block`.
    label_downsample
        ``"mode"`` (majority of each 2 x 2 block) or ``"nearest"`` (its top-left pixel).
    parent
        Parent image of a labels-only output: ``"slide"`` (required),
        ``"blank"``, or ``"auto"`` (the slide when its source is recorded and opens).
    overwrite
        Replace an existing ``dest`` (only a zarr store) once the new one is complete.
    """

    def __init__(
        self,
        info: SourceInfo,
        dest: str | Path,
        *,
        version: str = "0.5",
        chunk: int = 256,
        shard: int = 1024,
        label_downsample: str = "mode",
        parent: str = "auto",
        overwrite: bool = False,
    ) -> None:
        _validate(version, chunk, shard, label_downsample, parent)
        self.info, self.version, self.chunk = info, version, chunk
        self.block = shard if version == "0.5" else chunk
        self.label_downsample = label_downsample
        self.dest = Path(dest)
        check_dest(self.dest, overwrite)
        self.partial = self.dest.with_name(self.dest.name + ".partial")
        self.slide, self.kind = self._parent(parent)
        self.shapes = level_shapes(info.shape, chunk)
        try:
            self._create()
        except OSError as exc:
            self.abort()
            raise OutputError(f"cannot create {self.partial}: {exc.strerror or exc}") from exc

    @property
    def wants_probabilities(self) -> bool:
        """The probabilities are the parent image whenever the output has them."""
        return self.info.has_probabilities

    def _parent(self, parent: str) -> tuple[Slide | None, Kind]:
        if self.info.has_probabilities:
            return None, "probabilities"
        if parent == "blank":
            return None, "blank"
        from harness.output.slide_source import recorded_slide

        try:
            return recorded_slide(self.info.attrs), "slide"
        except OutputError:
            if parent == "slide":
                raise
            return None, "blank"

    def _create(self) -> None:
        import zarr

        if self.partial.exists():
            if not _is_store(self.partial):
                raise OutputError(f"{self.partial} exists and is not a zarr store; remove it")
            shutil.rmtree(self.partial)
        fmt: Literal[2, 3] = 3 if self.version == "0.5" else 2
        self.root = zarr.open_group(self.partial, mode="w-", zarr_format=fmt)
        classes = self.root.create_group("labels").create_group(LABEL_NAME)
        self.label_levels = self._arrays(classes, (), "uint8", NO_LABEL)
        lead, dtype, fill = self._image_spec()
        self.image_levels = self._arrays(self.root, lead, dtype, fill)
        self.label_tiles = BlockAssembler(self.label_levels[0], self.info.shape, ())
        self.image_tiles = BlockAssembler(self.image_levels[0], self.info.shape, lead)

    def _image_spec(self) -> tuple[tuple[int, ...], str, float | None]:
        if self.kind == "probabilities":
            return (self.info.channels,), str(self.info.probability_dtype), float("nan")
        if self.kind == "slide":
            return (3,), "uint8", None
        return (1,), "uint8", 0.0

    def _arrays(
        self, group: zarr.Group, lead: tuple[int, ...], dtype: str, fill: float | None
    ) -> list[LevelWriter]:
        out = []
        for level, (h, w) in enumerate(self.shapes):
            arr = group.create_array(
                str(level), shape=(*lead, h, w), fill_value=0 if fill is None else fill,
                dtype=dtype, **self._storage(lead),
            )  # fmt: skip
            out.append(LevelWriter(arr, self.block, fill))
        return out

    def _storage(self, lead: tuple[int, ...]) -> dict[str, Any]:
        names = ("c", "y", "x")[-(len(lead) + 2) :]
        if self.version == "0.5":
            from zarr.codecs import BloscCodec

            return {
                "chunks": (*lead, self.chunk, self.chunk),
                "shards": (*lead, self.block, self.block),
                "compressors": BloscCodec(cname="zstd", clevel=3, shuffle="shuffle"),
                "dimension_names": names,
            }
        from numcodecs import Blosc

        return {
            "chunks": (*lead, self.chunk, self.chunk),
            "compressors": Blosc(cname="zstd", clevel=3, shuffle=Blosc.SHUFFLE),
            "chunk_key_encoding": {"name": "v2", "separator": "/"},
        }

    def tile(self, box: Box, labels: NDArray[np.uint8], probs: NDArray[Any] | None) -> None:
        """Take one tile of the source; write every level-0 block it completes."""
        try:
            self.label_tiles.add(box, labels)
            if self.kind == "probabilities":
                assert probs is not None
                self.image_tiles.add(box, np.moveaxis(probs, -1, 0))
            elif self.kind == "slide":
                self.image_tiles.add(box, np.moveaxis(self._slide_rgb(box), -1, 0))
        except OSError as exc:
            raise OutputError(f"cannot write {self.partial}: {exc.strerror or exc}") from exc

    def _slide_rgb(self, box: Box) -> NDArray[np.uint8]:
        from harness.output.slide_source import read_output_grid

        assert self.slide is not None
        return read_output_grid(self.slide, box, self.info.mpp)

    def close(self) -> None:
        """Build the pyramids, write the NGFF metadata, rename into place."""
        try:
            self.label_tiles.flush()
            self.image_tiles.flush()
            self._pyramid(self.label_levels, self.label_downsample)
            if self.kind != "blank":
                self._pyramid(self.image_levels, self._image_reducer())
            self._metadata()
        except OSError as exc:
            raise OutputError(f"cannot write {self.partial}: {exc.strerror or exc}") from exc
        self._commit()

    def _image_reducer(self) -> str:
        return "nanmean" if self.kind == "probabilities" else "mean"

    def _pyramid(self, levels: list[LevelWriter], reducer: str) -> None:
        for src, dst in itertools.pairwise(levels):
            build_level(src, dst, REDUCE[reducer])

    def _metadata(self) -> None:
        from harness.output._ngff import write_image_metadata, write_labels_metadata

        image_reducer = "mean" if self.kind == "blank" else self._image_reducer()
        write_image_metadata(self, image_reducer)
        write_labels_metadata(self, self.label_downsample)
        self.root.attrs["wsi_harness"] = self.provenance()

    def provenance(self) -> dict[str, Any]:
        """What this export was made from and how (the root's ``wsi_harness`` attribute)."""
        run = {k: v for k, v in self.info.attrs.items() if k != "complete"}
        return {
            "exporter": f"wsi-harness {__version__}",
            "source_output": str(Path(self.info.path).resolve()),
            "run": run,
            "image": self.kind,
            "labels": f"labels/{LABEL_NAME}",
            "no_label": NO_LABEL,
            "label_downsample": self.label_downsample,
            "pixel_convention": "array index i sits at i * scale + translation (pixel centre); "
            "level 0 translation 0",
        }

    def transforms(self, level: int, reducer: str, ndim: int) -> list[dict[str, Any]]:
        """NGFF coordinate transformations of one level (micrometres on y and x)."""
        mpp = self.info.mpp
        s = mpp * 2**level
        t = centre_offset(reducer, level) * mpp
        lead = [1.0] * (ndim - 2)
        return [
            {"type": "scale", "scale": [*lead, s, s]},
            {"type": "translation", "translation": [0.0] * (ndim - 2) + [t, t]},
        ]

    def _commit(self) -> None:
        old = self.dest.with_name(self.dest.name + ".replaced")
        if self.dest.exists():
            if old.exists():
                shutil.rmtree(old)
            self.dest.rename(old)
        self.partial.rename(self.dest)
        if old.exists():
            shutil.rmtree(old)

    def abort(self) -> None:
        """Remove the partial output: nothing that looks complete is left."""
        if self.partial.exists():
            shutil.rmtree(self.partial, ignore_errors=True)
