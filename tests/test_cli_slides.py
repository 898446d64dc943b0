"""``wsi-harness synth`` and ``wsi-harness info`` through the real dispatcher."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import numpy as np
import pytest
from PIL import Image

from harness.cli import main
from harness.slides import TiffSlide

if TYPE_CHECKING:
    from pathlib import Path


def test_synth_then_info(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # GIVEN a synthetic slide written by the CLI
    out = tmp_path / "s.tiff"
    args = ["synth", str(out), "--size", "1536", "--height", "1024", "--mpp", "0.25"]
    assert main([*args, "--seed", "2", "--compression", "deflate", "--no-progress"]) == 0
    assert "wrote" in capsys.readouterr().out
    # WHEN info describes it as JSON, with a thumbnail
    thumb = tmp_path / "t.png"
    assert main(["info", str(out), "--json", "--thumbnail", str(thumb)]) == 0
    record = json.loads(capsys.readouterr().out)
    # THEN the figures are those of the file
    assert record["reader"] == "TiffSlide"
    assert (record["width"], record["height"], record["mpp"]) == (1536, 1024, 0.25)
    assert record["levels"] == 2 and record["downsamples"] == [1.0, 2.0]
    assert TiffSlide(out).shape == (1024, 1536)
    image = np.asarray(Image.open(thumb))
    assert max(image.shape[:2]) <= 1024 and image.shape[2] == 3


def test_info_on_a_synthetic_spec(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "synthetic:4096x2048,seed=1"]) == 0
    text = capsys.readouterr().out
    assert "SyntheticSlide" in text and "2048" in text


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        pytest.param(["info", "synthetic:big"], "bad synthetic slide size", id="bad-spec"),
        pytest.param(["info", "/nonexistent/slide.svs"], "not found", id="missing"),
        pytest.param(
            ["synth", "x.tiff", "--size", "64", "--tile", "10"], "multiple of 16", id="tile"
        ),
        pytest.param(["synth", "x.tiff", "--size", "0"], "at least 1 x 1", id="size"),
        pytest.param(["info", "synthetic:99999999999999999999"], "at most", id="20-digits"),
    ],
)
def test_errors_are_one_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_synth_keeps_an_existing_file_unless_told(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN a slide already written
    out = tmp_path / "s.tiff"
    base = ["synth", str(out), "--size", "256", "--no-progress"]
    assert main(base) == 0
    before = out.read_bytes()
    # WHEN synth is asked to write it again (another seed), it refuses in one line
    assert main([*base, "--seed", "3"]) == 2
    err = capsys.readouterr().err
    assert "exists; pass --overwrite" in err and err.count("\n") == 1
    assert out.read_bytes() == before
    # AND with --overwrite it replaces it; a missing folder is one line
    assert main([*base, "--seed", "3", "--overwrite"]) == 0 and out.read_bytes() != before
    assert main(["synth", str(tmp_path / "no" / "s.tiff"), "--size", "64"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_synth_progress_reaches_its_total(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # 3000 x 1700 px in 256 px tiles over 3 levels: 12 x 7 + 6 x 4 + 3 x 2 = 114 tiles
    assert main(["synth", str(tmp_path / "s.tiff"), "--size", "3000", "--height", "1700"]) == 0
    bar = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]
    assert "114/114" in bar, bar
