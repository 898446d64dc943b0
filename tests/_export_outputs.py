"""Small complete outputs for the export and render tests, written in the documented layout.

Real zarr v3 groups with the arrays and ``attrs["wsi_harness"]`` record the
README describes, so a test can give an exporter an exactly known map (odd
sizes, uncovered areas, NaN probabilities) without running a model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import zarr

if TYPE_CHECKING:
    from pathlib import Path

CLASSES = ("background", "stroma", "nuclei")


def write_output(
    path: Path,
    labels: np.ndarray,
    probs: np.ndarray | None = None,
    *,
    chunk: int = 16,
    mpp: float = 0.5,
    source: str | None = None,
    complete: bool = True,
    classes: tuple[str, ...] = CLASSES,
) -> Path:
    """Write ``labels`` (H, W) and optional ``probs`` (H, W, C) as a wsi-harness output."""
    group = zarr.open_group(path, mode="w-", zarr_format=3)
    h, w = labels.shape
    if probs is not None:
        arr = group.create_array(
            "probabilities", shape=probs.shape, chunks=(chunk, chunk, probs.shape[2]),
            dtype=probs.dtype, fill_value=float("nan"),
        )  # fmt: skip
        arr[:] = probs
    lab = group.create_array(
        "labels", shape=(h, w), chunks=(chunk, chunk), dtype="uint8", fill_value=255
    )
    lab[:] = labels
    slide = {"shape": [h, w], "mpp": mpp, "type": "SyntheticSlide"}
    if source is not None:
        slide["source"] = source
    group.attrs["wsi_harness"] = {
        "mpp": mpp, "classes": list(classes), "model": "test-map", "engine": "streaming",
        "plan": {"chunk": [chunk, chunk]}, "slide": slide, "version": "0.1.0",
        "complete": complete,
    }  # fmt: skip
    return path


def known_map(h: int, w: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random labels (0-2, with an uncovered 255 corner) and probabilities NaN exactly there."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, (h, w), dtype=np.uint8)
    labels[: h // 3, : w // 2] = 255
    probs = rng.random((h, w, 3), dtype=np.float32)
    probs[labels == 255] = np.nan
    return labels, probs
