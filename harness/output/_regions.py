"""Streaming region tracing: label tiles in, closed polygons out, one per 4-connected region.

:class:`RegionTracer` is fed the tiles of a label map in raster order (the
order of :func:`harness.output.export.tiles`). For each tile it

1. labels the 4-connected components of every exported class
   (``scipy.ndimage.label``, whose default structure is the 4-neighbour cross)
   and traces each component to an exact pixel-edge polygon with holes
   (``rasterio.features.shapes`` on the component ids, 4-connectivity, so a
   polygon is never joined to another through a corner: GDAL then writes a
   hole that touches its shell at one vertex, which is valid);
2. joins components to the *open* regions across the tile's top and left seams
   from the pixels alone: a pixel on each side of a seam, same class, means one
   region (a union of their ids; several open regions may merge through one
   component, e.g. the bottom of a U);
3. closes every region that no longer touches the *frontier* -- the staircase
   line between tiles done and tiles to come -- and hands it out whole.

A piece's holes never touch its tile's border (a gap that reached the border
would be open to the outside, not a hole), so they are final as traced:
joining pieces needs only their *shells*. A region is the union of its shells
(``shapely.union_all``; coordinates are integers, so the union is exact and the
seams vanish) with its pieces' holes put back as interior rings. The interior
rings of that union are final too: tiles to come form one connected area that
reaches the map's edge, so no ring of pixels done can enclose any of it.

What is held between tiles (and nothing else grows with the slide):

* the frontier: for each column, the region id and class of the last pixel
  row done (``int64`` + ``uint8``: 9 bytes per output column, 0.6 MB at 64k),
  and the same for the last column of the tile to the left;
* every *open* region (one touching the frontier): the shells of its pieces
  (shapely polygons), its holes not yet spilled, a count of its frontier pixels
  (0 means closed), and aliases of region ids merged away since the start of
  the tile row (cleared at each row end);
* holes, which are final as soon as they exist, go **to disk**
  (:class:`~harness.output._holespill.HoleSpill`) until their region closes.
  Whenever the open regions together hold more than
  ``max(compact_vertices, 2 F)`` vertices, ``F`` being what they held after
  the last compaction, every open region is *compacted*: its shells are
  merged into one outline and its holes are spilled.

So after a compaction the open regions hold only ``F``: the outer rings of
the regions that cross the frontier -- how many regions one row of pixels
crosses and how long their outlines are so far, not how many rows the map
has -- and the peak is at most ``max(compact_vertices, 2 F)`` plus one tile's
pieces. Doubling the threshold keeps the work amortised (each compaction
follows at least as many new vertices as it keeps). An outer ring cannot be
streamed (GeoJSON writes it first): a region whose *outline* is enormous (a
comb spanning the slide) holds it until it closes, and ``F`` with it.

With simplification (tolerance ``t`` in output pixels), a spilled hole is
simplified alone when it is written, and Douglas-Peucker moves a ring by at
most ``t``; so only holes farther than ``margin = 2 t`` from every other ring
of the region are spilled, the rest stay with the region. That also keeps
them clear of everything still to come: a segment from a hole to a point
beyond the frontier leaves the region, so it crosses one of the region's
other rings first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import shapely
from rasterio.features import shapes
from rasterio.transform import Affine
from scipy import ndimage
from shapely.geometry import LinearRing, Polygon

from harness.output._holespill import HoleSpill, SpillRecord

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from numpy.typing import NDArray

    from harness.output.base import Box

COMPACT_VERTICES = 100_000
"""Vertices the open regions may hold before the first compaction (about 4 MB of geometry)."""


@dataclass(frozen=True)
class ClosedRegion:
    """One finished region: ``polygon`` (output pixels) plus ``spilled`` holes on disk.

    The region is ``polygon`` minus the spilled holes; ``area`` is its exact
    area in output pixels². Its spilled holes come back through
    :meth:`RegionTracer.holes` (or are dropped with :meth:`RegionTracer.release`).
    """

    cls: int
    polygon: Polygon
    spilled: tuple[SpillRecord, ...]
    area: float


@dataclass
class _Region:
    cls: int
    shells: list[Polygon] = field(default_factory=list)
    holes: list[LinearRing] = field(default_factory=list)
    vertices: int = 0
    spilled: list[SpillRecord] = field(default_factory=list)


@dataclass
class _Frontier:
    """Region id and class of the pixels just done, facing the tiles to come."""

    below: NDArray[np.int64]
    below_cls: NDArray[np.uint8]
    side: NDArray[np.int64] | None = None
    side_cls: NDArray[np.uint8] | None = None


class RegionTracer:
    """Traces a label map tile by tile; see the module documentation.

    Parameters
    ----------
    shape
        ``(H, W)`` of the label map.
    wanted
        ``(256,)`` bool: which label values are exported.
    spill_dir
        Folder for the (unlinked) files of spilled holes.
    margin
        Distance in output pixels a hole must keep from the region's other
        rings to be spilled (twice the simplification tolerance).
    compact_vertices
        Vertices held by all open regions together that trigger the first compaction.
    """

    def __init__(
        self,
        shape: tuple[int, int],
        wanted: NDArray[np.bool_],
        spill_dir: Path,
        margin: float = 0.0,
        compact_vertices: int = COMPACT_VERTICES,
    ) -> None:
        self.height, self.width = shape
        self.wanted = wanted
        self.spill = HoleSpill(spill_dir)
        self.margin = margin
        self.compact_vertices = compact_vertices
        self._front = _Frontier(np.zeros(self.width, np.int64), np.zeros(self.width, np.uint8))
        self._regions: dict[int, _Region] = {}
        self._count: dict[int, int] = {}
        self._alias: dict[int, int] = {}
        self._next_id = 1
        self._expect: tuple[int, int] | None = (0, 0)
        self._threshold = compact_vertices
        self.held_vertices = 0
        self.peak_regions = 0
        self.peak_vertices = 0
        self.peak_tile_vertices = 0
        self.compactions = 0

    @property
    def done(self) -> bool:
        """Whether the last tile has been fed (every region is then closed)."""
        return self._expect is None

    def feed(self, box: Box, labels: NDArray[np.uint8]) -> list[ClosedRegion]:
        """Trace one tile; return the regions it closed."""
        self._check_order(box, labels)
        ids, classes = _components(labels, self.wanted)
        lut = self._link(box, ids, labels, classes)
        if len(classes) > 1:
            self._add_pieces(box, ids, lut, classes)
        removed = self._advance(box, ids, labels, lut)
        candidates = {self._find(int(r)) for r in np.unique(np.concatenate([lut[1:], removed]))}
        ended = [r for r in candidates if r in self._regions and not self._count.get(r)]
        closed = [self._close(r) for r in ended]
        if self.held_vertices > self._threshold:
            self._compact_all()
        if box[3] == self.width:
            self._end_row()
        # What stays held at the frontier until the next tile.
        self.peak_regions = max(self.peak_regions, len(self._regions))
        self.peak_vertices = max(self.peak_vertices, self.held_vertices)
        return closed

    def holes(self, region: ClosedRegion) -> Iterator[NDArray[np.object_]]:
        """The spilled holes of a closed region, one batch of LinearRings at a time.

        The batches are released from disk as the iteration ends (or stops).
        """
        try:
            for record in region.spilled:
                yield self.spill.read(record)
        finally:
            self.release(region)

    def release(self, region: ClosedRegion) -> None:
        """Drop the spilled holes of a closed region without reading them."""
        self.spill.release(region.spilled)

    def discard(self) -> None:
        """Drop every open region and every spilled hole (the export failed or finished)."""
        self._regions.clear()
        self.spill.close()

    def _check_order(self, box: Box, labels: NDArray[np.uint8]) -> None:
        y0, y1, x0, x1 = box
        if self._expect != (y0, x0) or labels.shape != (y1 - y0, x1 - x0):
            raise ValueError(f"tiles must come in raster order: expected origin {self._expect}, "
                             f"got box {box} with labels {labels.shape}")  # fmt: skip
        side = self._front.side
        if x0 > 0 and (side is None or len(side) != y1 - y0):
            raise ValueError(f"tile {box} does not match the height of the tile to its left")
        self._expect = (y0, x1) if x1 < self.width else (y1, 0) if y1 < self.height else None

    def _find(self, rid: int) -> int:
        alias, root = self._alias, rid
        while root in alias:
            root = alias[root]
        while rid != root:  # path compression
            alias[rid], rid = root, alias[rid]
        return root

    def _link(
        self,
        box: Box,
        ids: NDArray[np.int32],
        labels: NDArray[np.uint8],
        classes: NDArray[np.uint8],
    ) -> NDArray[np.int64]:
        """Region id of every component (index 0: none), merging regions joined here."""
        y0, _, x0, x1 = box
        front, pairs = self._front, []
        if y0 > 0:
            pairs += _seam_pairs(front.below[x0:x1], front.below_cls[x0:x1], ids[0], labels[0])
        if x0 > 0 and front.side is not None and front.side_cls is not None:
            pairs += _seam_pairs(front.side, front.side_cls, ids[:, 0], labels[:, 0])
        lut = np.zeros(len(classes), np.int64)
        for olds, news in _groups([(self._find(o), n) for o, n in pairs]):
            rep = max(olds, key=lambda r: self._regions[r].vertices)
            for other in olds:
                if other != rep:
                    self._merge(rep, other)
            lut[news] = rep
        fresh = np.flatnonzero(lut == 0)[1:]  # index 0 is "no component"
        lut[fresh] = np.arange(self._next_id, self._next_id + len(fresh))
        self._next_id += len(fresh)
        return lut

    def _merge(self, rep: int, other: int) -> None:
        keep, gone = self._regions[rep], self._regions.pop(other)
        keep.shells += gone.shells
        keep.holes += gone.holes
        keep.vertices += gone.vertices
        keep.spilled += gone.spilled
        self._count[rep] = self._count.get(rep, 0) + self._count.pop(other, 0)
        self._alias[other] = rep

    def _add_pieces(
        self, box: Box, ids: NDArray[np.int32], lut: NDArray[np.int64], classes: NDArray[np.uint8]
    ) -> None:
        added = 0
        for piece in _trace(box, ids):
            rid = int(lut[piece.local])
            region = self._regions.get(rid)
            if region is None:
                region = self._regions[rid] = _Region(int(classes[piece.local]))
            region.shells.append(piece.shell)
            region.holes += piece.holes
            region.vertices += piece.vertices
            added += piece.vertices
        self.held_vertices += added
        self.peak_tile_vertices = max(self.peak_tile_vertices, added)

    def _advance(
        self, box: Box, ids: NDArray[np.int32], labels: NDArray[np.uint8], lut: NDArray[np.int64]
    ) -> NDArray[np.int64]:
        """Move the frontier past this tile; return the ids that left it."""
        y0, y1, x0, x1 = box
        front = self._front
        removed = [front.below[x0:x1].copy()] if y0 > 0 else []
        if x0 > 0 and front.side is not None:
            removed.append(front.side)
        below = lut[ids[-1]] if y1 < self.height else np.zeros(x1 - x0, np.int64)
        front.below[x0:x1], front.below_cls[x0:x1] = below, labels[-1]
        added = [below]
        if x1 < self.width:
            front.side, front.side_cls = lut[ids[:, -1]], labels[:, -1].copy()
            added.append(front.side)
        else:
            front.side = front.side_cls = None
        gone = np.concatenate(removed) if removed else np.zeros(0, np.int64)
        self._tally(gone, -1)
        self._tally(np.concatenate(added), 1)
        return gone

    def _tally(self, rids: NDArray[np.int64], sign: int) -> None:
        values, counts = np.unique(rids[rids != 0], return_counts=True)
        for rid, n in zip(values.tolist(), counts.tolist(), strict=True):
            root = self._find(rid)
            self._count[root] = self._count.get(root, 0) + sign * n

    def _close(self, rid: int) -> ClosedRegion:
        region = self._regions.pop(rid)
        self._count.pop(rid, None)
        self.held_vertices -= region.vertices
        if len(region.shells) == 1 and not region.holes:
            poly = region.shells[0]  # most regions (nuclei): one piece without holes
        else:
            outline = _union(region.shells)
            holes = np.concatenate([_interiors(outline), np.array(region.holes, dtype=object)])
            poly = shapely.polygons(outline.exterior, holes=holes)
        spilled = tuple(region.spilled)
        area = float(poly.area) - sum(r.area for r in spilled)
        return ClosedRegion(region.cls, poly, spilled, area)

    def _compact_all(self) -> None:
        """Compact every open region with something to merge or spill; raise the threshold."""
        for region in self._regions.values():
            if len(region.shells) > 1 or region.holes:
                self._compact(region)
        self._threshold = max(self.compact_vertices, 2 * self.held_vertices)
        self.compactions += 1

    def _compact(self, region: _Region) -> None:
        """Merge the shells of an open region; spill its final holes to disk."""
        outline = _union(region.shells)
        holes = np.concatenate([_interiors(outline), np.array(region.holes, dtype=object)])
        shell = shapely.polygons(outline.exterior)
        final = self._spillable(shell, holes)
        if final.any():
            region.spilled.append(self.spill.put(holes[final]))
        kept = holes[~final]
        n = int(shapely.get_num_coordinates(shell)) + int(shapely.get_num_coordinates(kept).sum())
        self.held_vertices += n - region.vertices
        region.shells, region.holes, region.vertices = [shell], list(kept), n

    def _spillable(self, shell: Polygon, holes: NDArray[np.object_]) -> NDArray[np.bool_]:
        """Holes that, simplified alone, cannot cross the region's other rings: see the module."""
        far = np.ones(len(holes), bool)
        if self.margin > 0 and len(holes):
            rings = np.concatenate([[shell.exterior], holes])
            src, dst = shapely.STRtree(rings).query(holes, "dwithin", distance=self.margin)
            far[src[dst != src + 1]] = False
        return far

    def _end_row(self) -> None:
        """Resolve aliases in the frontier row, then forget them (they are all resolved)."""
        values, inverse = np.unique(self._front.below, return_inverse=True)
        roots = np.array([self._find(v) if v else 0 for v in values.tolist()], np.int64)
        self._front.below = roots[inverse].reshape(-1)
        self._alias.clear()


