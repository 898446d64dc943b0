"""Run our engine and a peer (TIAToolbox) side by side on the same slides and grid.

Each engine runs in a fresh process under :func:`harness.measure.run_command`
(peak RSS of the process tree, the kernel's ``ru_maxrss``, wall and CPU time).
TIAToolbox runs in its own virtualenv (``scripts/peer_env.sh tiatoolbox``)
through :mod:`harness.peers.tiatoolbox_runner`. Because its peak grows with
the slide, each peer run is first *predicted* (:class:`PeakModel`) and skipped,
with the reason recorded, when the prediction exceeds a safe share of RAM.
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from harness.peers.compare import Agreement

ENGINES = ("ours", "tiatoolbox")
REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_PEER_PYTHON = REPO_ROOT / "peer" / "tiatoolbox" / "bin" / "python"
RUNNER = Path(__file__).resolve().with_name("tiatoolbox_runner.py")
GB = 1e9


@dataclass(frozen=True)
class PeakModel:
    """Predicted whole-process peak RSS of TIAToolbox: ``base + bytes_per_px * area``.

    Defaults come from TIAToolbox 2.1.3 on 2 cores (tiny model, patch 256,
    stride 128): 2.1 GB at 4k², 4.5 GB at 8k², 11.2 GB at 16k², 1.3 GB for
    import and model alone; 45 B/px over-predicts the largest, which is the
    safe side.
    """

    base_bytes: float = 1.3 * GB
    bytes_per_px: float = 45.0

    def predict(self, area_px: int) -> int:
        """Predicted peak in bytes for a slide of ``area_px`` pixels at processing mpp."""
        return int(self.base_bytes + self.bytes_per_px * area_px)

    def calibrated(self, measured: Sequence[tuple[int, int]]) -> PeakModel:
        """Raise the base so no ``(area_px, peak_bytes)`` measurement is under-predicted."""
        base = max([self.base_bytes, *(p - self.bytes_per_px * a for a, p in measured)])
        return replace(self, base_bytes=base)


@dataclass(frozen=True)
class Decision:
    """Whether to run the peer on one slide, and why."""

    run: bool
    predicted_peak_bytes: int
    limit_bytes: int
    reason: str


def decide_peer(
    area_px: int, model: PeakModel, total_bytes: int, available_bytes: int, share: float
) -> Decision:
    """Run the peer only if its predicted peak fits ``share`` of RAM and what is free now.

    Parameters
    ----------
    area_px
        Slide area at the processing resolution.
    model
        Peak predictor.
    total_bytes, available_bytes
        Machine RAM and RAM available at this moment (others may be using it).
    share
        Largest fraction of total RAM the peer may be predicted to use.
    """
    predicted = model.predict(area_px)
    share_limit = int(share * total_bytes)
    free_limit = int(0.9 * available_bytes)
    limit = min(share_limit, free_limit)
    if predicted <= limit:
        return Decision(True, predicted, limit, "")
    why = f"{share:.0%} of RAM" if limit == share_limit else "90% of what is available now"
    reason = f"skipped: predicted peak {predicted / GB:.1f} GB exceeds {limit / GB:.1f} GB ({why})"
    return Decision(False, predicted, limit, reason)


@dataclass(frozen=True)
class VersusConfig:
    """One side-by-side study: the model, the grid, and how to run the peer."""

    model: str = "tiny-cnn"
    patch: int = 256
    stride: int = 128
    mpp: float = 0.5
    budget: str | None = None
    batch_size: int = 8
    peer_python: Path = DEFAULT_PEER_PYTHON
    ram_share: float = 0.5
    peer_probabilities: bool = False
    nice: int = 0
    timeout_s: float | None = None
    keep_outputs: bool = False
    engines: tuple[str, ...] = ENGINES

    def __post_init__(self) -> None:
        if not 0 < self.stride <= self.patch:
            raise ConfigError(f"stride must be in 1..patch ({self.patch}), got {self.stride}")
        if not self.mpp > 0:
            raise ConfigError(f"mpp must be > 0, got {self.mpp}")
        if not 0 < self.ram_share <= 0.9:
            raise ConfigError(f"ram share must be in (0, 0.9], got {self.ram_share}")
        if not 0 <= self.nice <= 19:
            raise ConfigError(f"nice must be in 0..19, got {self.nice}")
        bad = set(self.engines) - set(ENGINES)
        if bad or not self.engines:
            raise ConfigError(f"engines must be among {', '.join(ENGINES)}, got {self.engines}")


@dataclass(frozen=True)
class EngineRun:
    """One engine on one slide: measured, failed, or skipped with a reason."""

    engine: str
    size: int
    area_px: int
    argv: tuple[str, ...] = ()
    skipped: str = ""
    predicted_peak_bytes: int | None = None
    returncode: int | None = None
    peak_rss_bytes: int | None = None
    ru_maxrss_bytes: int | None = None
    wall_s: float | None = None
    cpu_s: float | None = None
    output: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Ran and exited with status 0."""
        return self.returncode == 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        out = dict(vars(self))
        out["argv"] = list(self.argv)
        return out


