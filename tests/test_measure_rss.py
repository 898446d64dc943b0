"""Tests for harness.measure.rss: the process-tree sampler."""

from __future__ import annotations

import subprocess
import sys
import time
from typing import TYPE_CHECKING

import psutil

from harness.measure import RssTimeline, TreeSampler, rss, tree_rss

if TYPE_CHECKING:
    import pytest


def test_tree_rss_sums_self_and_children() -> None:
    # GIVEN this process with one sleeping child
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(5)"])
    try:
        time.sleep(0.3)
        me = psutil.Process()
        own = me.memory_info().rss
        # WHEN the tree is summed
        total, counted = tree_rss(me)
        # THEN the child is counted on top of this process
        assert counted >= 2
        assert total > own
    finally:
        child.kill()
        child.wait()


def test_descendants_walks_the_tree_like_psutil(monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN a child with a grandchild
    code = "import subprocess, time; subprocess.Popen(['sleep', '5']); time.sleep(5)"
    child = subprocess.Popen([sys.executable, "-c", code])
    try:
        me = psutil.Process()
        deadline = time.monotonic() + 5
        while len(me.children(recursive=True)) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        expected = sorted(p.pid for p in me.children(recursive=True))
        assert len(expected) == 2  # the child and its child
        # WHEN the tree is walked through /proc, and with /proc's children files missing
        walked = sorted(rss.descendants(me))
        monkeypatch.setattr(rss, "_proc_children", lambda pid: None)
        fallback = sorted(rss.descendants(me))
        # THEN both find the same processes psutil's full scan does
        assert walked == expected == fallback
    finally:
        child.kill()
        child.wait()


def test_tree_rss_of_vanished_process_is_empty() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    handle = psutil.Process(proc.pid)
    proc.wait()
    assert tree_rss(handle) == (0, 0)


def test_sampler_records_a_timeline_until_stopped() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.5)"])
    with TreeSampler(child.pid, period_s=0.01) as sampler:
        child.wait()
    timeline = sampler.timeline()
    assert 5 <= len(timeline.rss_bytes) <= 200
    assert list(timeline.times) == sorted(timeline.times)
    assert timeline.peak_bytes == max(timeline.rss_bytes) > 0
    assert timeline.peak_time in timeline.times


def test_empty_timeline() -> None:
    empty = RssTimeline((), (), ())
    assert (empty.peak_bytes, empty.peak_time, empty.max_processes) == (0, None, 0)
