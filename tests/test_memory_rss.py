"""RSS gate: the whole process tree of a real streaming segmentation stays under a fixed ceiling.

pytest-memray's ``limit_memory`` sees only the test body's heap in this process;
DataLoader workers are separate (forked) processes it never sees. So this gate
runs ``wsi-harness segment`` in a fresh process with ``--workers 2`` and
measures the *summed RSS of the whole tree* with :func:`harness.measure.run_command`.
The ceiling is fixed and the slide area differs 16x between the two sizes:
passing at both is the evidence of a bound, and the companion test shows the
same ceiling catches an engine whose memory follows the slide.

The budget gate holds ``--budget`` to its word: what the run adds above its
baseline (RSS after imports and model load) stays under the budget itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from harness.config import RunConfig
from harness.measure import Measurement, run_command
from harness.measure.scaling import segment_argv, segment_command_available

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.memory

MiB = 2**20
#: Fixed ceiling for the summed RSS of the tree (parent + 2 workers), streaming, 128 MB budget.
#: Measured here: 650-680 MiB at 1024 and 4096 (about 250 MiB baseline per process, shared
#: pages counted in each); once, in a fresh clone, 810 MiB (baseline 317 MiB), hence the
#: margin. Before the glibc fix in harness/_malloc.py the streaming tree reached 1.6 GB at
#: 4096, and this gate caught it. The DESIGN target is < 1 GB whole-process.
CEILING_BYTES = 1024 * MiB
SMALL, LARGE = 1024, 4096  # 16x apart in area
OPTIONS = RunConfig(model="passthrough", budget=128 * 10**6, batch_size=16, workers=2)


def _segment(size: int, engine: str, tmp_path: Path, options: RunConfig = OPTIONS) -> Measurement:
    pytest.importorskip("harness.segment")
    if not segment_command_available():
        pytest.skip("wsi-harness segment is not registered yet")
    argv = segment_argv(f"synthetic:{size}x{size}", tmp_path / "out.zarr", options, engine)
    return run_command(argv, timeout_s=300).check()


@pytest.mark.parametrize("size", [pytest.param(SMALL, id="1k"), pytest.param(LARGE, id="4k")])
def test_streaming_tree_peak_under_fixed_ceiling(size: int, tmp_path: Path) -> None:
    # GIVEN a streaming segmentation with two DataLoader worker processes
    # WHEN its whole process tree is sampled
    m = _segment(size, "streaming", tmp_path)
    # THEN the workers were really there and the tree's peak stays under the same ceiling
    assert m.timeline.max_processes >= 3
    assert m.peak_rss_bytes > m.ru_maxrss_bytes  # the sum over the tree exceeds any one process
    assert m.peak_rss_bytes <= CEILING_BYTES, f"{m.peak_rss_bytes / MiB:.0f} MiB"


def test_gate_bites_on_dense_engine(tmp_path: Path) -> None:
    # GIVEN the dense reference, whose canvas grows with the slide (16 B per output pixel),
    # on a slide 4x the larger one's area: a 1.07 GB canvas
    m = _segment(8192, "dense", tmp_path)
    # THEN the same ceiling rejects it: the gate can fail
    assert m.peak_rss_bytes > CEILING_BYTES, f"{m.peak_rss_bytes / MiB:.0f} MiB"


def test_run_stays_within_its_budget(tmp_path: Path) -> None:
    # GIVEN tiny-cnn at 16384² with a 128 MB budget, one process (the heap is the run's)
    budget = 128 * 10**6
    options = RunConfig(model="tiny-cnn", budget=budget, workers=0, probabilities=False)
    # WHEN its peak RSS is measured against the baseline it records
    m = _segment(16384, "streaming", tmp_path, options)
    # THEN the run added no more than its budget. Before the heap trimmer took the budget
    # as a limit this run added 143-148 MB (the trimmer let the heap keep its working set's
    # range plus the slack, which the budget does not count; at 8192² it overshot in only
    # four of six runs, hence this size); with the limit 108-115 MB.
    added = m.peak_above_baseline_bytes
    assert added is not None, "segment wrote no baseline"
    assert added <= budget, f"{added / 1e6:.1f} MB above the baseline, budget {budget / 1e6:.0f} MB"