@dataclass(frozen=True)
class SizeResult:
    """Both engines on one slide, and how far their outputs agree."""

    size: int
    slide: str
    ours: EngineRun
    peer: EngineRun
    agreement: Agreement | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "size": self.size,
            "slide": self.slide,
            "ours": self.ours.to_dict(),
            "tiatoolbox": self.peer.to_dict(),
            "agreement": None if self.agreement is None else self.agreement.to_dict(),
        }


def _nice(cfg: VersusConfig) -> list[str]:
    return ["nice", "-n", str(cfg.nice)] if cfg.nice else []


def ours_argv(cfg: VersusConfig, slide: Path, out: Path) -> list[str]:
    """Command line of our engine on ``slide``, writing ``out`` (a zarr group)."""
    argv = [*_nice(cfg), sys.executable, "-m", "harness", "segment", str(slide)]
    argv += ["--out", str(out), "--model", cfg.model, "--patch", str(cfg.patch)]
    argv += ["--stride", str(cfg.stride), "--mpp", str(cfg.mpp), "--mask", "none"]
    argv += ["--engine", "streaming", "--json", "--overwrite", "--no-progress"]
    # The same outputs as the peer's run: its default writes the label map only.
    argv += [] if cfg.peer_probabilities else ["--labels-only"]
    return argv + (["--budget", cfg.budget] if cfg.budget else [])


def peer_argv(cfg: VersusConfig, slide: Path, out_dir: Path) -> list[str]:
    """Command line of the TIAToolbox runner on ``slide``, writing under ``out_dir``."""
    argv = [*_nice(cfg), str(cfg.peer_python), str(RUNNER), str(slide)]
    argv += ["--out-dir", str(out_dir), "--model", cfg.model, "--patch", str(cfg.patch)]
    argv += ["--stride", str(cfg.stride), "--mpp", str(cfg.mpp)]
    argv += ["--batch-size", str(cfg.batch_size)]
    return argv + (["--probabilities"] if cfg.peer_probabilities else [])


def synth_argv(size: int, path: Path, mpp: float) -> list[str]:
    """Command line writing a ``size`` x ``size`` synthetic JPEG pyramidal TIFF."""
    argv = [sys.executable, "-m", "harness", "synth", str(path), "--size", str(size)]
    return [*argv, "--mpp", str(mpp), "--compression", "jpeg", "--no-progress"]


def measure_engine(
    engine: str, size: int, area: int, argv: list[str], timeout_s: float | None, output: Path
) -> EngineRun:
    """Run ``argv`` in a fresh process under :mod:`harness.measure` and record it."""
    from harness.errors import HarnessError
    from harness.measure import run_command

    # Let the previous run's dirty pages (a multi-GB zarr) reach the disk first, so
    # its writeback is not billed to this run.
    os.sync()
    m = run_command(argv, cwd=REPO_ROOT, timeout_s=timeout_s)
    try:
        detail = m.stdout_json()
    except HarnessError:  # a failed run prints no JSON; keep the stderr tail instead
        detail = {"stderr_tail": m.stderr.strip()[-2000:]}
    if m.returncode != 0:
        detail.setdefault("stderr_tail", m.stderr.strip()[-2000:])
    return EngineRun(
        engine=engine,
        size=size,
        area_px=area,
        argv=tuple(argv),
        returncode=m.returncode,
        peak_rss_bytes=m.peak_rss_bytes,
        ru_maxrss_bytes=m.ru_maxrss_bytes,
        wall_s=m.wall_s,
        cpu_s=m.cpu_s,
        output=str(output),
        detail=detail,
    )


@dataclass(frozen=True)
class SlideJob:
    """One slide of a study: its label (side in pixels), path and area at processing mpp."""

    size: int
    path: Path
    area_px: int


def _run_ours(cfg: VersusConfig, job: SlideJob, out_dir: Path) -> EngineRun:
    if "ours" not in cfg.engines:
        return EngineRun("ours", job.size, job.area_px, skipped="skipped: not requested")
    out = out_dir / "ours" / f"{job.path.stem}.zarr"
    out.parent.mkdir(parents=True, exist_ok=True)
    argv = ours_argv(cfg, job.path, out)
    return measure_engine("ours", job.size, job.area_px, argv, cfg.timeout_s, out)


