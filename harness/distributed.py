"""One slide across many workers, on dask.distributed.

The driver (:func:`harness.segment.segment` with ``client=``) owns the output as
in one process (lock, identity, completion); the work is the output's blocks
(:func:`harness.blocks.partition`), one dask task each, every task the same
:func:`harness.blocks.run_block` a single process runs. Blocks never share a
chunk, so the workers never write one chunk twice, and every chunk receives
its patches in raster order: the output is bitwise the single-process one
for any worker count and block size.

* **Process policy** (:class:`ProcessPolicy`): a worker plugin applies
  :mod:`harness.policy` once in every worker process (malloc, one torch thread,
  OpenMP passive wait), on a LocalCluster and on any external cluster alike.
* **Progress**: workers report patches done through dask's event log
  (``wsi-harness-progress``), the driver draws one bar for the whole run.
* **Failures**: a worker killed mid-block (OOM, ``kill -9``) loses its task;
  dask reschedules it on another worker, and the re-run finds the chunks the
  dead attempt committed (atomic commits, :mod:`harness.output.state`), so it
  redoes only the rest and the result is still bitwise.
* **Memory**: each worker runs one block at a time under the run budget; a
  LocalCluster's per-worker ``memory_limit`` is the budget plus the worker's
  own baseline (:data:`WORKER_BASELINE`), so dask's 95 % terminate threshold
  only fires on a real leak.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from distributed import WorkerPlugin

from harness.blocks import BlockJob, BlockResult, partition, run_block
from harness.errors import ConfigError
from harness.interrupt import Interrupted, StopRequest

if TYPE_CHECKING:
    from collections.abc import Iterator

    from distributed import Client, Worker

    from harness.config import RunConfig
    from harness.output.session import OutputSession

PROGRESS_TOPIC = "wsi-harness-progress"
WORKER_BASELINE = 768 * 2**20
"""A worker process before any block: interpreter, torch, distributed, the model."""
BLOCKS_PER_WORKER = 4
"""Blocks per worker the automatic block size aims at, for load balance."""
MAX_BLOCK_SIDE = 64
"""Largest automatic block side, in chunks (16,384 px at 256 px chunks).

A block's plan and per-block state grow with its patches: on a 200k slide, four
blocks a worker meant 277-chunk blocks of up to 158k patches, and the workers'
peak RSS rose from 435 to 527 MiB across them. Capped, a worker's peak is what
a 16k slide's blocks need, whatever the slide; the halo re-runs this adds are
about 3 % at 64 chunks a side (reported as ``patch_runs``)."""
REPORT_EVERY_S = 0.5


class ProcessPolicy(WorkerPlugin):
    """Apply :func:`harness.policy.apply` once in each worker process."""

    name = "wsi-harness-policy"

    def __init__(self, threads: int = 1) -> None:
        self.threads = threads

    def setup(self, worker: Worker) -> None:
        """Runs in the worker process when the plugin is registered or the worker starts."""
        from harness import policy

        policy.apply(self.threads)


def worker_memory_limit(run: RunConfig) -> int:
    """A LocalCluster worker's ``memory_limit``: the run budget plus its own baseline."""
    return run.budget + WORKER_BASELINE


@contextlib.contextmanager
def cluster_client(run: RunConfig, cluster: str | None, scheduler: str | None) -> Iterator[Client]:
    """A client on a new LocalCluster (``local:N``) or on the scheduler at ``scheduler``."""
    from distributed import Client, LocalCluster

    from harness.config import parse_cluster

    if cluster and scheduler:
        raise ConfigError("give --cluster or --scheduler, not both")
    if cluster:
        n = parse_cluster(cluster)
        with LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                          memory_limit=worker_memory_limit(run), dashboard_address=":0",
                          silence_logs=40) as lc, \
                Client(lc, set_as_default=False) as client:  # fmt: skip
            client.register_plugin(ProcessPolicy(run.threads or 1))
            yield client
        return
    assert scheduler is not None
    try:
        client = Client(scheduler, timeout=10, set_as_default=False)
    except OSError as exc:
        raise ConfigError(f"cannot reach the dask scheduler at {scheduler}: {exc}") from exc
    with client:
        client.register_plugin(ProcessPolicy(run.threads or 1))
        yield client