def _components(
    labels: NDArray[np.uint8], wanted: NDArray[np.bool_]
) -> tuple[NDArray[np.int32], NDArray[np.uint8]]:
    """4-connected components of every wanted class: ids (0 = none) and the class of each id."""
    present = np.flatnonzero((np.bincount(labels.ravel(), minlength=256) > 0) & wanted)
    ids = np.zeros(labels.shape, np.int32)
    classes = [np.zeros(1, np.uint8)]
    n = 0
    for value in present.tolist():
        comp, k = ndimage.label(labels == value)
        np.copyto(ids, comp + np.int32(n), where=comp > 0)
        classes.append(np.full(k, value, np.uint8))
        n += k
    return ids, np.concatenate(classes)


def _seam_pairs(
    old: NDArray[np.int64],
    old_cls: NDArray[np.uint8],
    new: NDArray[np.int32],
    new_cls: NDArray[np.uint8],
) -> list[tuple[int, int]]:
    """``(region id, component)`` pairs that touch across a seam with the same class."""
    touch = (old != 0) & (new != 0) & (old_cls == new_cls)
    if not touch.any():
        return []
    codes = np.unique((old[touch] << 32) | new[touch].astype(np.int64))
    return [(c >> 32, c & 0xFFFFFFFF) for c in codes.tolist()]


