"""Memory gates for the engine (run with ``pytest --memray -m memory``).

pytest-memray's ``limit_memory`` measures the heap high-water mark of the test
body only (numpy and torch native allocations included, fixtures excluded).
The streaming engine passes one fixed limit on slides whose areas differ by
16x, which shows the bound does not follow slide size; the dense engine on
the larger slide fails the same limit (checked in a subprocess), which shows
the gate bites.
"""

from __future__ import annotations

import pytest

from harness.plan import PlanConfig
from harness.segment import segment
from harness.slides import SyntheticSlide

LIMIT = "120 MB"
BUDGET = 24 * 10**6
CONFIG = PlanConfig(patch=256, stride=128, mpp=0.5, chunk=256)
SIZES = [pytest.param(1024, id="1k"), pytest.param(4096, id="4k-16x-area")]


@pytest.fixture(scope="module")
def warm(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Import and initialise torch, zarr and the slide code outside the measured body."""
    out = tmp_path_factory.mktemp("warm") / "w.zarr"
    segment(
        SyntheticSlide(512, 512), "passthrough", CONFIG, out, merge_budget=BUDGET, progress=False
    )


@pytest.mark.memory
@pytest.mark.limit_memory(LIMIT)
@pytest.mark.parametrize("size", SIZES)
def test_streaming_heap_peak_is_set_by_the_budget(warm, tmp_path, size) -> None:
    result = segment(
        SyntheticSlide(size, size), "passthrough", CONFIG, tmp_path / "o.zarr",
        merge_budget=BUDGET, progress=False,
    )  # fmt: skip
    assert result.peak_live_bytes <= BUDGET


GATE_BITES = f"""
import pytest
from harness.plan import PlanConfig
from harness.segment import segment
from harness.slides import SyntheticSlide

@pytest.mark.limit_memory({LIMIT!r})
def test_dense_on_the_larger_slide(tmp_path):
    segment(SyntheticSlide(4096, 4096), "passthrough", PlanConfig(patch=256, stride=128, mpp=0.5),
            tmp_path / "o.zarr", engine="dense", progress=False)
"""


@pytest.mark.memory
def test_the_gate_bites_on_the_dense_engine(pytester: pytest.Pytester) -> None:
    # GIVEN the same limit around the dense engine on the larger slide
    pytester.makepyfile(test_gate=GATE_BITES)
    # WHEN pytest runs it under memray in a fresh process
    result = pytester.runpytest_subprocess("--memray", "-p", "no:cacheprovider")
    # THEN the gate fails it
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*Test was limited to*"])
