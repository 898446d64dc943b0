"""The merger alone on pre-computed patch outputs: merge cost without model or reads.

A pool of seeded probability batches stands in for the model; chunks go to a
:class:`~benchmarks.common.NullSink`, so the figure is accumulate + normalise
(+ spill for ``raster-8MB``), not zarr writes.
"""

from __future__ import annotations

import numpy as np

from benchmarks.common import (
    DEFAULT_BUDGET,
    SLIDE_MPP,
    VARIANTS,
    NullSink,
    OneShot,
    dense_fits,
    grid,
    parse_budget,
    plan_config,
    require,
)

BATCH = 16
POOL = 8  # distinct batches, cycled: values do not change the merge cost
CHANNELS = 3


class Merge(OneShot):
    """``StreamingMerger`` (per budget and order) vs ``DenseMerger`` over a whole plan."""

    params = (
        grid(2048, slow=(8192,)),
        grid("streaming", "dense", "streaming-8MB", "raster-8MB"),
    )
    param_names = ("size", "variant")
    timeout = 600

    def setup(self, size: int, variant: str) -> None:
        """Plan the slide and draw the pool of patch outputs."""
        engine, budget, order = VARIANTS[variant]
        if engine == "dense" and not dense_fits(size):
            raise NotImplementedError(f"dense canvas of a {size} slide does not fit")
        make_plan = require("harness.plan", "make_plan")
        seeded = require("harness.models", "seeded_probabilities")
        config = plan_config(order=order)
        self.budget = parse_budget(budget or DEFAULT_BUDGET)
        self.engine = engine
        self.plan = make_plan(
            (size, size), SLIDE_MPP, config, CHANNELS, self.budget, None, strips=engine != "dense"
        )
        oh, ow = config.out_hw
        self.pool = [seeded((BATCH, CHANNELS, oh, ow), seed) for seed in range(POOL)]

    def _merger(self) -> object:
        merge = require("harness.merge")
        if self.engine == "dense":
            return merge.DenseMerger(self.plan, NullSink())
        return merge.StreamingMerger(self.plan, NullSink(), self.budget)

    def _run(self) -> None:
        merger = self._merger()
        n = self.plan.n_patches
        try:
            for b, start in enumerate(range(0, n, BATCH)):
                indices = np.arange(start, min(start + BATCH, n), dtype=np.int64)
                merger.add(self.pool[b % POOL][: len(indices)], indices)  # type: ignore[attr-defined]
            merger.finish()  # type: ignore[attr-defined]
        finally:
            merger.close()  # type: ignore[attr-defined]

    def time_merge(self, size: int, variant: str) -> None:
        """Add every patch output in plan order, then finish."""
        self._run()

    def peakmem_merge(self, size: int, variant: str) -> None:
        """Peak RSS over the merge."""
        self._run()

    def peakmem_reference(self, size: int, variant: str) -> None:
        """Peak RSS of setup alone (plan and the pool of outputs)."""