def _run_peer(cfg: VersusConfig, job: SlideJob, out_dir: Path, decision: Decision) -> EngineRun:
    base = EngineRun(
        "tiatoolbox", job.size, job.area_px, predicted_peak_bytes=decision.predicted_peak_bytes
    )
    if "tiatoolbox" not in cfg.engines:
        return replace(base, skipped="skipped: not requested")
    if not decision.run:
        return replace(base, skipped=decision.reason)
    if not cfg.peer_python.is_file():
        why = f"skipped: no peer python at {cfg.peer_python} (run scripts/peer_env.sh tiatoolbox)"
        return replace(base, skipped=why)
    dest = out_dir / "tiatoolbox" / job.path.stem
    if dest.exists():
        shutil.rmtree(dest)
    argv = peer_argv(cfg, job.path, dest)
    run = measure_engine("tiatoolbox", job.size, job.area_px, argv, cfg.timeout_s, dest)
    out = run.detail.get("output")
    return replace(
        run, output=str(out) if out else None, predicted_peak_bytes=decision.predicted_peak_bytes
    )


def _compare(cfg: VersusConfig, ours: EngineRun, peer: EngineRun) -> Agreement | None:
    if not (ours.ok and peer.ok and ours.output and peer.output):
        return None
    from harness.peers.compare import compare_outputs, open_output

    mine = open_output(Path(ours.output), "labels")
    theirs = open_output(Path(peer.output), "predictions")
    return compare_outputs(mine, theirs, out=cfg.patch, stride=cfg.stride)


def run_slide(cfg: VersusConfig, job: SlideJob, out_dir: Path, model: PeakModel) -> SizeResult:
    """Run both engines on one slide (peer first, while RAM is freest), then compare."""
    import psutil

    vm = psutil.virtual_memory()
    decision = decide_peer(job.area_px, model, vm.total, vm.available, cfg.ram_share)
    peer = _run_peer(cfg, job, out_dir, decision)
    ours = _run_ours(cfg, job, out_dir)
    agreement = _compare(cfg, ours, peer)
    if not cfg.keep_outputs:
        for run in (ours, peer):
            if run.output and Path(run.output).exists():
                shutil.rmtree(Path(run.output))
    return SizeResult(job.size, str(job.path), ours, peer, agreement)


def run_study(
    cfg: VersusConfig, jobs: Sequence[SlideJob], out_dir: Path, model: PeakModel | None = None
) -> list[SizeResult]:
    """Run every slide in order of size, recalibrating the peak model on each peer run."""
    model = model or PeakModel()
    results: list[SizeResult] = []
    for job in sorted(jobs, key=lambda j: j.area_px):
        result = run_slide(cfg, job, out_dir, model)
        results.append(result)
        measured = [
            (r.peer.area_px, r.peer.peak_rss_bytes)
            for r in results
            if r.peer.ok and r.peer.peak_rss_bytes
        ]
        model = model.calibrated(measured)
        print(summary_line(result), flush=True)
    return results


def summary_line(result: SizeResult) -> str:
    """One progress line per slide."""
    parts = [f"{result.size:>6}"]
    for run in (result.ours, result.peer):
        if run.skipped:
            parts.append(f"{run.engine}: {run.skipped}")
        elif not run.ok:
            parts.append(f"{run.engine}: failed (status {run.returncode})")
        else:
            rss = (run.peak_rss_bytes or 0) / GB
            parts.append(f"{run.engine}: {rss:.2f} GB, {run.wall_s or 0:.1f} s")
    return " | ".join(parts)


def slide_job(path: Path, mpp: float, size: int | None = None) -> SlideJob:
    """Describe a TIFF slide: its area at processing ``mpp`` and a size label.

    The slide's own mpp comes from its XResolution tag (centimetre or inch
    units); without one the slide is taken to be at ``mpp`` already.
    """
    import tifffile

    with tifffile.TiffFile(path) as tif:
        page: Any = tif.pages[0]
        h, w = int(page.imagelength), int(page.imagewidth)
        slide_mpp = _tiff_mpp(page) or mpp
    scale = slide_mpp / mpp
    ph, pw = max(1, round(h * scale)), max(1, round(w * scale))
    return SlideJob(size or max(ph, pw), path, ph * pw)


def _tiff_mpp(page: Any) -> float | None:
    tags = page.tags
    if "XResolution" not in tags or "ResolutionUnit" not in tags:
        return None
    num, den = tags["XResolution"].value
    per_unit = num / den if den else 0.0
    unit = int(tags["ResolutionUnit"].value)
    microns = {2: 25400.0, 3: 10000.0}.get(unit)
    return microns / per_unit if microns and per_unit > 0 else None


def synthetic_job(size: int, slides_dir: Path, mpp: float) -> SlideJob:
    """A ``size`` x ``size`` synthetic slide under ``slides_dir``, written if missing."""
    from harness.errors import HarnessError
    from harness.measure import run_command

    path = slides_dir / f"synthetic-{size}.tiff"
    if not path.is_file():
        slides_dir.mkdir(parents=True, exist_ok=True)
        m = run_command(synth_argv(size, path, mpp), cwd=REPO_ROOT)
        if m.returncode != 0 or not path.is_file():
            raise HarnessError(f"could not write synthetic slide {path}: {m.stderr.strip()[-400:]}")
    return slide_job(path, mpp, size)
