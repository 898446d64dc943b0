"""``render``: legend, overlay on the recorded slide, class heatmap, one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
from _export_outputs import known_map, write_output
from PIL import Image

from harness.cli import main
from harness.render import label_overview, palette

SPEC = "synthetic:160x120,seed=5"


@pytest.fixture
def output(tmp_path):
    labels, probs = known_map(120, 160)
    return write_output(tmp_path / "m.zarr", labels, probs, source=SPEC), labels, probs


def _png(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "Traceback" not in err[0]
    return err[0]


def test_label_png_keeps_the_map_size_and_adds_a_legend(tmp_path, output) -> None:
    src, labels, _ = output
    with_legend, without = tmp_path / "l.png", tmp_path / "n.png"
    assert main(["render", str(src), "--png", str(with_legend)]) == 0
    assert main(["render", str(src), "--png", str(without), "--no-legend"]) == 0
    a, b = _png(with_legend), _png(without)
    # THEN both are the map at full size; without a legend, exactly the palette colours
    assert a.shape == b.shape == (120, 160, 3)
    np.testing.assert_array_equal(b, palette(["background", "stroma", "nuclei"])[labels])
    # AND the legend changes only its top-left box, which holds a swatch of each class
    changed = np.argwhere((a != b).any(axis=2))
    assert changed[:, 0].max() < 60 and changed[:, 1].max() < 100
    box = a[: changed[:, 0].max() + 1, : changed[:, 1].max() + 1].reshape(-1, 3)
    colours = {tuple(c) for c in box}
    for rgb in [(236, 236, 236), (232, 120, 170), (70, 40, 140), (0, 0, 0)]:
        assert rgb in colours


def test_overlay_blends_labels_over_the_recorded_slide(tmp_path, output) -> None:
    from harness.output.slide_source import read_output_grid
    from harness.slides import open_slide

    src, labels, _ = output
    png = tmp_path / "o.png"
    argv = ["render", str(src), "--png", str(png), "--overlay", "--no-legend", "--alpha", "0.5"]
    assert main(argv) == 0
    image = _png(png).astype(int)
    slide = read_output_grid(open_slide(SPEC), (0, 120, 0, 160), 0.5).astype(int)
    colour = palette(["background", "stroma", "nuclei"])[labels].astype(int)
    covered = labels != 255
    # uncovered pixels show the slide; covered ones the half-and-half blend
    np.testing.assert_array_equal(image[~covered], slide[~covered])
    assert np.abs(image[covered] - (slide[covered] + colour[covered]) / 2).max() <= 1


def test_overlay_without_a_recorded_source_is_one_error_line(tmp_path, capsys) -> None:
    labels, probs = known_map(32, 32)
    src = write_output(tmp_path / "m.zarr", labels, probs)
    assert main(["render", str(src), "--png", str(tmp_path / "o.png"), "--overlay"]) == 2
    assert "slide source" in _error_line(capsys)


def test_heatmap_draws_one_class_with_a_colour_bar(tmp_path, output) -> None:
    src, _, _ = output
    png = tmp_path / "h.png"
    assert main(["render", str(src), "--png", str(png), "--heatmap", "stroma"]) == 0
    image = _png(png)
    assert image.shape[1] > 160 + 100  # the map plus a colour bar beside it
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 50


def test_heatmap_is_refused_for_labels_only_and_unknown_classes(tmp_path, output, capsys) -> None:
    src, labels, _ = output
    png = str(tmp_path / "h.png")
    assert main(["render", str(src), "--png", png, "--heatmap", "tumour"]) == 2
    assert "unknown class" in _error_line(capsys)
    only = write_output(tmp_path / "l.zarr", labels)
    assert main(["render", str(only), "--png", png, "--heatmap", "stroma"]) == 2
    assert "labels only" in _error_line(capsys)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(["--max-side", "0"], "max-side", id="max-side-0"),
        pytest.param(["--max-side", "-5"], "max-side", id="max-side-negative"),
        pytest.param(["--png", "{tmp}/out.jpg"], ".png", id="not-png"),
        pytest.param(["--png", "{tmp}/no/such/dir/out.png"], "does not exist", id="missing-dir"),
    ],
)
def test_bad_render_arguments_are_one_error_line(tmp_path, output, capsys, args, message) -> None:
    src, _, _ = output
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    base = ["render", str(src), "--png", str(tmp_path / "ok.png")]
    assert main(base + args) == 2
    assert message in _error_line(capsys)


def test_max_side_bounds_the_overview(tmp_path, output) -> None:
    src, labels, _ = output
    image = label_overview(src, max_side=50)
    assert max(image.shape[:2]) <= 50
    np.testing.assert_array_equal(
        image, palette(["background", "stroma", "nuclei"])[labels[::4, ::4]]
    )
