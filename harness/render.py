"""Overview PNGs of a segmentation output: label map, overlay on the slide, class heatmap.

Every view samples the output on a regular grid (every ``step``-th pixel,
``step`` chosen so the longer side fits ``max_side``) through zarr's strided
reads, which decode one chunk at a time: memory is the small image, never
the map. The overlay re-reads the slide from the source the output records
(:mod:`harness.output.slide_source`) at the same grid.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from harness.errors import ConfigError
from harness.output import LABELS, NO_LABEL, PROBABILITIES, open_output, output_array, output_meta
from harness.output.base import OutputError

if TYPE_CHECKING:
    from numpy.typing import NDArray

#: Colours for the classes of the built-in H&E model; other class names cycle TAB.
NAMED = {"background": (236, 236, 236), "stroma": (232, 120, 170), "nuclei": (70, 40, 140)}
TAB = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189)]
UNCOVERED = (0, 0, 0)
DEFAULT_ALPHA = 0.45
"""Opacity of the label colours over the slide in an overlay."""


def palette(classes: list[str]) -> NDArray[np.uint8]:
    """RGB per label value (256 entries; 255, no label, is black)."""
    lut = np.zeros((256, 3), np.uint8)
    for k, name in enumerate(classes):
        lut[k] = NAMED.get(name, TAB[k % len(TAB)])
    lut[NO_LABEL] = UNCOVERED
    return lut


@dataclass(frozen=True)
class Sampled:
    """An output sampled every ``step`` pixels: its labels and what they mean."""

    labels: NDArray[np.uint8]
    step: int
    classes: tuple[str, ...]
    meta: dict[str, Any]


def check_png_path(path: str | Path) -> Path:
    """Refuse, in one line, a PNG path that cannot be written as asked."""
    p = Path(path)
    if p.suffix.lower() != ".png":
        raise ConfigError(f"--png must name a .png file, got {str(p)!r}")
    if not p.parent.is_dir():
        raise ConfigError(f"folder {p.parent} for --png does not exist")
    return p


def _step(shape: tuple[int, ...], max_side: int) -> int:
    if max_side < 1:
        raise ConfigError(f"max side must be >= 1 pixel, got {max_side}")
    return max(1, -(-max(shape[0], shape[1]) // max_side))


def sample_labels(path: str | Path, max_side: int = 1024) -> Sampled:
    """Every ``step``-th label of the output at ``path`` (longer side <= ``max_side``)."""
    group = open_output(path)
    labels = output_array(group, LABELS)
    step = _step(labels.shape, max_side)
    meta = output_meta(group)
    lab = np.asarray(labels[::step, ::step])
    return Sampled(lab, step, tuple(meta["classes"]), meta)


def label_overview(path: str | Path, max_side: int = 1024) -> NDArray[np.uint8]:
    """A ``(h, w, 3)`` colour overview of the label map, longest side <= ``max_side``."""
    s = sample_labels(path, max_side)
    image: NDArray[np.uint8] = palette(list(s.classes))[s.labels]
    return image


@dataclass(frozen=True)
class View:
    """An RGB image of an output and the legend rows that explain its colours."""

    image: NDArray[np.uint8]
    legend: list[tuple[str, Any]]


def label_view(path: str | Path, max_side: int = 1024) -> View:
    """The colour label overview and its legend (classes, and black for uncovered)."""
    s = sample_labels(path, max_side)
    return View(palette(list(s.classes))[s.labels], legend_entries(s.classes))


def overlay_view(path: str | Path, max_side: int = 1024, alpha: float = DEFAULT_ALPHA) -> View:
    """Label colours blended (opacity ``alpha``) over the slide the output was made from.

    Uncovered pixels show the slide alone. The slide is re-opened from the
    source the output records; an output that records none, or whose slide
    no longer opens or has changed, is refused in one line.
    """
    from harness.output.slide_source import read_output_grid, recorded_slide

    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"alpha must be in [0, 1], got {alpha}")
    s = sample_labels(path, max_side)
    slide = recorded_slide(s.meta)
    h, w = s.labels.shape
    box = (0, h * s.step, 0, w * s.step)
    rgb = read_output_grid(slide, box, float(s.meta["mpp"]), s.step)[:h, :w].astype(np.float32)
    colour = palette(list(s.classes))[s.labels].astype(np.float32)
    a = np.where(s.labels == NO_LABEL, 0.0, alpha).astype(np.float32)[..., None]
    blended = np.rint(rgb * (1 - a) + colour * a).astype(np.uint8)
    return View(blended, legend_entries(s.classes, uncovered=False))


def add_legend(image: NDArray[np.uint8], entries: list[tuple[str, Any]]) -> NDArray[np.uint8]:
    """Draw a legend box (colour swatch + name per entry) in the image's top-left corner.

    Drawn inside the image so the PNG keeps the map's own size; the font
    scales with the image (about 1/40 of its shorter side, at least 7 px).
    """
    from PIL import Image, ImageDraw, ImageFont

    canvas = Image.fromarray(image).convert("RGBA")
    size = max(7, min(canvas.size) // 40)
    font = ImageFont.load_default(size=size)
    pad, line = max(2, size // 3), size + max(2, size // 3)
    width = max(int(font.getlength(name)) for name, _ in entries) + size + 3 * pad
    box = Image.new("RGBA", canvas.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(box)
    draw.rectangle((0, 0, width, pad + line * len(entries)), fill=(255, 255, 255, 210))
    for k, (name, rgb) in enumerate(entries):
        y = pad + k * line
        draw.rectangle((pad, y, pad + size, y + size), fill=(*map(int, rgb), 255), outline="black")
        draw.text((2 * pad + size, y), name, fill="black", font=font)
    out: NDArray[np.uint8] = np.asarray(Image.alpha_composite(canvas, box).convert("RGB"))
    return out


def legend_entries(classes: tuple[str, ...], uncovered: bool = True) -> list[tuple[str, Any]]:
    """Legend rows for ``classes`` (and, optionally, label 255: uncovered)."""
    lut = palette(list(classes))
    rows = [(name, tuple(lut[k])) for k, name in enumerate(classes)]
    return [*rows, ("uncovered", UNCOVERED)] if uncovered else rows


def heatmap(path: str | Path, name: str, png: str | Path, max_side: int = 1024) -> Path:
    """Write class ``name``'s probability, sampled, as a PNG with a colour bar."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    group = open_output(path)
    meta = output_meta(group)
    classes = list(meta["classes"])
    if PROBABILITIES not in group:
        raise ConfigError(f"{path} has labels only (no probabilities): no heatmap to draw")
    if name not in classes:
        raise ConfigError(f"unknown class {name!r} for --heatmap; classes are {classes}")
    probs = output_array(group, PROBABILITIES)
    step = _step(probs.shape, max_side)
    data = np.asarray(probs[::step, ::step, classes.index(name)], dtype=np.float32)
    h, w = data.shape
    dpi = 100
    fig = Figure(figsize=((w + 170) / dpi, (h + 60) / dpi), dpi=dpi)
    ax = fig.add_axes((20 / (w + 170), 30 / (h + 60), w / (w + 170), h / (h + 60)))
    ax.set_axis_off()
    cmap = colormaps["magma"].with_extremes(bad=(0.8, 0.8, 0.8))  # NaN: uncovered
    shown = ax.imshow(np.ma.masked_invalid(data), cmap=cmap, vmin=0.0, vmax=1.0,
                      interpolation="nearest")  # fmt: skip
    ax.set_title(f"P({name})  (grey: uncovered)", fontsize=9)
    cax = fig.add_axes(((w + 40) / (w + 170), 30 / (h + 60), 18 / (w + 170), h / (h + 60)))
    fig.colorbar(shown, cax=cax, label=f"probability of {name}")
    return _save(lambda p: fig.savefig(p, dpi=dpi), png)


def save_png(image: NDArray[np.uint8], path: str | Path) -> Path:
    """Write an RGB array as PNG (one-line errors for a bad path)."""
    from PIL import Image

    return _save(lambda p: Image.fromarray(image).save(p), path)


def _save(write: Any, path: str | Path) -> Path:
    p = check_png_path(path)
    try:
        write(p)
    except OSError as exc:
        raise OutputError(f"cannot write {p}: {exc.strerror or exc}") from exc
    return p
