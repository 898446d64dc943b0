"""Tests for harness.measure.runner: real processes, real memory, no mocks."""

from __future__ import annotations

import re
import shutil
import sys
from typing import TYPE_CHECKING

import pytest

from harness.errors import HarnessError
from harness.measure import run_callable, run_command
from harness.measure.workloads import grow, touch_bytes, touch_in_children

if TYPE_CHECKING:
    from pathlib import Path

MB = 1_000_000
TIME = "/usr/bin/time"


def _time_v_max_rss(stderr: str) -> int:
    """``Maximum resident set size (kbytes)`` from ``/usr/bin/time -v``, in bytes."""
    match = re.search(r"Maximum resident set size \(kbytes\): (\d+)", stderr)
    assert match, stderr[-500:]
    return int(match.group(1)) * 1024


def _fails() -> None:
    raise RuntimeError("workload failed on purpose")


@pytest.mark.skipif(shutil.which(TIME) is None, reason="needs GNU time at /usr/bin/time")
def test_tree_peak_agrees_with_gnu_time() -> None:
    # GIVEN a command that allocates and touches 400 MB, run under /usr/bin/time -v
    code = "import numpy as np; a = np.ones(400_000_000, np.uint8); a[::4096].sum()"
    # WHEN it is measured
    m = run_command([TIME, "-v", sys.executable, "-c", code]).check()
    # THEN the sampled tree peak and the kernel's ru_maxrss both agree with GNU time within 5 %
    reference = _time_v_max_rss(m.stderr)
    assert reference > 400 * MB
    assert m.timeline.peak_bytes == pytest.approx(reference, rel=0.05)  # the sampler alone
    assert m.peak_rss_bytes == pytest.approx(reference, rel=0.05)
    assert m.ru_maxrss_bytes == pytest.approx(reference, rel=0.05)


def test_callable_baseline_excludes_imports() -> None:
    # GIVEN a callable that touches 400 MB after its module (and numpy) is imported
    m = run_callable(touch_bytes, 400 * MB).check()
    # THEN the baseline was taken after imports and the body added about 400 MB
    assert m.result == 400 * MB // 4096 + 1
    assert m.baseline_rss_bytes is not None
    assert m.baseline_rss_bytes > 10 * MB  # an interpreter with numpy loaded
    assert m.peak_above_baseline_bytes == pytest.approx(400 * MB, rel=0.05)


def test_tree_peak_includes_forked_children() -> None:
    # GIVEN a parent that allocates nothing and forks 3 children touching 150 MB each at once
    m = run_callable(touch_in_children, 3, 150 * MB, 0.5).check()
    assert m.result == 3
    # THEN the tree peak holds all three, while ru_maxrss (one process at a time) holds one
    assert m.peak_rss_bytes > 3 * 150 * MB
    assert m.ru_maxrss_bytes < 2 * 150 * MB
    assert m.timeline.max_processes >= 4


def test_growing_workload_peak_is_its_maximum() -> None:
    # GIVEN a workload that keeps 10 blocks of 20 MB alive
    m = run_callable(grow, 10, 20 * MB).check()
    # THEN the peak above baseline is the 200 MB it held at the end, not less
    assert m.result == 200 * MB
    assert m.peak_above_baseline_bytes == pytest.approx(200 * MB, rel=0.05)


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        pytest.param("pass", 0, id="ok"),
        pytest.param("import sys; sys.exit(3)", 3, id="exit-3"),
        pytest.param("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", -9, id="sigkill"),
    ],
)
def test_exit_status_is_propagated(code: str, expected: int) -> None:
    assert run_command([sys.executable, "-c", code]).returncode == expected


def test_failing_callable_reports_status_and_traceback() -> None:
    m = run_callable(_fails)
    assert m.returncode == 1
    assert m.result is None
    assert "workload failed on purpose" in m.stderr
    with pytest.raises(HarnessError, match="exited with status 1"):
        m.check()


