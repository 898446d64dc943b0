"""One slide across dask workers, and cohorts: real clusters on 127.0.0.1.

Every cluster here is real: LocalCluster worker processes, or ``dask scheduler``
and ``dask worker`` processes started by the test. Outputs must equal a
single-process run bitwise; the reference uses one torch thread, as the
workers do (oneDNN's sums depend on the thread count, see harness.identity).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import dask
import pytest
from distributed import Client, LocalCluster

from harness.cohort import CohortItem, run_cohort
from harness.compare import compare_outputs
from harness.config import RunConfig
from harness.distributed import ProcessPolicy
from harness.plan import PlanConfig
from harness.segment import segment

SLIDE = "synthetic:1024,seed=5"
PLAN = PlanConfig(patch=64, stride=32, chunk=64, mpp=0.5)
RUN = RunConfig(plan=PLAN, model="tiny-cnn", progress=False, merge_budget=2 * 10**6)


def _client(n: int) -> tuple[LocalCluster, Client]:
    cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                           dashboard_address=":0", silence_logs=40)  # fmt: skip
    client = Client(cluster, set_as_default=False)
    client.register_plugin(ProcessPolicy(1))
    return cluster, client


@pytest.fixture(scope="module")
def clients():
    made = {n: _client(n) for n in (1, 2, 3)}
    yield {n: c for n, (_, c) in made.items()}
    for cluster, client in made.values():
        client.close()
        cluster.close()


def _single_thread_reference(out: Path, run: RunConfig, slide: str = SLIDE) -> Path:
    """One fresh process with one torch thread (as the workers), through the CLI."""
    argv = [sys.executable, "-m", "harness", "segment", slide, "--out", str(out),
            *run.replace(threads=1).cli_args()]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    return out


@pytest.fixture(scope="module")
def references(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Path]:
    root = tmp_path_factory.mktemp("refs")
    refs = {}
    for blend in ("mean", "gaussian"):
        for mask in ("none", "auto"):
            run = RUN.replace(blend=blend, mask=None if mask == "none" else mask)
            refs[blend, mask] = _single_thread_reference(root / f"{blend}-{mask}.zarr", run)
    return refs


@pytest.mark.parametrize("workers", [1, 2, 3])
@pytest.mark.parametrize("block", [2, 5])
@pytest.mark.parametrize("blend", ["mean", "gaussian"])
@pytest.mark.parametrize("mask", ["none", "auto"])
def test_cluster_output_is_bitwise_the_single_process_one(
    clients, references, tmp_path, workers, block, blend, mask
):
    # GIVEN a partition into blocks of `block` x `block` chunks on `workers` processes
    run = RUN.replace(blend=blend, mask=None if mask == "none" else mask, block=block)
    # WHEN the slide runs on the cluster
    result = segment(SLIDE, out=tmp_path / "o.zarr", run=run, client=clients[workers])
    # THEN the output equals one process bitwise, and the halo cost is reported
    cmp = compare_outputs(result.output, references[blend, mask])
    assert cmp.bitwise_equal and cmp.probabilities_compared and cmp.coverage_mismatch_px == 0
    assert result.workers["blocks"] == (-(-16 // block)) ** 2
    assert result.patch_runs >= result.patches
    assert all(v > 0 for v in result.workers["peak_rss_bytes"].values())


def test_a_worker_killed_mid_block_is_rescheduled_and_the_result_is_bitwise(tmp_path):
    # GIVEN a two-worker cluster running a slide of small blocks
    slide = "synthetic:2048,seed=6"
    run = RUN.replace(block=4, model="tiny-cnn")
    reference = _single_thread_reference(tmp_path / "ref.zarr", run, slide)
    cluster, client = _client(2)
    victims: list[int] = []

    def kill_one() -> None:
        # Once work is under way, SIGKILL one worker process (its nanny restarts it).
        time.sleep(2.5)
        pids = client.run(os.getpid)
        victim = sorted(pids.values())[0]
        victims.append(victim)
        os.kill(victim, signal.SIGKILL)

    try:
        killer = threading.Thread(target=kill_one)
        killer.start()
        # WHEN one worker dies mid-run
        result = segment(slide, out=tmp_path / "o.zarr", run=run, client=client)
        killer.join()
    finally:
        client.close()
        cluster.close()
    # THEN dask re-ran its block elsewhere and the output is still bitwise
    assert victims, "no worker was killed"
    assert compare_outputs(result.output, reference).bitwise_equal


def _wait_for(path: Path, timeout: float = 60) -> None:
    t0 = time.monotonic()
    while not path.exists():
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"{path} did not appear")
        time.sleep(0.1)


def test_external_scheduler_and_workers_on_localhost(tmp_path, references):
    # GIVEN `dask scheduler` and two `dask worker` processes on 127.0.0.1
    dask = str(Path(sys.executable).with_name("dask"))
    info = tmp_path / "scheduler.json"
    procs = [subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", "0",
                               "--no-dashboard", "--scheduler-file", str(info)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]  # fmt: skip
    try:
        _wait_for(info)
        for _ in range(2):
            procs.append(subprocess.Popen(
                [dask, "worker", "--scheduler-file", str(info), "--nthreads", "1",
                 "--nworkers", "1", "--no-dashboard", "--host", "127.0.0.1"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))  # fmt: skip
        address = json.loads(info.read_text())["address"]
        with Client(address, timeout=30, set_as_default=False) as probe:
            probe.wait_for_workers(2, timeout=60)
        # WHEN the CLI runs a slide through --scheduler
        out = tmp_path / "o.zarr"
        argv = [sys.executable, "-m", "harness", "segment", SLIDE, "--out", str(out),
                *RUN.cli_args(), "--scheduler", address, "--json"]  # fmt: skip
        done = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
        # THEN it ran on both workers and equals the single-process output bitwise
        assert done.returncode == 0, done.stderr
        record = json.loads(done.stdout)
        assert len(record["workers"]["peak_rss_bytes"]) == 2
        assert compare_outputs(out, references["mean", "none"]).bitwise_equal
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def test_cohort_of_four_with_a_bad_slide_and_a_complete_output(clients, tmp_path):
    # GIVEN four slides: one unreadable, one whose output is already complete
    bad = tmp_path / "bad.tiff"
    bad.write_bytes(b"not a tiff")
    items = [CohortItem("synthetic:512,seed=1"), CohortItem("synthetic:640,seed=2"),
             CohortItem(str(bad)), CohortItem("synthetic:768,seed=3", mask="auto")]  # fmt: skip
    out = tmp_path / "cohort"
    run = RUN.replace(block=3)
    first = segment(items[0].slide, out=out / items[0].out_name, run=run, client=clients[2])
    stamp = (Path(first.output) / "zarr.json").stat().st_mtime_ns
    # WHEN the cohort runs on the cluster
    report = run_cohort(items, out, run, clients[2], concurrent=2)
    # THEN the bad slide failed alone with its one line, the complete one was skipped untouched
    status = {o.slide: o for o in report.outcomes}
    assert status[str(bad)].status == "failed" and "not a readable TIFF" in status[str(bad)].error
    assert status[items[0].slide].status == "skipped", status[items[0].slide].error
    assert (Path(first.output) / "zarr.json").stat().st_mtime_ns == stamp
    assert {status[i.slide].status for i in items[1:] if i.slide != str(bad)} == {"done"}
    assert Path(report.csv).is_file() and json.loads(Path(report.json).read_text())["slides"]
    # AND running it again skips every finished slide
    again = run_cohort(items, out, run, clients[2], concurrent=2)
    statuses = [o.status for o in again.outcomes]
    errors = [o.error for o in again.outcomes]
    assert statuses == ["skipped", "skipped", "failed", "skipped"], errors
    # AND leaves dask's global scheduler setting as it found it (napari reads with dask)
    assert dask.config.get("scheduler", None) is None


def test_automatic_blocks_balance_workers_and_stay_bounded() -> None:
    from harness.distributed import MAX_BLOCK_SIDE, block_side

    # about four blocks a worker on a 16k output (64 x 64 chunks) ...
    assert block_side((64, 64), 2, None) == 23
    # ... but never larger than the cap on a 200k slide, where a worker's peak rose with them
    assert block_side((782, 782), 2, None) == MAX_BLOCK_SIDE
    assert block_side((782, 782), 2, 300) == 300  # the user's choice stands