def block_side(grid: tuple[int, int], workers: int, chosen: int | None) -> int:
    """Block side in chunks: the user's, or about :data:`BLOCKS_PER_WORKER` blocks a worker
    (at most :data:`MAX_BLOCK_SIDE`).

    Fewer, larger blocks re-run fewer halo patches at their edges; more blocks
    balance load. The result is reported (``blocks``, ``patch_runs``).
    """
    if chosen is not None:
        return chosen
    chunks = grid[0] * grid[1]
    side = math.ceil(math.sqrt(chunks / max(1, BLOCKS_PER_WORKER * workers)))
    return max(1, min(side, MAX_BLOCK_SIDE))


def _task(job: BlockJob) -> BlockResult:
    """A dask task: one block, its progress sent to the driver as events."""
    from distributed import get_worker

    worker = get_worker()
    pending = [0, time.monotonic()]

    def report(n: int) -> None:
        pending[0] += n
        if time.monotonic() - pending[1] >= REPORT_EVERY_S:
            worker.log_event(PROGRESS_TOPIC, {"patches": pending[0]})
            pending[0], pending[1] = 0, time.monotonic()

    result = run_block(job, on_patches=report)
    if pending[0]:
        worker.log_event(PROGRESS_TOPIC, {"patches": pending[0]})
    return result


def run_on_client(
    client: Client, job: BlockJob, session: OutputSession, stop: StopRequest, bar: Any = None
) -> tuple[list[BlockResult], dict[str, Any]]:
    """Run every block of ``job``'s output on ``client``'s cluster; wait, or stop on a signal."""
    from tqdm import tqdm

    if job.config.engine.value == "dense":
        raise ConfigError("the dense reference runs in one process; drop --cluster/--scheduler")
    workers = len(client.scheduler_info(n_workers=-1).get("workers", {})) or 1
    side = block_side(session.store.grid, workers, job.config.block)
    jobs = [replace(job, region=r) for r in partition(session.store.grid, side)]
    bar = bar or tqdm(unit="patch", disable=not job.config.progress, smoothing=0.1)
    client.subscribe_topic(PROGRESS_TOPIC, lambda event: bar.update(event[1]["patches"]))
    futures = [client.submit(_task, j, key=f"wsi-block-{job.run_id}-{j.region.key}", pure=False)
               for j in jobs if j.region is not None]  # fmt: skip
    changed = threading.Event()
    for f in futures:
        f.add_done_callback(lambda _: changed.set())
    try:
        while not all(f.done() for f in futures):
            if stop.requested:
                client.cancel(futures)
                assert stop.signum is not None
                raise Interrupted(stop.signum, int(bar.n), int(bar.total or bar.n))
            # Not distributed.wait: it needs a default client, and Client.as_current
            # sets dask's global config, which concurrent cohort threads then leak.
            changed.wait(0.5)
            changed.clear()
        results: list[BlockResult] = client.gather(futures)
    finally:
        client.unsubscribe_topic(PROGRESS_TOPIC)
        bar.close()
    return results, _per_worker(results, side, len(jobs))


def _per_worker(results: list[BlockResult], side: int, n_blocks: int) -> dict[str, Any]:
    """Peak RSS per worker process (the kernel's ru_maxrss at its last block) and the layout."""
    peaks: dict[str, int] = {}
    for r in results:
        key = f"{r.host}:{r.pid}"
        peaks[key] = max(peaks.get(key, 0), r.peak_rss_bytes)
    return {"block_side_chunks": side, "blocks": n_blocks, "peak_rss_bytes": peaks}
