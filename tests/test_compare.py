"""``compare``: tile by tile, in memory independent of the outputs' size."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pytest

from harness.compare import compare_outputs
from harness.testing.labelmaps import write_label_output

if TYPE_CHECKING:
    from pathlib import Path

WIDE = (512, 65536)  # 33 Mpx of labels: the old 1024-row bands held all of it several times


def _stripes(box: tuple[int, int, int, int]) -> np.ndarray:
    y0, y1, x0, x1 = box
    xs = np.arange(x0, x1)
    return np.broadcast_to(((xs // 100) % 3).astype(np.uint8), (y1 - y0, x1 - x0)).copy()


@pytest.fixture(scope="module")
def wide_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("compare")

    def other(box: tuple[int, int, int, int]) -> np.ndarray:
        lab = _stripes(box)
        if box[0] == 0 and box[2] <= 40_000 < box[3]:  # one pixel differs, far along
            lab[0, 40_000 - box[2]] = (lab[0, 40_000 - box[2]] + 1) % 3
        return lab

    a = write_label_output(root / "a.zarr", _stripes, shape=WIDE)
    b = write_label_output(root / "b.zarr", other, shape=WIDE)
    return a, b


def test_tiles_find_one_pixel_in_33_million(wide_pair: tuple[Path, Path]) -> None:
    cmp = compare_outputs(*wide_pair)
    assert not cmp.bitwise_equal and not cmp.probabilities_compared
    assert round((1 - cmp.label_agreement) * WIDE[0] * WIDE[1]) == 1
    assert cmp.coverage_mismatch_px == 0
    assert compare_outputs(wide_pair[0], wide_pair[0]).bitwise_equal


@pytest.mark.memory
@pytest.mark.limit_memory("24 MB")
def test_compare_memory_does_not_follow_the_width(wide_pair: tuple[Path, Path]) -> None:
    # 1024 x 1024 tiles: about 1 MiB of labels a side at a time, not 512 x 65536 rows
    assert compare_outputs(*wide_pair).label_agreement < 1
