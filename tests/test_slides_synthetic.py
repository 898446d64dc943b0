"""SyntheticSlide: determinism, overlap agreement, padding, labels and speed-independent facts."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.errors import ConfigError
from harness.slides import SyntheticSlide, open_slide, thumbnail
from harness.slides.base import PAD_VALUE, Slide
from harness.slides.synthetic import INK

SHAPE = (1536, 2048)


@pytest.fixture(scope="module")
def slide() -> SyntheticSlide:
    return SyntheticSlide(*SHAPE, seed=7, artefacts=True)


def test_meets_the_slide_protocol(slide: SyntheticSlide) -> None:
    assert isinstance(slide, Slide)
    assert slide.shape == SHAPE and slide.mpp == 0.5 and slide.downsamples == (1.0,)


def test_same_parameters_give_the_same_pixels_and_seeds_differ() -> None:
    box = (300, 200, 512, 384)
    a, b = SyntheticSlide(*SHAPE, seed=1), SyntheticSlide(*SHAPE, seed=1)
    c = SyntheticSlide(*SHAPE, seed=2)
    assert np.array_equal(a.read(box), b.read(box))
    assert not np.array_equal(a.read(box), c.read(box))


boxes = st.tuples(
    st.integers(-200, SHAPE[1]),
    st.integers(-200, SHAPE[0]),
    st.integers(1, 300),
    st.integers(1, 300),
)


@settings(deadline=None, max_examples=40)
@given(first=boxes, dx=st.integers(-150, 150), dy=st.integers(-150, 150))
def test_overlapping_reads_agree_bitwise(slide: SyntheticSlide, first, dx, dy) -> None:  # type: ignore[no-untyped-def]
    # GIVEN two boxes, the second shifted by (dx, dy)
    x, y, w, h = first
    second = (x + dx, y + dy, w, h)
    # WHEN both are read (image and labels) at the slide's own resolution
    a, b = slide.read(first), slide.read(second)
    la, lb = slide.labels(first), slide.labels(second)
    # THEN they agree on the overlap
    x0, x1 = max(x, x + dx), min(x + w, x + dx + w)
    y0, y1 = max(y, y + dy), min(y + h, y + dy + h)
    if x0 < x1 and y0 < y1:
        sa = np.s_[y0 - y : y1 - y, x0 - x : x1 - x]
        sb = np.s_[y0 - y - dy : y1 - y - dy, x0 - x - dx : x1 - x - dx]
        assert np.array_equal(a[sa], b[sb])
        assert np.array_equal(la[sa], lb[sb])


@settings(deadline=None, max_examples=20)
@given(x=st.integers(0, 800), y=st.integers(0, 600), k=st.integers(1, 60))
def test_coarse_reads_agree_where_sample_grids_coincide(slide: SyntheticSlide, x, y, k) -> None:  # type: ignore[no-untyped-def]
    # GIVEN two reads at 2x the slide's mpp whose origins differ by 2k level-0 pixels
    a = slide.read((x, y, 512, 512), mpp=1.0)
    b = slide.read((x + 2 * k, y, 512, 512), mpp=1.0)
    # THEN output column j + k of the first equals column j of the second
    assert np.array_equal(a[:, k:], b[:, : 256 - k])


def test_block_and_sampled_nuclei_paths_agree(slide: SyntheticSlide) -> None:
    # GIVEN the fast cell-block path used at full resolution and the general gather path
    u = np.arange(333, 333 + 300, dtype=np.float64)
    v = np.arange(517, 517 + 200, dtype=np.float64)
    # THEN both draw the same nuclei
    fast = slide._nuclei_block(333, 517, 300, 200)
    general = slide._nuclei_sampled(u, v)
    assert fast.any()
    assert np.array_equal(fast, general)


@pytest.mark.parametrize(
    "box",
    [
        pytest.param((-100, -50, 300, 200), id="top-left-corner"),
        pytest.param((SHAPE[1] - 64, 100, 256, 256), id="right-edge"),
        pytest.param((SHAPE[1] + 10, SHAPE[0] + 10, 64, 32), id="fully-outside"),
    ],
)
def test_outside_the_slide_is_white_and_background(slide: SyntheticSlide, box) -> None:  # type: ignore[no-untyped-def]
    x, y, w, h = box
    image, labels = slide.read(box), slide.labels(box)
    assert image.shape == (h, w, 3) and labels.shape == (h, w)
    cols = (np.arange(w) + x < 0) | (np.arange(w) + x >= SHAPE[1])
    rows = (np.arange(h) + y < 0) | (np.arange(h) + y >= SHAPE[0])
    outside = rows[:, None] | cols[None, :]
    assert outside.any()
    assert (image[outside] == PAD_VALUE).all()
    assert (labels[outside] == 0).all()


@pytest.mark.parametrize(
    ("mpp", "expected"),
    [
        pytest.param(None, (300, 400), id="native"),
        pytest.param(1.0, (150, 200), id="half"),
        pytest.param(0.25, (600, 800), id="double"),
        pytest.param(0.7, (214, 286), id="fractional"),
    ],
)
def test_read_size_follows_the_contract(slide: SyntheticSlide, mpp, expected) -> None:  # type: ignore[no-untyped-def]
    assert slide.read((100, 100, 400, 300), mpp).shape == (*expected, 3)
    assert slide.labels((100, 100, 400, 300), mpp).shape == expected


def test_hne_colour_model_agrees_with_ground_truth() -> None:
    # GIVEN a slide without artefacts and the nearest-palette-colour model
    import torch

    from harness.models import build_model

    slide = SyntheticSlide(2048, 2048, seed=3, artefacts=False)
    spec = build_model("hne-colour")
    box = (0, 0, 2048, 2048)
    image, truth = slide.read(box), slide.labels(box)
    # WHEN it classifies every pixel
    with torch.no_grad():
        probs = spec.module(spec.preprocess(torch.from_numpy(image[None])))
    predicted = probs[0].argmax(dim=0).numpy()
    # THEN it agrees with the ground truth on nearly every pixel of every class
    assert (predicted == truth).mean() > 0.99
    for cls in (0, 1, 2):
        assert (predicted[truth == cls] == cls).mean() > 0.97, cls


@pytest.mark.parametrize("fraction", [pytest.param(0.2, id="0.2"), pytest.param(0.5, id="0.5")])
def test_tissue_fraction_is_roughly_honoured(fraction: float) -> None:
    slide = SyntheticSlide(20000, 30000, seed=5, tissue_fraction=fraction)
    mask = slide.tissue_mask(mpp=16.0)
    assert mask.shape == (625, 938)
    assert abs(mask.mean() - fraction) < 0.08


def test_tissue_mask_matches_labels_at_the_same_resolution() -> None:
    slide = SyntheticSlide(4096, 4096, seed=2)
    mask = slide.tissue_mask(mpp=8.0)
    labels = slide.labels((0, 0, 4096, 4096), mpp=8.0)
    assert np.array_equal(mask, labels > 0)


def test_artefacts_draw_ink_and_blur_changes_only_its_rectangle() -> None:
    # GIVEN the same slide with and without artefacts
    plain = SyntheticSlide(2048, 2048, seed=4, artefacts=False)
    marked = SyntheticSlide(2048, 2048, seed=4, artefacts=("pen",))
    blurred = SyntheticSlide(2048, 2048, seed=4, artefacts=("blur",))
    box = (0, 0, 2048, 2048)
    # THEN the pen leaves ink labels, and the blur only alters pixels inside its rectangle
    assert (marked.labels(box) == INK).sum() > 1000
    assert (plain.labels(box) != INK).all()
    diff = np.any(plain.read(box) != blurred.read(box), axis=2)
    b = blurred._art.blur
    assert b is not None and diff.any()
    ys, xs = np.nonzero(diff)
    assert ys.min() >= b.y0 - 1 and ys.max() <= b.y1 and xs.min() >= b.x0 - 1 and xs.max() <= b.x1


def test_pickles_to_an_equal_slide(slide: SyntheticSlide) -> None:
    copy = pickle.loads(pickle.dumps(slide))
    box = (500, 400, 256, 256)
    assert np.array_equal(copy.read(box), slide.read(box))
    assert len(pickle.dumps(slide)) < 100_000


def test_a_huge_slide_costs_nothing_to_describe() -> None:
    slide = SyntheticSlide(200_000, 200_000)
    assert slide.read((100_000, 100_000, 64, 64)).shape == (64, 64, 3)
    assert thumbnail(slide, 256).shape == (256, 256, 3)


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"height": 0, "width": 10}, id="empty"),
        pytest.param({"height": 10, "width": 10, "mpp": 0}, id="mpp"),
        pytest.param({"height": 10, "width": 10, "tissue_fraction": 1.5}, id="fraction"),
        pytest.param({"height": 10, "width": 10, "artefacts": ("smudge",)}, id="artefact"),
    ],
)
def test_bad_parameters_are_config_errors(kwargs) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError):
        SyntheticSlide(**kwargs)


@pytest.mark.parametrize(
    ("spec", "shape", "seed"),
    [
        pytest.param("synthetic:1024", (1024, 1024), 0, id="square"),
        pytest.param(
            "synthetic:2048x1024,seed=3,tissue=0.5,mpp=0.25,artefacts=0", (1024, 2048), 3, id="full"
        ),
        pytest.param("synthetic:64x32,artefacts=pen+blur", (32, 64), 0, id="named-artefacts"),
    ],
)
def test_open_slide_parses_synthetic_specs(spec: str, shape, seed: int) -> None:  # type: ignore[no-untyped-def]
    slide = open_slide(spec)
    assert isinstance(slide, SyntheticSlide)
    assert slide.shape == shape and slide.seed == seed


@pytest.mark.parametrize(
    "spec",
    [
        pytest.param("synthetic:", id="no-size"),
        pytest.param("synthetic:12x", id="half-size"),
        pytest.param("synthetic:64,colour=red", id="unknown-key"),
        pytest.param("synthetic:64,seed=one", id="bad-int"),
        pytest.param("synthetic:64,artefacts=smudge", id="bad-artefact"),
        pytest.param("synthetic:64,tissue", id="no-value"),
    ],
)
def test_bad_synthetic_specs_are_config_errors(spec: str) -> None:
    with pytest.raises(ConfigError, match=r"synthetic|artefact"):
        open_slide(spec)
