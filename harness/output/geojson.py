"""QuPath GeoJSON from a finished output: one polygon per connected region per class, streamed.

:class:`GeoJsonExporter` is a :class:`~harness.output.export.TileConsumer`:
the export pass (:func:`harness.output.export.export`) feeds it the label map
tile by tile in raster order, :class:`~harness.output._regions.RegionTracer`
traces each tile with ``rasterio.features.shapes`` (exact pixel-edge polygons,
holes as interior rings, 4-connectivity), joins pieces across tile seams, and
hands out each region as soon as no tile still to come can touch it; the
region is written to the file at once and forgotten.

The file is what QuPath's *File > Import objects from file* reads (checked
against ``qupath.lib.io.PathIO.readObjectsFromGeoJSON`` and
``PathObjectTypeAdapters``): a ``FeatureCollection`` whose features carry
``properties.objectType`` (``annotation`` or ``detection``) and
``properties.classification = {"name", "color": [r, g, b]}``, coordinates in
level-0 slide pixels (output pixels times :attr:`SourceInfo.scale`). QuPath
reads only ``features`` from the collection, so the provenance (slide, model,
plan, versions of the source output) rides in a top-level ``wsi_harness``
member it ignores. Label 255 (:data:`~harness.output.NO_LABEL`: no patch
covered the pixel) is never exported.

Memory: what the exporter holds between tiles is the frontier of tiles done
(9 bytes per output column) and the regions still open there -- their outer
rings, and until the next compaction the pieces and holes of the tiles since
-- plus, while a tile is traced, that tile's labels, component ids and
pieces. Holes wait on disk, in unlinked files next to ``DEST``, until their
region closes; closed regions are written at once and forgotten. None of it
grows with the number of rows, and nothing with the number of regions
written: :attr:`GeoJsonStats.peak_open_regions`, ``peak_open_vertices`` and
``peak_tile_vertices`` report the high-water marks, and
:mod:`harness.output._regions` says what bounds them.

The file is written as ``DEST.partial`` and renamed at :meth:`close`;
:meth:`abort` removes it, so a failed export never leaves a file that looks
finished. ``DEST`` ending in ``.gz`` is gzip-compressed, ``.zip`` a zip
archive holding one ``.geojson``: QuPath's ``PathIO.readObjects`` opens
``.geojson``, ``.json`` and ``.zip`` (checked in its 0.4 source), so a
``.zip`` imports as it is and a ``.gz`` needs ``gunzip`` first.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import itertools
import json
import math
import time
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np
import shapely

from harness import __version__
from harness.errors import ConfigError
from harness.output._regions import COMPACT_VERTICES, RegionTracer
from harness.output.base import OutputError, os_error
from harness.output.export import DEFAULT_TILE, SourceInfo, export, source_info
from harness.output.zarr_store import NO_LABEL

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Sequence

    from numpy.typing import NDArray

    from harness.output._regions import ClosedRegion
    from harness.output.base import Box

OBJECT_TYPES = ("annotation", "detection")
"""QuPath object types a feature may be imported as."""
COORDINATE_DECIMALS = 3
"""Decimals of level-0 coordinates when the scale is not a whole number (1/1000 pixel)."""


@dataclass(frozen=True)
class GeoJsonOptions:
    """What to export, validated on construction (``min_area``/``simplify`` in level-0 px)."""

    object_type: str = "annotation"
    min_area: float = 0.0
    simplify: float = 0.0
    classes: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.object_type not in OBJECT_TYPES:
            raise ConfigError(
                f"object type must be one of {', '.join(OBJECT_TYPES)}; got {self.object_type!r}"
            )
        for name in ("min_area", "simplify"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ConfigError(
                    f"{name} must be a finite number >= 0 (level-0 px), got {value!r}"
                )
        if self.classes is not None and not self.classes:
            raise ConfigError("classes must name at least one class (or be None for every class)")

    def wanted(self, info: SourceInfo) -> NDArray[np.bool_]:
        """``(256,)`` bool of the label values to export; refuses class names the output lacks."""
        names = info.classes if self.classes is None else self.classes
        unknown = [n for n in names if n not in info.classes]
        if unknown:
            raise ConfigError(f"unknown class {unknown[0]!r}; {info.path} has classes: "
                              f"{', '.join(info.classes)}")  # fmt: skip
        wanted = np.zeros(256, bool)
        wanted[[info.classes.index(n) for n in names]] = True
        wanted[NO_LABEL] = False
        return wanted


@dataclass(frozen=True)
class GeoJsonStats:
    """What one export wrote and what it held at its frontier (high-water marks).

    Attributes
    ----------
    features, per_class
        Features written, in all and per exported class name.
    peak_open_regions, peak_open_vertices
        Most regions, and most vertices of their rings, held open at the
        frontier between two tiles.
    peak_tile_vertices
        Most vertices one tile's pieces added; the geometry in memory never
        exceeded ``peak_open_vertices + peak_tile_vertices``.
    spilled_holes, peak_spilled_bytes
        Holes that waited on disk for their region, and the most bytes they
        took there at once.
    compactions
        Times the open regions were compacted (see :mod:`harness.output._regions`).
    wall_s
        From the exporter's construction to its close.
    """

    path: str
    features: int
    per_class: dict[str, int]
    peak_open_regions: int
    peak_open_vertices: int
    peak_tile_vertices: int
    spilled_holes: int
    peak_spilled_bytes: int
    compactions: int
    wall_s: float

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready record."""
        return asdict(self)


