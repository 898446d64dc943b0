"""Patch grid, edges, tissue filtering, order and chunk bookkeeping."""

from __future__ import annotations

import numpy as np
import pytest

from harness.errors import ConfigError
from harness.plan import PlanConfig, grid_origins, make_plan, min_budget, output_shape

BIG = 10**9


@pytest.mark.parametrize(
    ("size", "patch", "stride", "expected"),
    [
        pytest.param(1000, 256, 128, [0, 128, 256, 384, 512, 640, 768], id="not-a-multiple"),
        pytest.param(512, 256, 128, [0, 128, 256], id="exact-fit"),
        pytest.param(100, 256, 128, [0], id="slide-smaller-than-patch"),
        pytest.param(256, 256, 256, [0], id="one-patch"),
    ],
)
def test_grid_covers_the_slide_and_stops_at_the_edge(size, patch, stride, expected) -> None:
    # WHEN the grid is laid over one axis
    origins = grid_origins((size, 1), (patch, 1), (stride, 1))
    # THEN origins step by the stride and the last patch reaches the edge
    assert origins[:, 0].tolist() == expected
    assert origins[-1, 0] + patch >= size


def test_output_shape_rounds_partial_pixels_up() -> None:
    assert output_shape((1001, 2000), 0.25, 0.5) == (501, 1000)
    assert output_shape((1000, 2000), 0.5, None) == (1000, 2000)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"stride": 0}, "stride", id="stride-0"),
        pytest.param({"stride": 300}, "gaps", id="stride-above-output"),
        pytest.param({"output_patch": 512}, "larger than the input", id="output-above-input"),
        pytest.param({"mpp": -1.0}, "mpp", id="negative-mpp"),
        pytest.param({"blend": "max"}, "blend", id="bad-blend"),
        pytest.param({"order": "zigzag"}, "order", id="bad-order"),
        pytest.param({"chunk": (0, 4)}, "chunk", id="zero-chunk"),
    ],
)
def test_bad_config_is_refused_with_a_named_value(kwargs, message) -> None:
    with pytest.raises(ConfigError, match=message):
        PlanConfig(**kwargs)


def test_budget_below_one_patch_is_refused() -> None:
    config = PlanConfig(patch=256, stride=128, chunk=256, mpp=None)
    need = min_budget(config, 3)
    with pytest.raises(ConfigError, match=f"{need}"):
        make_plan((1024, 1024), 1.0, config, 3, need - 1)


def test_every_chunk_count_matches_the_patches_touching_it() -> None:
    # GIVEN a plan with centred smaller outputs and unaligned chunks
    config = PlanConfig(patch=40, output_patch=24, stride=16, chunk=20, mpp=None)
    plan = make_plan((130, 170), 1.0, config, 2, BIG)
    # WHEN counting coverage by brute force
    counts = np.zeros(plan.chunk_grid, dtype=np.int64)
    for y, x in plan.origins:
        rows = range(y // 20, (min(y + 24, 130) - 1) // 20 + 1)
        cols = range(x // 20, (min(x + 24, 170) - 1) // 20 + 1)
        for r in rows:
            for c in cols:
                counts[r, c] += 1
    # THEN the plan's expected counts agree
    assert np.array_equal(plan.expected.reshape(plan.chunk_grid), counts)


def test_input_box_is_centred_on_the_output_and_scaled_to_level0() -> None:
    # GIVEN a 0.25 mpp slide processed at 0.5 mpp (level-0 boxes twice as large)
    config = PlanConfig(patch=64, output_patch=32, stride=32, mpp=0.5)
    plan = make_plan((400, 400), 0.25, config, 3, BIG)
    # THEN the first input box starts half the margin before the origin, in level-0 pixels
    assert plan.input_box(0) == (-32, -32, 128, 128)


def test_strips_split_halo_patches_and_keep_each_once_per_strip() -> None:
    # GIVEN a budget that fits a few chunk columns only
    config = PlanConfig(patch=64, stride=32, chunk=64, mpp=None)
    budget = min_budget(config, 3) * 2
    plan = make_plan((256, 1024), 1.0, config, 3, budget)
    single = make_plan((256, 1024), 1.0, config, 3, budget, strips=False)
    summary = plan.summary(budget)
    # THEN there are several strips, halo patches run twice, no chunk is touched from two strips
    assert summary.strips > 1
    assert plan.n_unique == single.n_patches < plan.n_patches
    assert np.array_equal(plan.expected, single.expected)
    assert summary.expected_spill_bytes == 0
    assert summary.expected_peak_live_bytes <= budget


def test_mask_filters_patches_and_is_reported() -> None:
    from harness.mask import patches_touching

    config = PlanConfig(patch=32, stride=32, chunk=32, mpp=None)
    origins = grid_origins((128, 128), (32, 32), (32, 32))
    mask = np.zeros((4, 4), bool)
    mask[0, 0] = mask[3, 3] = True
    keep = patches_touching(mask, origins, (32, 32), (128, 128))
    plan = make_plan((128, 128), 1.0, config, 3, BIG, keep)
    assert plan.n_patches == 2 and plan.patches_masked_out == 14
    assert np.count_nonzero(plan.expected) == 2


def test_read_band_spans_two_patch_rows_across_the_widest_strip() -> None:
    # GIVEN a plan at half the slide's resolution, in strips of 2 chunks
    config = PlanConfig(patch=64, stride=32, chunk=32, mpp=1.0)
    plan = make_plan((2000, 3000), 0.5, config, 3, min_budget(config, 3) * 2)
    assert plan.strip_chunks < plan.chunk_grid[1]
    # THEN the band is one patch plus one stride high and a strip plus a patch wide, at level 0
    h, w = plan.read_band()
    assert h == (64 + 32) * 2
    assert w == (plan.strip_chunks * 32 + 64) * 2
