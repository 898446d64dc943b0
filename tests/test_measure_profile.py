"""Tests for harness.measure.profile and ``wsi-harness profile``."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING

import pytest

from harness.cli import main
from harness.measure.plots import plot_timeline
from harness.measure.profile import profile_argv
from harness.measure.rss import RssTimeline
from harness.measure.scaling import segment_command_available

if TYPE_CHECKING:
    from pathlib import Path


def test_profile_argv_adds_what_segment_needs(tmp_path: Path) -> None:
    argv = profile_argv("synthetic:1024", ["--engine", "dense", "--json"], tmp_path)
    assert argv[1:5] == ["-m", "harness", "segment", "synthetic:1024"]
    assert argv.count("--json") == 1
    assert {"--no-progress", "--overwrite"} <= set(argv)
    assert argv[argv.index("--out") + 1] == str(tmp_path / "output.zarr")


def test_profile_argv_keeps_users_out(tmp_path: Path) -> None:
    argv = profile_argv("s", ["--out", "mine.zarr"], tmp_path)
    assert argv.count("--out") == 1 and "mine.zarr" in argv


def test_timeline_plot_with_phases(tmp_path: Path) -> None:
    t0 = time.time()
    timeline = RssTimeline(
        tuple(t0 + i * 0.01 for i in range(100)), tuple(range(100, 200)), (1,) * 100
    )
    phases = {
        "plan": [t0, t0 + 0.1],
        "inference": [t0 + 0.1, t0 + 0.8],
        "finalise": [t0 + 0.8, t0 + 1],
    }
    png = plot_timeline(
        timeline, tmp_path / "rss.png", start=t0, phases=phases, baseline_bytes=100, budget_bytes=50
    )
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_profile_requires_report(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["profile", "synthetic:1024", "--engine", "streaming"]) == 2
    assert "--report" in capsys.readouterr().err


def test_real_profile_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("harness.segment")
    if not segment_command_available():
        pytest.skip("wsi-harness segment is not registered yet")
    # GIVEN a small streaming segmentation
    report = tmp_path / "report"
    argv = ["profile", "synthetic:1024x1024", "--report", str(report), "--model", "passthrough",
            "--budget", "128MB", "--out", str(tmp_path / "out.zarr")]  # fmt: skip
    # WHEN it is profiled
    assert main(argv) == 0, capsys.readouterr().err
    # THEN every report file exists and the summary holds both figures and the phases
    for name in ("capture.bin", "flamegraph.html", "rss.png", "summary.json"):
        assert (report / name).is_file(), name
    summary = json.loads((report / "summary.json").read_text())
    measured = summary["measurement"]
    assert set(summary["segment"]["phases"]) == {"plan", "inference", "finalise"}
    assert 0 < measured["memray"]["peak_bytes"] < measured["peak_rss_bytes"]
    assert measured["baseline_rss_bytes"] is not None
    assert "peak tree RSS" in capsys.readouterr().out