class GeoJsonExporter:
    """Writes the regions of a label map as a QuPath GeoJSON FeatureCollection.

    Parameters
    ----------
    info
        The output being exported (:func:`harness.output.export.source_info`).
    dest
        ``.geojson`` (or ``.json``) file; ``.gz`` at the end compresses it.
    object_type
        ``"annotation"`` (default) or ``"detection"`` in QuPath.
    min_area
        Regions smaller than this (level-0 pixels², before simplification) are left out.
    simplify
        Topology-preserving simplification tolerance in level-0 pixels (0: exact).
    classes
        Class names to export; ``None`` for all.
    overwrite
        Replace an existing ``dest`` (only when the new file is complete).
    compact_vertices
        Vertices the open regions may hold together before their first
        compaction (holes to disk, see :mod:`harness.output._regions`).

    Notes
    -----
    Spilled holes live in unlinked temporary files in ``dest``'s folder, so
    they take disk there (``GeoJsonStats.peak_spilled_bytes``) but leave no
    file behind, whatever happens.
    """

    def __init__(
        self,
        info: SourceInfo,
        dest: str | Path,
        *,
        object_type: str = "annotation",
        min_area: float = 0.0,
        simplify: float = 0.0,
        classes: Sequence[str] | None = None,
        overwrite: bool = False,
        compact_vertices: int = COMPACT_VERTICES,
    ) -> None:
        names = None if classes is None else tuple(classes)
        self.options = GeoJsonOptions(object_type, min_area, simplify, names)
        self.info = info
        self.dest = _check_dest(Path(dest), overwrite)
        self.block = 0  # traces any tile: regions join across seams wherever they fall
        self._overwrite = overwrite
        tolerance = simplify / info.scale  # in output pixels
        self._tolerance = tolerance
        self._tracer = RegionTracer(
            info.shape, self.options.wanted(info), self.dest.parent, 2 * tolerance, compact_vertices
        )
        self._format = _RingFormat(info.scale)
        self._templates = _feature_templates(info, object_type)
        self._file: _FeatureFile | None = None
        self._counts = dict.fromkeys(info.classes, 0)
        self._t0 = time.perf_counter()
        self._stats: GeoJsonStats | None = None

    @property
    def wants_probabilities(self) -> bool:
        """Polygons come from the labels alone."""
        return False

    @property
    def stats(self) -> GeoJsonStats:
        """The record of a closed export."""
        if self._stats is None:
            raise OutputError(f"GeoJSON export to {self.dest} has not finished")
        return self._stats

    def tile(self, box: Box, labels: NDArray[np.uint8], probs: NDArray[Any] | None) -> None:
        """Trace one tile; write the regions it closed."""
        if self._file is None:
            self._file = self._open()
        bad = labels[(labels >= len(self.info.classes)) & (labels != NO_LABEL)]
        if bad.size:
            raise OutputError(f"{self.info.path}: label {int(bad[0])} in tile {box} has no class "
                              f"(the output has {len(self.info.classes)})")  # fmt: skip
        closed = self._tracer.feed(box, labels)
        if closed:
            self._write(closed)

    def close(self) -> None:
        """Every tile was given: finish the collection and rename it into place."""
        if not self._tracer.done:
            raise OutputError(f"GeoJSON export to {self.dest} ended before the last tile")
        file = self._file if self._file is not None else self._open()
        file.commit(self._overwrite)
        self._file = None
        tracer = self._tracer
        tracer.discard()  # every region is closed: this only closes the spill files
        self._stats = GeoJsonStats(
            path=str(self.dest),
            features=sum(self._counts.values()),
            per_class={k: v for k, v in self._counts.items() if self._wanted_name(k)},
            peak_open_regions=tracer.peak_regions,
            peak_open_vertices=tracer.peak_vertices,
            peak_tile_vertices=tracer.peak_tile_vertices,
            spilled_holes=tracer.spill.rings_written,
            peak_spilled_bytes=tracer.spill.peak_bytes_live,
            compactions=tracer.compactions,
            wall_s=time.perf_counter() - self._t0,
        )

    def abort(self) -> None:
        """The pass failed: remove the partial file and the spilled holes."""
        self._tracer.discard()
        if self._file is not None:
            self._file.discard()
            self._file = None

    def _wanted_name(self, name: str) -> bool:
        return self.options.classes is None or name in self.options.classes

    def _open(self) -> _FeatureFile:
        _check_dest(self.dest, self._overwrite)
        return _FeatureFile(self.dest, _provenance(self.info, self.options))

    def _write(self, regions: list[ClosedRegion]) -> None:
        """The regions one tile closed, one feature each (none below ``min_area``)."""
        assert self._file is not None
        area = np.array([r.area for r in regions]) * self.info.scale**2
        keep = area >= self.options.min_area
        for region in itertools.compress(regions, ~keep):
            self._tracer.release(region)
        kept = list(itertools.compress(regions, keep))
        if not kept:
            return
        polys = self._simplified(np.array([r.polygon for r in kept], dtype=object))
        rings, owner = shapely.get_rings(polys, return_index=True)
        for region, text in zip(kept, self._format(rings, owner, len(kept)), strict=True):
            head, tail = self._templates[region.cls]
            self._file.feature(itertools.chain((head, text), self._spilled_text(region), (tail,)))
            self._counts[self.info.classes[region.cls]] += 1

    def _spilled_text(self, region: ClosedRegion) -> Iterator[str]:
        """The spilled holes of a region as ring text, one batch at a time (each simplified alone).

        A generator, so the file takes each batch as it is read back: a region
        with a million holes never has their text in memory at once.
        """
        for holes in self._tracer.holes(region):
            rings = shapely.get_exterior_ring(self._simplified(shapely.polygons(holes)))
            yield ","
            yield from self._format(rings, np.zeros(len(rings), np.int64), 1)

    def _simplified(self, polys: NDArray[np.object_]) -> NDArray[np.object_]:
        """Topology-preserving simplification; a polygon it would spoil stays exact."""
        if self._tolerance <= 0:
            return polys
        simple = shapely.simplify(polys, self._tolerance, preserve_topology=True)
        ok = shapely.is_valid(simple) & ~shapely.is_empty(simple)
        return np.where(ok, simple, polys)


