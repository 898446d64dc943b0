"""Hypothesis strategies for plan geometries and budgets (shrink toward small cases)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from hypothesis import strategies as st

from harness.plan import PlanConfig, min_budget

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray


@dataclass(frozen=True)
class Geometry:
    """A drawn slide shape, plan config, channel count, budget and optional mask."""

    shape: tuple[int, int]
    config: PlanConfig
    channels: int
    budget: int
    mask: NDArray[np.bool_] | None


@st.composite
def plan_configs(draw: st.DrawFn) -> PlanConfig:
    """Patch / output / stride / chunk shapes, blend and order."""
    out = (draw(st.integers(1, 48)), draw(st.integers(1, 48)))
    margin = draw(st.integers(0, 8))
    stride = (draw(st.integers(1, out[0])), draw(st.integers(1, out[1])))
    chunk = (draw(st.integers(4, 64)), draw(st.integers(4, 64)))
    return PlanConfig(
        patch=(out[0] + 2 * margin, out[1] + 2 * margin),
        output_patch=out,
        stride=stride,
        chunk=chunk,
        mpp=None,
        blend=draw(st.sampled_from(("mean", "gaussian"))),
        order=draw(st.sampled_from(("strips", "raster"))),
    )


@st.composite
def geometries(draw: st.DrawFn) -> Geometry:
    """Slide shapes 1..200 px a side with budgets from 'spills constantly' to 'all fits'."""
    import numpy as np

    shape = (draw(st.integers(1, 200)), draw(st.integers(1, 200)))
    config = draw(plan_configs())
    channels = draw(st.integers(1, 4))
    floor = min_budget(config, channels)
    budget = floor + draw(st.integers(0, 64)) * floor // 8
    mask = None
    if draw(st.booleans()):
        mh, mw = max(1, shape[0] // 8), max(1, shape[1] // 8)
        seed = draw(st.integers(0, 2**16))
        mask = np.random.default_rng(seed).random((mh, mw)) < draw(st.floats(0.1, 0.9))
        mask.flat[0] = True
    return Geometry(shape, config, channels, budget, mask)
