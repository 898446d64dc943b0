"""Tests for harness.testing.pytest_plugin: real pytest sessions, real processes, real memory.

Every marker test runs an inner pytest session in a subprocess
(``pytester.runpytest_subprocess``), so each measurement is of a fresh
process tree. The inner sessions load the plugin explicitly with
entry-point autoloading off: they must not depend on whatever else is
installed beside wsi-harness. One test checks the entry point itself.
"""

from __future__ import annotations

import sys
import time
import xml.etree.ElementTree as ET
from typing import TYPE_CHECKING

import pytest

from harness.errors import ConfigError
from harness.testing.pytest_plugin import assert_bounded

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

MB = 10**6
PLUGIN = ("-p", "harness.testing.pytest_plugin")

#: Test-module helpers for the inner sessions.
HOLD = """
import subprocess, sys, time

import pytest


def hold(nbytes, seconds=0.3):
    block = bytearray(b"\\x01") * nbytes  # every page written
    time.sleep(seconds)  # held while sampled
    return len(block)


CHILD = "import time; b = bytearray(b'\\\\x01') * 300_000_000; time.sleep(0.4)"


def run_child():
    subprocess.run([sys.executable, "-c", CHILD], check=True)
"""


@pytest.fixture
def inner(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> Callable[..., pytest.RunResult]:
    """Run an inner pytest session in a subprocess with only the named plugins loaded."""
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")

    def run(*args: str) -> pytest.RunResult:
        return pytester.runpytest_subprocess(*PLUGIN, "-p", "no:cacheprovider", *args)

    return run


def _cases(xml: Path) -> dict[str, ET.Element]:
    """``test name -> <testcase>`` from a JUnit XML report."""
    return {case.attrib["name"]: case for case in ET.parse(xml).getroot().iter("testcase")}


def _outcomes(xml: Path) -> dict[str, str]:
    """``test name -> "passed" | failure text``: the verdict and why, per test."""
    outcomes = {}
    for name, case in _cases(xml).items():
        failure = case.find("failure")
        outcomes[name] = "passed" if failure is None else (failure.text or "failed")
    return outcomes


def _properties(xml: Path) -> dict[str, dict[str, int]]:
    """``test name -> {property: value}`` from a JUnit XML report."""
    return {
        name: {p.attrib["name"]: int(p.attrib["value"]) for p in case.iter("property")}
        for name, case in _cases(xml).items()
    }


def test_markers_and_options_are_registered_by_the_entry_point(pytester: pytest.Pytester) -> None:
    # GIVEN plain pytest, plugins autoloaded from entry points (as after pip install wsi-harness)
    # WHEN it lists markers and help
    markers = pytester.runpytest_subprocess("--markers")
    helps = pytester.runpytest_subprocess("--help")
    # THEN both markers and both ini options are there
    markers.stdout.fnmatch_lines(["@pytest.mark.limit_rss(limit, *", "@pytest.mark.bounded(sizes*"])
    helps.stdout.fnmatch_lines(["*limit_rss_period_s*", "*wsi_slide_cache*"])


def test_limit_rss_passes_a_generous_limit_and_fails_a_tight_one(
    pytester: pytest.Pytester, inner: Callable[..., pytest.RunResult]
) -> None:
    # GIVEN two tests whose bodies hold 200 MB, one under 2 GB, one under 100 MB, and a bad marker
    pytester.makepyfile(
        HOLD
        + """
@pytest.mark.limit_rss("2 GB")
def test_generous():
    hold(200_000_000)

@pytest.mark.limit_rss("100 MB")
def test_tight():
    hold(200_000_000)

@pytest.mark.limit_rss("lots")
def test_bad_marker():
    pass
"""
    )
    # WHEN they run under --strict-markers
    result = inner("--strict-markers", "--junitxml=report.xml")
    # THEN the generous one passes, the tight one fails with peak, baseline, limit and processes
    result.assert_outcomes(passed=1, failed=2)
    result.stdout.fnmatch_lines(
        [
            "*limit_rss: process-tree peak RSS * MiB is over the limit of 100 MB (95.4 MiB)",
            "*peak: * (sum over the process tree; sampled every 10 ms*",
            "*baseline: * at the start of the body; peak above it: *",
            "*largest processes at the peak:",
            "*pid*RSS*command",
            "*bad limit_rss marker: cannot read 'lots' as a byte size*",
        ]
    )
    # AND the figures are real: the body added its 200 MB, within 10 %
    figures = _properties(pytester.path / "report.xml")
    for name in ("test_generous", "test_tight"):
        added = figures[name]["rss_peak_above_baseline_bytes"]
        assert added == pytest.approx(200 * MB, rel=0.10), (name, added)


def test_child_memory_passes_memray_limit_memory_and_fails_limit_rss(
    pytester: pytest.Pytester, inner: Callable[..., pytest.RunResult]
) -> None:
    pytest.importorskip("pytest_memray")
    # GIVEN a test whose *child process* touches 300 MB, under memray's 100 MB limit and under
    # limit_rss's 250 MB; and a control that touches the 300 MB in the test process itself
    pytester.makepyfile(
        HOLD
        + """
@pytest.mark.limit_memory("100 MB")
def test_memray_child():
    run_child()

@pytest.mark.limit_memory("100 MB")
def test_memray_in_process():
    hold(300_000_000, 0.0)

@pytest.mark.limit_rss("250 MB")
def test_rss_child():
    run_child()
"""
    )
    # WHEN the session runs with pytest-memray on
    result = inner("-p", "memray", "--memray", "--junitxml=report.xml")
    # THEN memray passes the child's test (it cannot see children) but catches the control,
    # and limit_rss fails the child's test, naming the child as the largest process
    result.assert_outcomes(passed=1, failed=2)
    outcomes = _outcomes(pytester.path / "report.xml")
    assert outcomes["test_memray_child"] == "passed"
    assert "Test was limited to 100.0MiB but allocated" in outcomes["test_memray_in_process"]
    assert "is over the limit of 250 MB" in outcomes["test_rss_child"]
    child_line = next(ln for ln in outcomes["test_rss_child"].splitlines() if "python -c" in ln)
    child_rss_mib = float(child_line.split()[1])
    assert child_rss_mib == pytest.approx(300 * MB / 2**20, rel=0.10)


def test_above_baseline_excludes_what_fixtures_hold(
    pytester: pytest.Pytester, inner: Callable[..., pytest.RunResult]
) -> None:
    # GIVEN a fixture holding 300 MB through the test, and one that touched 400 MB and freed it
    pytester.makepyfile(
        HOLD
        + """
@pytest.fixture
def held():
    block = bytearray(b"\\x01") * 300_000_000
    yield
    del block

@pytest.fixture
def spiked():
    hold(400_000_000, 0.0)

@pytest.mark.limit_rss("150 MB", above_baseline=True)
def test_relative_small(held):
    hold(50_000_000)

@pytest.mark.limit_rss("150 MB")
def test_absolute_small(held):
    hold(50_000_000)

@pytest.mark.limit_rss("150 MB", above_baseline=True)
def test_relative_large(held):
    hold(250_000_000)

@pytest.mark.limit_rss("250 MB")
def test_set_up_spike_is_not_the_body(spiked):
    hold(10_000_000)
"""
    )
    # WHEN they run
    result = inner("--junitxml=report.xml")
    # THEN above_baseline limits only what the body added, and a fixture's spike is excluded
    result.assert_outcomes(passed=2, failed=2)
    outcomes = _outcomes(pytester.path / "report.xml")
    assert outcomes["test_relative_small"] == "passed"
    assert outcomes["test_set_up_spike_is_not_the_body"] == "passed"
    assert outcomes["test_absolute_small"].startswith("limit_rss: process-tree peak RSS")
    assert outcomes["test_relative_large"].startswith("limit_rss: peak above the baseline")
    # AND the baseline of the held tests includes the fixture's 300 MB
    figures = _properties(pytester.path / "report.xml")["test_relative_small"]
    assert figures["rss_baseline_bytes"] > 300 * MB
    assert figures["rss_peak_above_baseline_bytes"] == pytest.approx(50 * MB, rel=0.2)


def test_sampling_period_comes_from_the_ini_file(
    pytester: pytest.Pytester, inner: Callable[..., pytest.RunResult]
) -> None:
    # GIVEN an ini file asking for 50 ms samples, and a body held for 0.5 s
    pytester.makeini("[pytest]\nlimit_rss_period_s = 0.05\n")
    pytester.makepyfile(
        HOLD + '\n@pytest.mark.limit_rss("1 MB")\ndef test_x():\n    hold(1, 0.5)\n'
    )
    # WHEN it runs
    result = inner()
    # THEN the message states the period and about 10 samples, not about 50
    result.assert_outcomes(failed=1)
    line = next(ln for ln in result.stdout.lines if "sampled every" in ln)
    assert "sampled every 50 ms" in line
    n_samples = int(line.split(": ")[-1].split(" samples")[0])
    assert 6 <= n_samples <= 16, line  # 0.5 s / 50 ms, the baseline and a last sample


# ---- assert_bounded: each size runs in a fresh process; these callables are the workloads.


def flat_workload(size: int) -> int:
    """Holds 20 MB whatever the size."""
    block = bytearray(b"\x01") * (20 * MB)
    time.sleep(0.1)
    return len(block) + 0 * size


def growing_workload(size: int) -> int:
    """Holds 32 bytes per pixel of a size x size slide."""
    block = bytearray(b"\x01") * (32 * size * size)
    time.sleep(0.1)
    return len(block)


def failing_workload(size: int) -> int:
    raise RuntimeError(f"engine crashed at {size}")


def slide_matches_size(size: int, slide: str) -> None:
    """Opens its slide lazily (flat memory); fails unless it got the slide of its size."""
    from harness.slides import TiffSlide

    if TiffSlide(slide).shape != (size, size):
        raise ValueError(f"run {size} got {slide}")


def test_assert_bounded_passes_a_bounded_workload(tmp_path: Path) -> None:
    # GIVEN a workload whose memory does not depend on the size, at sizes 16x apart in area
    # WHEN assert_bounded runs it
    report = assert_bounded(flat_workload, [256, 1024], "5%", name="flat", out_dir=tmp_path)
    # THEN it passes, each run really held its 20 MB, and the table, records and plot exist
    assert report.verdict.passed and abs(report.verdict.growth) < 0.05
    for record in report.records:
        assert record.peak_rss_bytes is not None and record.baseline_rss_bytes is not None
        assert record.peak_rss_bytes - record.baseline_rss_bytes == pytest.approx(20 * MB, rel=0.2)
    assert report.plot_path is not None and report.plot_path.stat().st_size > 0
    assert report.json_path.is_file() and "peak MiB" in report.table


def test_assert_bounded_fails_a_growing_workload_with_table_and_plot(tmp_path: Path) -> None:
    # GIVEN a workload holding 32 B per pixel: 2 MB at 256, 34 MB at 1024
    # WHEN assert_bounded runs it THEN it fails, and the message has the table and the plot path
    with pytest.raises(AssertionError) as failed:
        assert_bounded(growing_workload, [256, 1024], "5%", name="grows", out_dir=tmp_path)
    message = str(failed.value)
    assert "grows peak RSS growth 256 -> 1024" in message and "FAIL" in message
    assert "peak MiB" in message and f"plot: {tmp_path / 'bounded.png'}" in message
    assert (tmp_path / "bounded.png").is_file()


def test_assert_bounded_runs_a_command_template(tmp_path: Path) -> None:
    # GIVEN a command template that grows with {size} and writes to {out}
    code = (
        "import sys, time; b = bytearray(b'1') * (32 * {size} * {size}); "
        "open(sys.argv[1], 'w').write('x'); time.sleep(0.1)"
    )
    # WHEN assert_bounded runs it THEN it fails on the growth, and each {out} was removed
    with pytest.raises(AssertionError, match=r"cmd peak RSS growth 256 -> 1024: \+\d"):
        assert_bounded([sys.executable, "-c", code, "{out}"], [1024, 256], "5%", name="cmd",
                       out_dir=tmp_path)  # fmt: skip
    assert list((tmp_path / "runs").iterdir()) == []


def test_assert_bounded_hands_each_run_its_slide(
    wsi_tiff: Callable[..., Path], tmp_path: Path
) -> None:
    # GIVEN cached TIFFs of two sizes, made by the fixture in this process (not measured)
    # WHEN assert_bounded runs a workload that checks it was given the slide of its size
    report = assert_bounded(
        slide_matches_size, [256, 1024], "10%", slides=lambda s: wsi_tiff(s, "deflate"),
        out_dir=tmp_path, plot=False,
    )  # fmt: skip
    # THEN both runs succeeded
    assert [r.status for r in report.records] == ["ok", "ok"]


def test_assert_bounded_reports_a_failed_run(tmp_path: Path) -> None:
    with pytest.raises(AssertionError, match=r"failed at size 256: exit 1.*engine crashed at 256"):
        assert_bounded(failing_workload, [256, 512], out_dir=tmp_path, plot=False)


@pytest.mark.parametrize(
    ("workload", "sizes", "match"),
    [
        pytest.param(flat_workload, [256], "at least two distinct", id="one-size"),
        pytest.param(flat_workload, [256, 256], "at least two distinct", id="same-size"),
        pytest.param(
            "engine --out {out}", [256, 512], "needs a {size} or {slide}", id="no-placeholder"
        ),
        pytest.param("no.such.module:run", [256, 512], "cannot import workload", id="bad-name"),
        pytest.param("engine {slide} {size}", [256, 512], "no slides= given", id="no-slides"),
    ],
)
def test_assert_bounded_refuses_bad_arguments(
    workload: object, sizes: list[int], match: str, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match=match):
        assert_bounded(workload, sizes, out_dir=tmp_path)  # type: ignore[arg-type]


def test_bounded_marker_runs_the_test_function_per_size(
    pytester: pytest.Pytester, inner: Callable[..., pytest.RunResult]
) -> None:
    # GIVEN bounded-marked functions: one flat, one growing, one that wants a fixture
    pytester.makepyfile(
        HOLD
        + """
@pytest.mark.bounded(sizes=[256, 1024], max_growth="5%")
def test_flat(size):
    hold(20_000_000, 0.1)

@pytest.mark.bounded(sizes=[256, 1024], max_growth="5%")
def test_grows(size):
    hold(32 * size * size, 0.1)

@pytest.mark.bounded(sizes=[256, 1024])
def test_wants_fixture(size, tmp_path):
    pass
"""
    )
    # WHEN they run under --strict-markers
    result = inner("--strict-markers", "--junitxml=report.xml")
    # THEN the flat one passes, the growing one fails with its table, the third is refused
    result.assert_outcomes(passed=1, failed=2)
    outcomes = _outcomes(pytester.path / "report.xml")
    assert outcomes["test_flat[256-1024]"] == "passed"
    grows = outcomes["test_grows[256-1024]"]
    assert "test_grows peak RSS growth 256 -> 1024: +" in grows and "(limit 5.0%): FAIL" in grows
    assert "peak MiB" in grows and "bounded.png" in grows
    refused = outcomes["test_wants_fixture[256-1024]"]
    assert "a bounded test must be a module-level function taking only `size`" in refused


def test_slide_fixtures_write_once_and_reuse_across_sessions(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a test asking for a deflate TIFF twice and a virtual slide, with pytest's cache on
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    pytester.makepyfile(
        """
import os
from harness.slides import SyntheticSlide, TiffSlide

def test_slides(wsi_tiff, wsi_synthetic):
    path = wsi_tiff(512, "deflate", seed=3, tile=128)
    assert wsi_tiff(512, "deflate", seed=3, tile=128) == path
    assert wsi_tiff(512, "deflate", seed=4, tile=128) != path
    slide = TiffSlide(path)
    assert slide.shape == (512, 512)
    expected = wsi_synthetic(512, seed=3).read((0, 0, 512, 512), 0.5)
    assert (slide.read((0, 0, 512, 512), 0.5) == expected).all()  # lossless
    with open("seen.txt", "a") as f:
        f.write(f"{path} {os.stat(path).st_mtime_ns}\\n")
"""
    )
    # WHEN two sessions run
    for _ in range(2):
        pytester.runpytest_subprocess(*PLUGIN).assert_outcomes(passed=1)
    # THEN both used the same cached file, written once, under pytest's cache folder
    first, second = (pytester.path / "seen.txt").read_text().splitlines()
    assert first == second
    assert "/.pytest_cache/d/wsi-harness-slides/synthetic-512x512-seed3-" in first