def export_geojson(
    source: str | Path,
    dest: str | Path,
    *,
    tile: int = DEFAULT_TILE,
    progress: bool = False,
    **options: Any,
) -> GeoJsonStats:
    """Export the complete output at ``source`` to ``dest`` in one pass (exporter options)."""
    info = source_info(source)
    exporter = GeoJsonExporter(info, dest, **options)
    export(source, [exporter], tile=tile, progress=progress)
    return exporter.stats


class _RingFormat:
    """Rings as GeoJSON text in level-0 pixels: integers when the scale is whole."""

    def __init__(self, scale: float) -> None:
        self.scale = scale
        self.whole = float(scale).is_integer()

    def __call__(self, rings: NDArray[np.object_], owner: NDArray[np.int64], n: int) -> list[str]:
        """For each of ``n`` owners, the comma-joined text of its rings (``owner`` sorted)."""
        xy, index = shapely.get_coordinates(rings, return_index=True)
        xy = xy * self.scale
        values = (xy.astype(np.int64) if self.whole else np.round(xy, COORDINATE_DECIMALS)).tolist()
        starts = np.searchsorted(index, np.arange(len(rings) + 1)).tolist()
        per_ring = [values[a:b] for a, b in itertools.pairwise(starts)]
        first = np.searchsorted(owner, np.arange(n + 1)).tolist()
        dumps = json.JSONEncoder(separators=(",", ":")).encode
        return [dumps(per_ring[a:b])[1:-1] for a, b in itertools.pairwise(first)]