def _groups(pairs: list[tuple[int, int]]) -> list[tuple[list[int], list[int]]]:
    """Connected groups of (region, component) links: their regions and components."""
    parent: dict[tuple[int, int], tuple[int, int]] = {}

    def find(x: tuple[int, int]) -> tuple[int, int]:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for old, new in pairs:
        parent[find((0, old))] = find((1, new))
    groups: dict[tuple[int, int], tuple[list[int], list[int]]] = {}
    for node in list(parent):
        olds, news = groups.setdefault(find(node), ([], []))
        (news if node[0] else olds).append(node[1])
    return list(groups.values())


@dataclass(frozen=True)
class _Piece:
    """One traced component: its shell (a polygon without holes) and its holes."""

    local: int
    shell: Polygon
    holes: list[LinearRing]
    vertices: int


def _trace(box: Box, ids: NDArray[np.int32]) -> list[_Piece]:
    """Exact pixel-edge polygons of every component of ``ids`` (output coordinates)."""
    y0, _, x0, _ = box
    traced = list(shapes(ids, ids > 0, 4, Affine.translation(x0, y0)))
    rings_of = [g["coordinates"] for g, _ in traced]
    per_piece = np.array([len(r) for r in rings_of])
    sizes = np.array([len(ring) for rings in rings_of for ring in rings])
    xy = np.array([p for rings in rings_of for ring in rings for p in ring], np.float64)
    rings = shapely.linearrings(xy, indices=np.repeat(np.arange(len(sizes)), sizes))
    first = np.cumsum(per_piece) - per_piece
    shells = shapely.polygons(rings[first])
    holes = np.split(rings, first[1:])
    counts = np.add.reduceat(sizes, first).tolist()
    return [
        _Piece(int(v), shell, list(h[1:]), n)
        for (_, v), shell, h, n in zip(traced, shells, holes, counts, strict=True)
    ]


def _interiors(poly: Polygon) -> NDArray[np.object_]:
    rings: NDArray[np.object_] = shapely.get_interior_ring(
        poly, np.arange(shapely.get_num_interior_rings(poly))
    )
    return rings


def _union(shells: list[Polygon]) -> Polygon:
    """The exact union of one region's shells: one polygon (the region is connected).

    The seams leave straight-through vertices on the outline; tolerance-0
    simplification drops exactly those (the point set is unchanged), so a
    region spanning many tiles does not hold a vertex per seam crossing.
    """
    if len(shells) == 1:
        return shells[0]
    poly = shapely.simplify(shapely.union_all(shells), 0.0, preserve_topology=False)
    if not isinstance(poly, Polygon):
        raise AssertionError(f"one region's pieces did not join into one polygon: {poly.geom_type}")
    return poly
