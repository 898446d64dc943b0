"""Shared fixtures: small real slides and a real size-limited filesystem."""

from __future__ import annotations

import subprocess
from typing import TYPE_CHECKING

import numpy as np
import pytest

from harness.slides.array import ArraySlide

if TYPE_CHECKING:
    from pathlib import Path

pytest_plugins = ["pytester"]


@pytest.fixture(scope="session")
def noise_slide() -> ArraySlide:
    """A 300 x 420 random RGB slide at 0.5 mpp: every pixel distinct, so merge errors show."""
    rng = np.random.default_rng(7)
    return ArraySlide(rng.integers(0, 256, (300, 420, 3), dtype=np.uint8), mpp=0.5)


@pytest.fixture
def tiny_disk(tmp_path: Path):
    """A 192 KiB tmpfs: a real filesystem that fills up (needs root; skipped otherwise)."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=192k", "tmpfs", str(mount)],
        capture_output=True,
        check=False,
    )
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