class _FeatureFile:
    """``DEST.partial``, written feature by feature, renamed to ``DEST`` when complete.

    ``.gz``: gzip. ``.zip``: a zip archive holding one ``NAME.geojson`` (what
    QuPath's ``PathIO.readObjects`` opens besides ``.geojson`` and ``.json``).
    """

    def __init__(self, dest: Path, provenance: dict[str, Any]) -> None:
        self.dest = dest
        self.partial = dest.with_name(dest.name + ".partial")
        self.count = 0
        try:
            raw = self.partial.open("wb")
        except OSError as exc:
            raise OutputError(f"cannot write {self.partial}: {exc.strerror or exc}") from exc
        binary: IO[bytes] | gzip.GzipFile = raw
        self._outer: list[IO[bytes] | zipfile.ZipFile] = [raw]  # closed after the text stream
        if dest.suffix == ".gz":
            name = dest.name[: -len(".gz")]  # the name gunzip restores
            binary = gzip.GzipFile(filename=name, mode="wb", fileobj=raw, compresslevel=6, mtime=0)
        elif dest.suffix == ".zip":
            archive = zipfile.ZipFile(raw, "w")
            entry = zipfile.ZipInfo(Path(dest.stem).with_suffix(".geojson").name)
            entry.compress_type = zipfile.ZIP_DEFLATED  # zlib's default level, 6
            binary = archive.open(entry, "w", force_zip64=True)  # no 4 GiB limit
            self._outer.insert(0, archive)
        self.out = io.TextIOWrapper(binary, encoding="utf-8", write_through=False)
        meta = json.dumps(provenance, separators=(",", ":"))
        head = '{"type":"FeatureCollection","wsi_harness":' + meta + ',"features":['
        self._guarded(self.out.write, head)

    def feature(self, parts: Iterable[str]) -> None:
        """Append one feature, given as text parts (written as they come)."""
        self._guarded(self.out.write, ",\n" if self.count else "\n")
        self._guarded(self.out.writelines, parts)
        self.count += 1

    def commit(self, overwrite: bool) -> None:
        """Close the collection and move it into place."""
        self._guarded(self.out.write, "\n]}\n")
        self._guarded(self.out.close)  # the compressed stream; the archive and file stay open
        for handle in self._outer:
            self._guarded(handle.close)
        if self.dest.exists() and not overwrite:
            self.partial.unlink()
            raise OutputError(f"{self.dest} appeared during the export; pass --overwrite")
        self.partial.replace(self.dest)

    def discard(self) -> None:
        """Close and remove the partial file."""
        for handle in (self.out, *self._outer):
            # A failed write may leave the stream unflushable; the file goes anyway.
            with contextlib.suppress(OSError, ValueError):
                handle.close()
        self.partial.unlink(missing_ok=True)

    def _guarded(self, call: Callable[..., object], *args: Any) -> None:
        """``call(*args)``, a failed write (disk full, ...) becoming one line."""
        try:
            call(*args)
        except OSError as exc:
            raise os_error(self.partial, exc, "write") from exc


def _check_dest(dest: Path, overwrite: bool) -> Path:
    """Refuse a destination that would be clobbered or cannot be created; one line each."""
    if dest.is_dir():
        raise OutputError(f"{dest} is a folder; give a file name such as {dest / 'labels.geojson'}")
    if dest.exists() and not overwrite:
        raise OutputError(f"{dest} already exists; pass --overwrite to replace it")
    if not dest.parent.is_dir():
        raise OutputError(f"folder {dest.parent} does not exist; create it first")
    return dest


def _feature_templates(info: SourceInfo, object_type: str) -> dict[int, tuple[str, str]]:
    """Per class: the text before the coordinates of a feature and the text after them."""
    from harness.render import palette

    lut = palette(list(info.classes))
    head = '{"type":"Feature","geometry":{"type":"Polygon","coordinates":['
    templates = {}
    for k, name in enumerate(info.classes):
        classification = {"name": name, "color": [int(c) for c in lut[k]]}
        props = {"objectType": object_type, "classification": classification}
        templates[k] = (head, ']},"properties":' + json.dumps(props, separators=(",", ":")) + "}")
    return templates


def _provenance(info: SourceInfo, options: GeoJsonOptions) -> dict[str, Any]:
    """Where the polygons came from: the source output's record, and how they were made."""
    attrs = info.attrs
    return {
        "source": info.path,
        "slide": attrs.get("slide"),
        "model": attrs.get("model"),
        "plan": attrs.get("plan"),
        "version": attrs.get("version"),
        "mpp": info.mpp,
        "slide_mpp": info.slide_mpp,
        "scale": info.scale,
        "coordinates": "level-0 slide pixels",
        "classes": list(info.classes if options.classes is None else options.classes),
        "exporter": {"version": __version__, **asdict(options)},
    }
