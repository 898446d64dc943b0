"""One slide on a LocalCluster against one process (the same slide, model and budget).

``time_segment`` runs ``segment(..., client=...)`` on a cluster started in
``setup`` (its start-up is not timed) or in this process; ``track_worker_peak``
is the largest worker's kernel peak RSS. Compare ``local:2`` with ``single``
as a ratio measured in one asv run: the target on 2 cores is a 1.7x speedup at
16384² with tiny-cnn (``scripts/cluster_speedup.py`` measures the same against
every single-process configuration).
"""

from __future__ import annotations

from typing import Any

from benchmarks.common import OneShot, Scratch, grid, make_slide, require


class ClusterSegment(OneShot):
    """tiny-cnn, labels only, 256 MiB budget: single process vs ``local:N``."""

    params = (grid(2048, slow=(16384,)), grid("single", "local:2"))
    param_names = ("size", "mode")
    timeout = 1800

    def setup(self, size: int, mode: str) -> None:
        """Start the cluster (untimed) and describe the slide."""
        self.scratch = Scratch()
        run_config = require("harness.config", "RunConfig")
        require("harness.distributed", "ProcessPolicy")
        self.run = run_config(model="tiny-cnn", probabilities=False, progress=False,
                              threads=1 if mode != "single" else None)  # fmt: skip
        self.slide = make_slide(size)
        self.cluster: Any = None
        self.client: Any = None
        if mode != "single":
            from distributed import Client, LocalCluster

            from harness.distributed import ProcessPolicy

            n = int(mode.split(":")[1])
            self.cluster = LocalCluster(n_workers=n, threads_per_worker=1,
                                        dashboard_address=":0", silence_logs=40)  # fmt: skip
            self.client = Client(self.cluster, set_as_default=False)
            self.client.register_plugin(ProcessPolicy(1))

    def teardown(self, size: int, mode: str) -> None:
        """Stop the cluster, delete the output."""
        if self.client is not None:
            self.client.close()
            self.cluster.close()
        self.scratch.close()

    def _segment(self) -> Any:
        segment = require("harness.segment", "segment")
        out = self.scratch.path("out.zarr")
        return segment(self.slide.spec, out=out, run=self.run.replace(overwrite=True),
                       client=self.client)  # fmt: skip

    def time_segment(self, size: int, mode: str) -> None:
        """Wall time of one run (cluster start-up excluded)."""
        self._segment()

    def track_worker_peak(self, size: int, mode: str) -> float:
        """Largest worker's peak RSS in MiB (this process's for ``single``)."""
        import resource

        result = self._segment()
        peaks = result.workers.get("peak_rss_bytes", {})
        own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return float(max(peaks.values()) if peaks else own) / 2**20

    track_worker_peak.unit = "MiB"  # type: ignore[attr-defined]
