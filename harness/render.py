"""Overview PNGs of a segmentation output, read band by band (bounded memory)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from harness.output import ATTR, NO_LABEL, open_output, output_array

if TYPE_CHECKING:
    from pathlib import Path

    from numpy.typing import NDArray

#: Colours for the classes of the built-in H&E model; other class names cycle TAB.
NAMED = {"background": (236, 236, 236), "stroma": (232, 120, 170), "nuclei": (70, 40, 140)}
TAB = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189)]
UNCOVERED = (0, 0, 0)


def palette(classes: list[str]) -> NDArray[np.uint8]:
    """RGB per label value (256 entries; 255, no label, is black)."""
    lut = np.zeros((256, 3), np.uint8)
    for k, name in enumerate(classes):
        lut[k] = NAMED.get(name, TAB[k % len(TAB)])
    lut[NO_LABEL] = UNCOVERED
    return lut


def label_overview(path: str | Path, max_side: int = 1024) -> NDArray[np.uint8]:
    """A ``(h, w, 3)`` colour overview of the label map, longest side <= ``max_side``."""
    group = open_output(path)
    labels = output_array(group, "labels")
    meta = group.attrs[ATTR]
    assert isinstance(meta, dict)
    h, w = labels.shape
    step = max(1, -(-max(h, w) // max_side))
    band = step * max(1, 4096 // step)  # rows per read: a multiple of step keeps the grid
    rows = [np.asarray(labels[y : y + band])[::step, ::step] for y in range(0, h, band)]
    lut = palette(list(meta["classes"]))
    image: NDArray[np.uint8] = lut[np.concatenate(rows)]
    return image


def save_png(image: NDArray[np.uint8], path: str | Path) -> None:
    """Write an RGB array as PNG."""
    from PIL import Image

    Image.fromarray(image).save(path)
