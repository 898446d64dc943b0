"""The core property: streaming == dense, bitwise, within budget, for any geometry."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.mask import patches_touching
from harness.merge import DenseMerger, StreamingMerger, finalise
from harness.models import seeded_probabilities
from harness.output import NO_LABEL
from harness.plan import Plan, PlanConfig, grid_origins, make_plan, output_shape
from harness.testing.sinks import CanvasSink
from harness.testing.strategies import Geometry, geometries


def _plans(g: Geometry) -> tuple[Plan, Plan]:
    keep = None
    if g.mask is not None:
        out_shape = output_shape(g.shape, 1.0, g.config.mpp)
        origins = grid_origins(out_shape, g.config.out_hw, g.config.stride_hw)
        keep = patches_touching(g.mask, origins, g.config.out_hw, out_shape)
    stream = make_plan(g.shape, 1.0, g.config, g.channels, g.budget, keep)
    dense = make_plan(g.shape, 1.0, g.config, g.channels, g.budget, keep, strips=False)
    return stream, dense


def _run(
    plan: Plan, merger: StreamingMerger | DenseMerger, outputs: np.ndarray, budget: int
) -> None:
    # One output per grid position (origin / stride): halo re-runs get the same output.
    grid = plan.origins // np.asarray(plan.config.stride_hw)
    for start in range(0, plan.n_patches, 7):
        idx = np.arange(start, min(start + 7, plan.n_patches))
        merger.add(outputs[grid[idx, 0], grid[idx, 1]], idx)
        assert merger.live_bytes <= budget or isinstance(merger, DenseMerger)
    merger.finish()
    merger.close()


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(geometries())
def test_streaming_equals_dense_bitwise_within_budget(g: Geometry) -> None:
    # GIVEN a drawn geometry and one output per grid patch (halo re-runs reuse it)
    stream_plan, dense_plan = _plans(g)
    oh, ow = g.config.out_hw
    rows, cols = (int(v) + 1 for v in (dense_plan.origins // g.config.stride_hw).max(axis=0))
    flat = seeded_probabilities((rows * cols, g.channels, oh, ow), seed=1)
    outputs = flat.reshape(rows, cols, g.channels, oh, ow)
    # WHEN both mergers run their plans
    a, b = (
        CanvasSink(stream_plan.out_shape, g.channels),
        CanvasSink(dense_plan.out_shape, g.channels),
    )
    streaming = StreamingMerger(stream_plan, a, g.budget)
    _run(stream_plan, streaming, outputs, g.budget)
    _run(dense_plan, DenseMerger(dense_plan, b), outputs, g.budget)
    # THEN outputs are bitwise equal, each chunk written once, and the budget held
    assert np.array_equal(a.probs.view(np.uint32), b.probs.view(np.uint32))
    assert np.array_equal(a.labels, b.labels)
    assert a.boxes == b.boxes
    assert streaming.ledger.peak_live_bytes <= g.budget


def test_raster_order_spills_and_strips_do_not() -> None:
    # GIVEN a band that does not fit the budget
    config = PlanConfig(patch=32, stride=16, chunk=16, mpp=None)
    budget = 12 * 16 * 16 * 4 * 4  # twelve chunks of 3 classes + weights; a band needs 57
    outputs = seeded_probabilities((1, 3, 32, 32), seed=0)
    results = {}
    for order in ("raster", "strips"):
        cfg = PlanConfig(patch=32, stride=16, chunk=16, mpp=None, order=order)
        plan = make_plan((200, 300), 1.0, cfg, 3, budget)
        merger = StreamingMerger(plan, CanvasSink(plan.out_shape, 3), budget)
        for i in range(plan.n_patches):
            merger.add(outputs, np.array([i]))
        results[order] = (merger.finish(), plan.summary(budget))
        merger.close()
    # THEN raster spills (and the dry-run summary predicted exactly that), strips never do
    raster, raster_summary = results["raster"]
    assert raster.spill_bytes > 0
    assert raster_summary.expected_spill_bytes == raster.spill_bytes
    assert raster.reload_bytes == raster.spill_bytes
    assert results["strips"][0].spill_bytes == 0
    assert results["strips"][1].strips > 1
    assert config.order == "strips"


def test_finalise_marks_uncovered_pixels() -> None:
    # GIVEN accumulators where one pixel was never covered
    sums = np.ones((2, 2, 2), np.float32)
    weights = np.array([[2, 0], [1, 1]], np.float32)
    # WHEN normalised
    probs, labels = finalise(sums, weights)
    # THEN that pixel is NaN with the no-label value, the rest are means
    assert np.isnan(probs[0, 1]).all() and labels[0, 1] == NO_LABEL
    assert probs[0, 0, 0] == pytest.approx(0.5)


def test_counts_do_not_saturate() -> None:
    # GIVEN 300 overlapping outputs on one pixel (a uint8 counter would wrap)
    config = PlanConfig(patch=300, stride=1, chunk=8, mpp=None)
    plan = make_plan((1, 300), 1.0, config, 1, 10**6)
    sink = CanvasSink(plan.out_shape, 1)
    merger = StreamingMerger(plan, sink, 10**6)
    merger.add(
        np.ones((plan.n_patches, 1, 300, 300), np.float32)[:, :, :1], np.arange(plan.n_patches)
    )
    merger.finish()
    # THEN the mean of ones is exactly one everywhere
    assert np.all(sink.probs == 1.0)


@settings(max_examples=50, deadline=None)
@given(
    st.integers(1, 5),
    st.lists(st.sampled_from([0.0, 0.25, 0.5, 1.0]), min_size=5 * 3 * 4, max_size=5 * 3 * 4),
)
def test_finalise_labels_are_argmax_with_first_maximum_on_ties(classes: int, values) -> None:
    # GIVEN sums with many ties between classes (values from a small set)
    sums = np.array(values, np.float32)[: classes * 12].reshape(classes, 3, 4)
    weights = np.ones((3, 4), np.float32)
    weights[0, 0] = 0
    # WHEN normalised
    _, labels = finalise(sums, weights)
    # THEN labels are numpy's argmax (first maximum) wherever covered
    expected = (sums / np.where(weights > 0, weights, 1)).argmax(axis=0)
    assert labels[0, 0] == NO_LABEL
    covered = weights > 0
    assert np.array_equal(labels[covered], expected[covered])
