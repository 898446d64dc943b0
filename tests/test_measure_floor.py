"""The floor report: every part measured alone, the end-to-end run beside it."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import TYPE_CHECKING, Any

import numpy as np

from harness.measure.floor import PARTS, FloorReport, Part, _blocks_touched, combine, read_once
from harness.plan import PlanConfig, make_plan
from harness.slides import open_slide

if TYPE_CHECKING:
    from pathlib import Path

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


def _floor_json(slide: str, scratch: Path, *args: str) -> dict[str, Any]:
    """``wsi-harness floor SLIDE --json`` at 64 px patches in a fresh process."""
    argv = [sys.executable, "-m", "harness", "floor", slide, "--patch", "64", "--stride", "32",
            "--chunk", "64", "--scratch", str(scratch), "--json", *args]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def test_floor_cli_reports_every_part_and_the_ratio(tmp_path) -> None:
    report = _floor_json("synthetic:768,seed=2", tmp_path, "--model", "tiny-cnn", "--workers", "1")
    assert [p["name"] for p in report["parts"]] == list(PARTS)
    assert all(p["wall_s"] >= 0 and p["cpu_s"] >= 0 for p in report["parts"])
    assert report["parts"][2]["cpu_s"] > 0  # the model really ran
    e2e = report["end_to_end"]
    assert e2e["wall_s"] > 0 and report["workers"] == 1
    assert np.isclose(report["cpu_ratio"], e2e["cpu_s"] / report["floor_cpu_s"])
    # the kernel's share is reported beside the CPU it is part of
    write = report["parts"][-1]
    assert 0 <= e2e["sys_s"] <= e2e["cpu_s"] and 0 <= write["sys_s"] <= write["cpu_s"]
    assert np.isclose(report["floor_sys_s"], sum(p["sys_s"] for p in report["parts"]))
    assert (tmp_path / "end-to-end.zarr").is_dir() and (tmp_path / "floor.zarr").is_dir()


def test_floor_rounds_interleave_and_report_medians_with_each_round(tmp_path) -> None:
    # GIVEN two rounds of a small floor
    report = _floor_json("synthetic:512,seed=3", tmp_path, "--model", "passthrough",
                         "--rounds", "2")  # fmt: skip
    # THEN every round ran its own parts and its own run
    for r in (1, 2):
        assert (tmp_path / f"floor-{r}.zarr").is_dir()
        assert (tmp_path / f"end-to-end-{r}.zarr").is_dir()
    rounds = report["round_ratios"]
    assert len(rounds) == 2 and all(w > 0 and c > 0 for w, c in rounds)
    # AND with two rounds the medians are means, so the reported ratio is the mediant of the
    # rounds' ratios: it lies between them (an aggregation that mixed up parts would not)
    for key, i in (("wall_ratio", 0), ("cpu_ratio", 1)):
        lo, hi = sorted(r[i] for r in rounds)
        assert lo - 1e-9 <= report[key] <= hi + 1e-9


def test_floor_rounds_below_one_is_one_line_exit_2() -> None:
    argv = [sys.executable, "-m", "harness", "floor", "synthetic:512", "--rounds", "0"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "--rounds needs a whole number" in done.stderr


def test_combine_takes_each_parts_median_and_keeps_every_rounds_ratio() -> None:
    # GIVEN three rounds whose parts and runs differ (one slow spell in each column)
    def report(read: float, write: float, e2e: float) -> FloorReport:
        parts = (Part("read_once", read, read, "r"), Part("write", write, write, "w"))
        return FloorReport("s", "m", 0, 8, 10, parts, Part("end to end", e2e, e2e, "e"))

    rounds = [report(1.0, 2.0, 6.0), report(5.0, 1.0, 4.0), report(2.0, 3.0, 9.0)]
    # WHEN they are combined
    out = combine(rounds)
    # THEN each part and the run are their own medians, and each round keeps its ratio
    assert [(p.name, p.cpu_s) for p in out.parts] == [("read_once", 2.0), ("write", 2.0)]
    assert out.end_to_end.cpu_s == 6.0 and out.cpu_ratio == 1.5
    assert out.round_ratios == ((2.0, 2.0), (4.0 / 6.0, 4.0 / 6.0), (9.0 / 5.0, 9.0 / 5.0))
    assert combine(rounds[:1]) is rounds[0]
