"""Tests for harness.measure.rss: the process-tree sampler."""

from __future__ import annotations

import subprocess
import sys
import time

import psutil

from harness.measure import RssTimeline, TreeSampler, tree_rss


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
