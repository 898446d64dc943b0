"""Slide fixtures of the pytest plugin: synthetic slides and cached pyramidal TIFFs.

Both are *factories* in session scope, so one test can ask for several sizes
and a fixture never decides the size for the test::

    def test_reads(wsi_tiff, wsi_synthetic):
        path = wsi_tiff(4096, compression="jpeg")       # a real pyramidal BigTIFF
        slide = wsi_synthetic(65536, seed=3)             # virtual: costs nothing

A TIFF is written once per session and, where pytest's cache provider is on,
once per machine: files live under ``.pytest_cache/d/wsi-harness-slides``
(or the ``wsi_slide_cache`` ini folder), named by every parameter that
changes their bytes *and* by the harness version plus a digest of the slide
generator's source, so a checkout that changes the generator without a
version bump never reads a stale slide. ``pytest --cache-clear`` drops them.
Writes go to a unique temporary name and are renamed into place, so
concurrent sessions (pytest-xdist workers) never see half a file.

Imports of numpy, tifffile and the slides package happen inside the
factories: the plugin stays cheap to load in sessions that never use them.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from collections.abc import Callable

    from harness.slides import SyntheticSlide

#: Folder name under pytest's cache directory.
CACHE_NAME = "wsi-harness-slides"


@dataclass(frozen=True)
class SlideSpec:
    """Everything that decides a synthetic slide's pixels."""

    width: int
    height: int
    seed: int = 0
    tissue: float = 0.4
    mpp: float = 0.5
    artefacts: bool = False

    def build(self) -> SyntheticSlide:
        """The virtual slide (validated by :class:`~harness.slides.SyntheticSlide`)."""
        from harness.slides import SyntheticSlide

        return SyntheticSlide(
            self.height, self.width, mpp=self.mpp, seed=self.seed,
            tissue_fraction=self.tissue, artefacts=self.artefacts,
        )  # fmt: skip


@dataclass(frozen=True)
class TiffSpec:
    """A synthetic slide written as a pyramidal TIFF, and how it is encoded."""

    slide: SlideSpec
    compression: str = "jpeg"
    tile: int = 256
    quality: int = 90

    def file_name(self) -> str:
        """A name that changes whenever the file's bytes would."""
        s = self.slide
        quality = f"-q{self.quality}" if self.compression == "jpeg" else ""
        return (
            f"synthetic-{s.width}x{s.height}-seed{s.seed}-tissue{s.tissue:g}-mpp{s.mpp:g}"
            f"-art{int(s.artefacts)}-{self.compression}{quality}-tile{self.tile}"
            f"-{generator_version()}.tiff"
        )


@cache
def generator_version() -> str:
    """Harness version and a digest of the slide generator's and writer's source."""
    import harness
    import harness.slides as slides

    digest = hashlib.sha256()
    for path in sorted(Path(slides.__file__).parent.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return f"v{harness.__version__}-{digest.hexdigest()[:12]}"


def _cache_dir(config: pytest.Config, session_tmp: Callable[[], Path]) -> Path:
    """The ``wsi_slide_cache`` ini folder, else pytest's cache, else a session folder."""
    configured = config.getini("wsi_slide_cache")
    if configured:
        folder = Path(str(configured))
        if not folder.is_absolute():
            folder = config.rootpath / folder
        folder.mkdir(parents=True, exist_ok=True)
        return folder
    if hasattr(config, "cache"):  # absent under -p no:cacheprovider
        return config.cache.mkdir(CACHE_NAME)
    return session_tmp()


def write_cached_tiff(spec: TiffSpec, folder: Path) -> Path:
    """``folder/<name>``, written now unless a previous session left it there."""
    from harness.slides import write_tiff

    final = folder / spec.file_name()
    if final.is_file():
        return final
    scratch = folder / f".{uuid.uuid4().hex}.tiff"  # write_tiff adds its own .partial
    try:
        write_tiff(
            spec.slide.build(), scratch, tile=spec.tile, compression=spec.compression,
            quality=spec.quality, progress=False,
        )  # fmt: skip
        scratch.replace(final)
    finally:
        scratch.unlink(missing_ok=True)
    return final


@pytest.fixture(scope="session")
def wsi_synthetic() -> Callable[..., SyntheticSlide]:
    """Factory of virtual synthetic slides: ``wsi_synthetic(size, *, height=None, seed=0, ...)``.

    Keyword options: ``height`` (default square), ``seed``, ``tissue``
    (fraction), ``mpp``, ``artefacts``. Equal arguments return the same object.
    """
    made: dict[SlideSpec, SyntheticSlide] = {}

    def factory(
        size: int = 4096, *, height: int | None = None, seed: int = 0, tissue: float = 0.4,
        mpp: float = 0.5, artefacts: bool = False,
    ) -> SyntheticSlide:  # fmt: skip
        spec = SlideSpec(size, height or size, seed, tissue, mpp, artefacts)
        if spec not in made:
            made[spec] = spec.build()
        return made[spec]

    return factory


@pytest.fixture(scope="session")
def wsi_tiff(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Callable[..., Path]:
    """Factory of cached pyramidal TIFFs: ``wsi_tiff(size, compression="jpeg", ...)``.

    Keyword options: ``height``, ``seed``, ``tissue``, ``mpp``, ``artefacts``
    (as for ``wsi_synthetic``), ``tile`` (side, multiple of 16) and
    ``quality`` (JPEG). ``compression`` is ``"jpeg"``, ``"deflate"`` or
    ``"none"``. Returns the file's path; treat it as read-only, it is shared.
    """
    folder: list[Path] = []
    written: dict[TiffSpec, Path] = {}

    def where() -> Path:
        if not folder:
            folder.append(_cache_dir(request.config, lambda: tmp_path_factory.mktemp("wsi-slides")))
        return folder[0]

    def factory(
        size: int = 4096, compression: str = "jpeg", *, height: int | None = None,
        seed: int = 0, tissue: float = 0.4, mpp: float = 0.5, artefacts: bool = False,
        tile: int = 256, quality: int = 90,
    ) -> Path:  # fmt: skip
        slide = SlideSpec(size, height or size, seed, tissue, mpp, artefacts)
        spec = TiffSpec(slide, compression, tile, quality)
        if spec not in written:
            written[spec] = write_cached_tiff(spec, where())
        return written[spec]

    return factory
