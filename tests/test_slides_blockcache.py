"""Read-once synthetic reads: block-cached reads equal direct reads, bitwise, and stay bounded."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.errors import SlideError
from harness.plan import PlanConfig, make_plan
from harness.slides import SyntheticSlide
from harness.slides._blockcache import BLOCK_HW, BlockCache
from harness.slides.array import ArraySlide
from harness.slides.base import CachedSlide, read_into

SHAPE = (2000, 2600)


@pytest.fixture(scope="module")
def direct() -> SyntheticSlide:
    return SyntheticSlide(*SHAPE, seed=5, artefacts=True)


@pytest.fixture
def cached() -> SyntheticSlide:
    slide = SyntheticSlide(*SHAPE, seed=5, artefacts=True)
    slide.resize_cache(64 << 20)
    return slide


def test_synthetic_slide_is_a_cached_slide_whose_cache_starts_off() -> None:
    slide = SyntheticSlide(512, 512)
    assert isinstance(slide, CachedSlide)
    assert slide.cache.max_bytes == 0
    slide.read((0, 0, 256, 256))
    assert slide.cache.tiles.misses == 0  # off: nothing went through the cache


@settings(deadline=None, max_examples=60)
@given(
    step=st.sampled_from([1, 1, 2, 4]),
    x=st.integers(-700, SHAPE[1] + 100),
    y=st.integers(-700, SHAPE[0] + 100),
    w=st.integers(1, 900),
    h=st.integers(1, 700),
)
def test_aligned_reads_from_blocks_equal_direct_reads(
    direct: SyntheticSlide, step: int, x: int, y: int, w: int, h: int
) -> None:
    # GIVEN a read whose samples lie on the block lattice (origin a multiple of the step)
    slide = SyntheticSlide(*SHAPE, seed=5, artefacts=True)
    slide.resize_cache(64 << 20)
    box = (x // step * step, y // step * step, w * step, h * step)
    mpp = 0.5 * step
    # WHEN it is cut from cached blocks and rendered directly
    cut, plain = slide.read(box, mpp), direct.read(box, mpp)
    # THEN the bytes are the same, and the cut really came from blocks
    assert slide.cache.tiles.misses > 0
    assert np.array_equal(cut, plain)


@pytest.mark.parametrize(
    ("box", "mpp"),
    [
        pytest.param((101, 40, 300, 200), 1.0, id="odd-origin-at-step-2"),
        pytest.param((100, 40, 300, 200), 0.7, id="fractional-step"),
        pytest.param((100, 40, 300, 200), 0.25, id="upsampling"),
    ],
)
def test_reads_off_the_lattice_are_direct(
    cached: SyntheticSlide, direct: SyntheticSlide, box: tuple[int, int, int, int], mpp: float
) -> None:
    # GIVEN reads whose samples are not block samples
    # WHEN read with the cache on
    out = cached.read(box, mpp)
    # THEN the cache was bypassed and the pixels are the direct ones
    assert cached.cache.tiles.misses == 0 and cached.cache.tiles.hits == 0
    assert np.array_equal(out, direct.read(box, mpp))


@pytest.mark.parametrize(
    ("box", "mpp"),
    [
        pytest.param((512, 256, 256, 256), 0.5, id="aligned-within-four-blocks"),
        pytest.param((-100, 1900, 256, 256), 0.5, id="over-the-corner-padded"),
        pytest.param((200, 100, 512, 512), 1.0, id="step-2"),
        pytest.param((101, 40, 256, 256), 0.7, id="off-the-lattice-direct"),
    ],
)
def test_read_into_a_slot_equals_read(
    cached: SyntheticSlide, direct: SyntheticSlide, box: tuple[int, int, int, int], mpp: float
) -> None:
    # GIVEN a slot of a batch (a view into a bigger array, as the loader's ring is)
    expect = direct.read(box, mpp)
    ring = np.zeros((2, *expect.shape), dtype=np.uint8)
    # WHEN the read is written into it, from blocks where it can be
    read_into(cached, box, mpp, ring[1])
    # THEN the slot holds the read's bytes and the other slot is untouched
    assert np.array_equal(ring[1], expect)
    assert not ring[0].any()


def test_read_into_a_slot_of_another_shape_is_one_slide_error(cached: SyntheticSlide) -> None:
    # GIVEN a slot one row short of the read (numpy would broadcast a 1-row read into it)
    slot = np.zeros((255, 256, 3), dtype=np.uint8)
    # WHEN / THEN reading into it names the read and both shapes, for cached and plain slides
    with pytest.raises(SlideError, match=r"gave \(256, 256, 3\), expected \(255, 256, 3\)"):
        read_into(cached, (0, 0, 256, 256), 0.5, slot)
    plain = ArraySlide(np.zeros((300, 300, 3), dtype=np.uint8), mpp=0.5)
    with pytest.raises(SlideError, match="expected"):
        read_into(plain, (0, 0, 1, 256), 0.5, np.zeros((256, 256, 3), dtype=np.uint8))


def test_a_window_agrees_with_the_blocks_covering_it() -> None:
    # GIVEN a window whose direct read once disagreed with its blocks in one pixel: the
    # holes field's last bit differed (BLAS picks kernels by matrix shape), which flipped
    # a threshold decision; harness.slides._decide now takes such decisions exactly
    slide = SyntheticSlide(3000, 4000, seed=3)
    x0, y0, w, h = 1377, 1611, 641, 515
    whole = slide.read((x0, y0, w, h))
    # THEN every block of the lattice, read whole, agrees with it where they overlap
    bh, bw = BLOCK_HW
    for by in range(y0 // bh, (y0 + h - 1) // bh + 1):
        for bx in range(x0 // bw, (x0 + w - 1) // bw + 1):
            block = slide.read((bx * bw, by * bh, bw, bh))
            ys, ye = max(y0, by * bh), min(y0 + h, (by + 1) * bh)
            xs, xe = max(x0, bx * bw), min(x0 + w, (bx + 1) * bw)
            piece = block[ys - by * bh : ye - by * bh, xs - bx * bw : xe - bx * bw]
            assert np.array_equal(whole[ys - y0 : ye - y0, xs - x0 : xe - x0], piece)


def test_a_plan_sweep_within_cache_need_makes_each_block_once() -> None:
    # GIVEN a slide whose cache holds exactly what the plan's read band needs
    slide = SyntheticSlide(1500, 3000, seed=2)
    plan = make_plan(slide.shape, slide.mpp, PlanConfig(), 3, 2**40, strips=False)
    need = slide.cache_need(plan.read_band())
    slide.resize_cache(need)
    # WHEN every patch is read in plan order
    for i in range(plan.n_patches):
        slide.read(plan.input_box(i), plan.config.mpp)
    # THEN each block was made once, and the cache never held more than its capacity
    bh, bw = BLOCK_HW
    first, last = plan.input_box(0), plan.input_box(plan.n_patches - 1)
    rows = range(first[1] // bh, (last[1] + last[3] - 1) // bh + 1)
    cols = range(first[0] // bw, (last[0] + last[2] - 1) // bw + 1)
    assert slide.cache.tiles.misses == len(rows) * len(cols)
    assert slide.cache.tiles.nbytes <= need


def test_resize_evicts_and_respects_the_limit() -> None:
    slide = SyntheticSlide(1024, 1024, cache_bytes=1 << 20)
    slide.resize_cache(10 << 20)
    assert slide.cache.max_bytes == 1 << 20  # at most the limit it was built with
    slide.read((0, 0, 1024, 512))
    assert 0 < slide.cache.tiles.nbytes <= 1 << 20
    slide.resize_cache(0)
    assert slide.cache.tiles.nbytes == 0


def test_pickling_keeps_the_capacity_not_the_blocks(cached: SyntheticSlide) -> None:
    cached.read((0, 0, 600, 300))
    copy = pickle.loads(pickle.dumps(cached))
    assert copy.cache.max_bytes == cached.cache.max_bytes
    assert copy.cache.tiles.nbytes == 0
    assert np.array_equal(copy.read((0, 0, 600, 300)), cached.read((0, 0, 600, 300)))


def test_block_cache_need_counts_whole_blocks() -> None:
    cache = BlockCache(0.5, limit=1 << 40)
    bh, bw = BLOCK_HW
    assert cache.need((bh, bw)) == 2 * 2 * bh * bw * 3
    assert cache.need((384, 16640)) == (2 + 1) * (33 + 1) * bh * bw * 3
