"""The floor report: every part measured alone, the end-to-end run beside it."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

from harness.measure.floor import PARTS, _blocks_touched, read_once
from harness.plan import PlanConfig, make_plan
from harness.slides import open_slide

CFG = PlanConfig(patch=64, stride=32, chunk=64, mpp=0.5)


def test_read_once_reads_every_covered_pixel_once() -> None:
    # GIVEN a plan over the whole slide, and one over a tissue corner only
    slide = open_slide("synthetic:700x500,seed=4")
    whole = make_plan(slide.shape, slide.mpp, CFG, 3, 2**40, strips=False)
    mask = np.zeros((16, 22), dtype=bool)
    mask[:3, :3] = True
    corner = make_plan(slide.shape, slide.mpp, CFG, 3, 2**40, tissue=mask, strips=False)
    # WHEN the floor reads them
    # THEN the whole plan reads each slide pixel exactly once, the corner only its blocks
    assert read_once(slide, whole) == 700 * 500
    touched = _blocks_touched(slide, corner, (256, 512))
    assert 0 < int(touched.sum()) < touched.size
    assert read_once(slide, corner) < 700 * 500


def test_floor_cli_reports_every_part_and_the_ratio(tmp_path) -> None:
    argv = [sys.executable, "-m", "harness", "floor", "synthetic:768,seed=2", "--model",
            "tiny-cnn", "--patch", "64", "--stride", "32", "--chunk", "64", "--workers", "1",
            "--scratch", str(tmp_path), "--json"]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert [p["name"] for p in report["parts"]] == list(PARTS)
    assert all(p["wall_s"] >= 0 and p["cpu_s"] >= 0 for p in report["parts"])
    assert report["parts"][2]["cpu_s"] > 0  # the model really ran
    e2e = report["end_to_end"]
    assert e2e["wall_s"] > 0 and report["workers"] == 1
    assert np.isclose(report["cpu_ratio"], e2e["cpu_s"] / report["floor_cpu_s"])
    assert (tmp_path / "end-to-end.zarr").is_dir() and (tmp_path / "floor.zarr").is_dir()
