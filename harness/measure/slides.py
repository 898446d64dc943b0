"""Slides for measurement studies: synthetic pyramidal TIFFs written once, and their size.

``wsi-harness versus`` and ``wsi-harness scaling --engine NAME`` give engines that read only
files (:attr:`harness.engines.Engine.needs_file`) the same JPEG BigTIFF per size, written by
``wsi-harness synth`` in its own process before any measured run.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from harness.errors import ConfigError

if TYPE_CHECKING:
    from pathlib import Path


def synth_argv(size: int, path: Path, mpp: float) -> list[str]:
    """Command line writing a ``size`` x ``size`` synthetic JPEG pyramidal TIFF."""
    argv = [sys.executable, "-m", "harness", "synth", str(path), "--size", str(size)]
    return [*argv, "--mpp", str(mpp), "--compression", "jpeg", "--no-progress"]


@dataclass(frozen=True)
class SlideJob:
    """One slide of a study: its label (side in pixels), path and area at processing mpp."""

    size: int
    path: Path
    area_px: int


def slide_job(path: Path, mpp: float, size: int | None = None) -> SlideJob:
    """Describe a TIFF slide: its area at processing ``mpp`` and a size label.

    The slide's own mpp comes from its XResolution tag (centimetre or inch
    units); without one the slide is taken to be at ``mpp`` already.
    """
    import tifffile

    path = path.absolute()
    if not path.is_file():
        raise ConfigError(f"slide {path} does not exist")
    try:
        with tifffile.TiffFile(path) as tif:
            page: Any = tif.pages[0]
            h, w = int(page.imagelength), int(page.imagewidth)
            slide_mpp = _tiff_mpp(page) or mpp
    except (tifffile.TiffFileError, OSError) as exc:
        raise ConfigError(f"slide {path} is not a readable TIFF: {exc}") from None
    scale = slide_mpp / mpp
    ph, pw = max(1, round(h * scale)), max(1, round(w * scale))
    return SlideJob(size or max(ph, pw), path, ph * pw)


def _tiff_mpp(page: Any) -> float | None:
    tags = page.tags
    if "XResolution" not in tags or "ResolutionUnit" not in tags:
        return None
    num, den = tags["XResolution"].value
    per_unit = num / den if den else 0.0
    unit = int(tags["ResolutionUnit"].value)
    microns = {2: 25400.0, 3: 10000.0}.get(unit)
    return microns / per_unit if microns and per_unit > 0 else None


def synthetic_job(size: int, slides_dir: Path, mpp: float) -> SlideJob:
    """A ``size`` x ``size`` synthetic slide under ``slides_dir``, written if missing."""
    from harness.errors import HarnessError
    from harness.measure import run_command

    path = slides_dir.absolute() / f"synthetic-{size}.tiff"
    if not path.is_file():
        slides_dir.mkdir(parents=True, exist_ok=True)
        m = run_command(synth_argv(size, path, mpp))
        if m.returncode != 0 or not path.is_file():
            raise HarnessError(f"could not write synthetic slide {path}: {m.stderr.strip()[-400:]}")
    return slide_job(path, mpp, size)