def test_timeout_kills_the_whole_group() -> None:
    # GIVEN a command whose own child would outlive it
    code = (
        "import subprocess, sys, time; "
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)']); time.sleep(30)"
    )
    m = run_command([sys.executable, "-c", code], timeout_s=1.0)
    assert m.timed_out
    assert m.returncode == -9
    assert m.wall_s < 10


def test_command_reports_baseline_through_env_file() -> None:
    # GIVEN a command that honours WSI_HARNESS_BASELINE_FILE, then allocates 100 MB
    code = (
        "import numpy as np; from harness.measure import write_baseline; write_baseline(); "
        "a = np.ones(100_000_000, np.uint8); print('{\"done\": 1}')"
    )
    m = run_command([sys.executable, "-c", code]).check()
    assert m.baseline_rss_bytes is not None
    assert m.peak_above_baseline_bytes == pytest.approx(100 * MB, rel=0.1)
    assert m.stdout_json() == {"done": 1}


def test_command_without_baseline_reports_none() -> None:
    m = run_command([sys.executable, "-c", "print('not json')"]).check()
    assert m.baseline_rss_bytes is None
    assert m.peak_above_baseline_bytes is None
    with pytest.raises(HarnessError, match="no JSON object"):
        m.stdout_json()


def test_memray_capture_of_callable(tmp_path: Path) -> None:
    # GIVEN a 100 MB workload tracked by memray in the child
    m = run_callable(touch_bytes, 100 * MB, memray_file=tmp_path / "cap.bin").check()
    # THEN memray's heap peak sees the block and stays below the tree's RSS
    assert m.memray is not None
    assert 100 * MB <= m.memray.peak_bytes < m.peak_rss_bytes


def test_memray_capture_of_command_follows_fork(tmp_path: Path) -> None:
    code = (
        "import os, numpy as np\n"
        "a = np.ones(50_000_000, np.uint8)\n"
        "pid = os.fork()\n"
        "if pid == 0:\n    b = np.ones(80_000_000, np.uint8); os._exit(0)\n"
        "os.waitpid(pid, 0)\n"
    )
    m = run_command([sys.executable, "-c", code], memray_file=tmp_path / "cap.bin").check()
    assert m.memray is not None
    assert m.memray.peak_bytes >= 50 * MB
    assert [peak >= 80 * MB for _, peak in m.memray.child_peaks] == [True]


def test_to_dict_is_json_ready() -> None:
    import json

    m = run_command([sys.executable, "-c", "pass"])
    doc = json.loads(json.dumps(m.to_dict(timeline=True)))
    assert doc["returncode"] == 0
    assert doc["peak_rss_bytes"] == max(*doc["timeline"]["rss_bytes"], doc["ru_maxrss_bytes"])


@pytest.mark.skipif(shutil.which(TIME) is None, reason="needs GNU time at /usr/bin/time")
def test_tree_peak_agrees_with_gnu_time_on_real_segmentation(tmp_path: Path) -> None:
    pytest.importorskip("harness.segment")
    from harness.config import RunConfig
    from harness.measure.scaling import segment_argv, segment_command_available

    if not segment_command_available():
        pytest.skip("wsi-harness segment is not registered yet")
    # GIVEN a one-process segmentation (no workers) under /usr/bin/time -v
    run = RunConfig(model="passthrough")
    argv = segment_argv("synthetic:2048x2048", tmp_path / "o.zarr", run)
    # WHEN it is measured
    m = run_command([TIME, "-v", *argv]).check()
    # THEN the tree peak agrees with GNU time's maximum RSS within 5 %, and a baseline came back
    reference = _time_v_max_rss(m.stderr)
    assert m.timeline.peak_bytes == pytest.approx(reference, rel=0.05)  # the sampler alone
    assert m.peak_rss_bytes == pytest.approx(reference, rel=0.05)
    assert m.baseline_rss_bytes is not None
    assert m.stdout_json()["engine"] == "streaming"
