"""Compare two segmentation outputs at the same resolution, row block by row block.

The two engines tile the slide with the same stride from the same origin, but
they stop at different places: ours adds output patches at ``0, s, 2s, ...``
until the slide is covered (the last one overhangs the edge), TIAToolbox adds
them until ``ceil(length / s)`` starts, so near the right and bottom edges it
averages in extra, mostly-padding patches. Pixels covered by the same patches
in both grids are the *common-grid* region; the rest is the *edge band*, and
each region gets its own agreement figures so a convention difference is not
mistaken for a merge error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from harness.output.zarr_store import NO_LABEL

if TYPE_CHECKING:
    from pathlib import Path

    from numpy.typing import NDArray

UNCOVERED = NO_LABEL
"""Label value our engine writes where no patch covered the pixel."""


def harness_starts(length: int, out: int, stride: int) -> int:
    """Number of output patches our grid places along an axis of ``length`` pixels.

    Starts are ``0, s, 2s, ...``; the last is the first whose output reaches the edge.
    """
    if length <= out:
        return 1
    return math.ceil((length - out) / stride) + 1


def tiatoolbox_starts(length: int, stride: int) -> int:
    """Number of output patches TIAToolbox places: ``ceil(length / stride)``."""
    return math.ceil(length / stride)


def common_grid_extent(length: int, out: int, stride: int) -> int:
    """First pixel (along an axis) whose set of covering patches differs between grids.

    Both grids are prefixes of the same sequence of starts, so they differ
    only from the first start one of them lacks; ``length`` if they never do.
    """
    n = min(harness_starts(length, out, stride), tiatoolbox_starts(length, stride))
    return min(length, n * stride)


@dataclass(frozen=True)
class RegionStats:
    """Agreement over one region of the slide.

    Attributes
    ----------
    pixels
        Pixels compared (covered by both outputs).
    label_agreement
        Fraction of those pixels with equal labels (NaN when ``pixels`` is 0).
    prob_max_abs_diff
        Largest absolute probability difference; ``None`` when either side
        has no probabilities.
    prob_mean_abs_diff
        Mean absolute probability difference over pixels and classes.
    """

    pixels: int
    label_agreement: float
    prob_max_abs_diff: float | None
    prob_mean_abs_diff: float | None


@dataclass(frozen=True)
class Agreement:
    """How far two outputs of the same slide agree.

    Attributes
    ----------
    shape_ours, shape_peer
        ``(H, W)`` of each label map.
    common_grid
        ``(height, width)`` of the top-left region both grids cover alike.
    overall, common, edge
        Statistics over all compared pixels, the common-grid region and the edge band.
    """

    shape_ours: tuple[int, int]
    shape_peer: tuple[int, int]
    common_grid: tuple[int, int]
    overall: RegionStats
    common: RegionStats
    edge: RegionStats

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "shape_ours": list(self.shape_ours),
            "shape_peer": list(self.shape_peer),
            "common_grid": list(self.common_grid),
            "overall": vars(self.overall),
            "common": vars(self.common),
            "edge": vars(self.edge),
        }


@dataclass
class _Tally:
    """Running sums for one region (mutable on purpose: it is filled block by block)."""

    pixels: int = 0
    equal: int = 0
    max_diff: float = 0.0
    sum_diff: float = 0.0
    n_diff: int = 0

    def add(self, equal: NDArray[np.bool_], diff: NDArray[np.float32] | None) -> None:
        self.pixels += int(equal.size)
        self.equal += int(equal.sum())
        if diff is not None and diff.size:
            self.max_diff = max(self.max_diff, float(diff.max()))
            self.sum_diff += float(diff.sum(dtype=np.float64))
            self.n_diff += int(diff.size)

    def stats(self, *, with_probs: bool) -> RegionStats:
        agreement = self.equal / self.pixels if self.pixels else math.nan
        if not with_probs:
            return RegionStats(self.pixels, agreement, None, None)
        mean = self.sum_diff / self.n_diff if self.n_diff else 0.0
        return RegionStats(self.pixels, agreement, self.max_diff, mean)


@dataclass(frozen=True)
class OutputArrays:
    """The label map and (optional) probabilities of one output, lazily read."""

    labels: Any
    probabilities: Any | None


def open_output(path: Path, labels_key: str) -> OutputArrays:
    """Open a zarr group holding ``labels_key`` and maybe ``probabilities``."""
    import zarr

    group = zarr.open_group(str(path), mode="r")
    probs = group.get("probabilities")
    return OutputArrays(group[labels_key], probs)


def compare_outputs(
    ours: OutputArrays, peer: OutputArrays, out: int, stride: int, rows: int = 512
) -> Agreement:
    """Compare ``ours`` with ``peer`` (both at the same resolution) over their common extent.

    Parameters
    ----------
    ours, peer
        Outputs to compare; ours may mark uncovered pixels with label 255.
    out, stride
        Output patch size and stride of the grid both ran with.
    rows
        Rows read per block, bounding this function's memory.
    """
    shape_o = (int(ours.labels.shape[0]), int(ours.labels.shape[1]))
    shape_p = (int(peer.labels.shape[0]), int(peer.labels.shape[1]))
    h, w = min(shape_o[0], shape_p[0]), min(shape_o[1], shape_p[1])
    grid = (
        common_grid_extent(shape_o[0], out, stride),
        common_grid_extent(shape_o[1], out, stride),
    )
    with_probs = ours.probabilities is not None and peer.probabilities is not None
    tallies = {"common": _Tally(), "edge": _Tally()}
    for y0 in range(0, h, rows):
        y1 = min(h, y0 + rows)
        _tally_block(ours, peer, (y0, y1, w), grid, tallies, with_probs=with_probs)
    common = tallies["common"].stats(with_probs=with_probs)
    edge = tallies["edge"].stats(with_probs=with_probs)
    return Agreement(shape_o, shape_p, grid, _merge(common, edge), common, edge)


def _tally_block(
    ours: OutputArrays,
    peer: OutputArrays,
    block: tuple[int, int, int],
    grid: tuple[int, int],
    tallies: dict[str, _Tally],
    *,
    with_probs: bool,
) -> None:
    y0, y1, w = block
    lab_o = np.asarray(ours.labels[y0:y1, :w])
    lab_p = np.asarray(peer.labels[y0:y1, :w])
    covered = lab_o != UNCOVERED
    in_grid = np.zeros(lab_o.shape, dtype=bool)
    in_grid[: max(0, grid[0] - y0), : grid[1]] = True
    diff = None
    probs_o, probs_p = ours.probabilities, peer.probabilities
    if with_probs and probs_o is not None and probs_p is not None:
        prob_o = np.asarray(probs_o[y0:y1, :w], dtype=np.float32)
        prob_p = np.asarray(probs_p[y0:y1, :w], dtype=np.float32)
        diff = np.abs(prob_o - prob_p)
    for name, region in (("common", in_grid), ("edge", ~in_grid)):
        sel = covered & region
        tallies[name].add(lab_o[sel] == lab_p[sel], None if diff is None else diff[sel])


def _merge(a: RegionStats, b: RegionStats) -> RegionStats:
    pixels = a.pixels + b.pixels
    if pixels == 0:
        return RegionStats(0, math.nan, a.prob_max_abs_diff, a.prob_mean_abs_diff)
    equal = _nan0(a.label_agreement) * a.pixels + _nan0(b.label_agreement) * b.pixels
    if a.prob_max_abs_diff is None or b.prob_max_abs_diff is None:
        return RegionStats(pixels, equal / pixels, None, None)
    mean_a, mean_b = a.prob_mean_abs_diff or 0.0, b.prob_mean_abs_diff or 0.0
    mean = (mean_a * a.pixels + mean_b * b.pixels) / pixels
    return RegionStats(pixels, equal / pixels, max(a.prob_max_abs_diff, b.prob_max_abs_diff), mean)


def _nan0(x: float) -> float:
    return 0.0 if math.isnan(x) else x
