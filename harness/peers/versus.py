"""Run several engines side by side on the same slides and grid (``wsi-harness versus``).

Each engine (:mod:`harness.engines`: ours, the dense reference, TIAToolbox,
MONAI's two mergers, or ``module:callable``) runs in a fresh process under
:func:`harness.measure.run_command` (peak RSS of the process tree, the
kernel's ``ru_maxrss``, wall and CPU time), peers in their own virtualenvs.
An engine whose peak grows with the slide is first *predicted* and skipped,
with the reason recorded, when the prediction exceeds a safe share of RAM;
each measured run raises that engine's prediction if it was under.
Every engine's labels are then compared with the reference engine's
(``ours`` when it runs, else the first named).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.engines import Engine, EngineJob, Monai, PeakModel, TIAToolbox, parse_engines
from harness.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from harness.config import RunConfig
    from harness.measure.slides import SlideJob
    from harness.peers.compare import Agreement

DEFAULT_ENGINES = ("ours", "tiatoolbox")
GB = 1e9


@dataclass(frozen=True)
class Decision:
    """Whether to run an engine on one slide, and why."""

    run: bool
    predicted_peak_bytes: int | None
    limit_bytes: int
    reason: str


def decide_peer(
    area_px: int, model: PeakModel, total_bytes: int, available_bytes: int, share: float
) -> Decision:
    """Run only if the predicted peak fits ``share`` of RAM and what is free now."""
    return decide(model.predict(area_px), total_bytes, available_bytes, share)


def decide(predicted: int | None, total_bytes: int, available_bytes: int, share: float) -> Decision:
    """Run when nothing is predicted (a bounded engine) or the prediction fits.

    Parameters
    ----------
    predicted
        Predicted peak in bytes, ``None`` for an engine bounded by design.
    total_bytes, available_bytes
        Machine RAM and RAM available at this moment (others may be using it).
    share
        Largest fraction of total RAM an engine may be predicted to use.
    """
    share_limit = int(share * total_bytes)
    free_limit = int(0.9 * available_bytes)
    limit = min(share_limit, free_limit)
    if predicted is None or predicted <= limit:
        return Decision(True, predicted, limit, "")
    why = f"{share:.0%} of RAM" if limit == share_limit else "90% of what is available now"
    reason = f"skipped: predicted peak {predicted / GB:.1f} GB exceeds {limit / GB:.1f} GB ({why})"
    return Decision(False, predicted, limit, reason)


@dataclass(frozen=True)
class VersusConfig:
    """One side-by-side study: the engines, the model, the grid, and how to run them."""

    model: str = "tiny-cnn"
    patch: int = 256
    stride: int = 128
    mpp: float = 0.5
    budget: str | None = None
    batch_size: int = 8
    workers: int = 0
    """Our loader workers (``segment --workers``); peers keep their own defaults."""
    ram_share: float = 0.5
    peer_probabilities: bool = False
    nice: int = 0
    timeout_s: float | None = None
    keep_outputs: bool = False
    engines: tuple[str, ...] = DEFAULT_ENGINES
    peer_pythons: tuple[tuple[str, str], ...] = ()
    """``(engine, python)`` overrides of a peer's virtualenv python."""

    def __post_init__(self) -> None:
        if not 0 < self.stride <= self.patch:
            raise ConfigError(f"stride must be in 1..patch ({self.patch}), got {self.stride}")
        if not self.mpp > 0:
            raise ConfigError(f"mpp must be > 0, got {self.mpp}")
        if not 0 < self.ram_share <= 0.9:
            raise ConfigError(f"ram share must be in (0, 0.9], got {self.ram_share}")
        if not 0 <= self.nice <= 19:
            raise ConfigError(f"nice must be in 0..19, got {self.nice}")
        if not self.engines:
            raise ConfigError("give at least one engine")
        object.__setattr__(self, "engines", tuple(e.name for e in self.build_engines()))

    def build_engines(self) -> tuple[Engine, ...]:
        """The engines, in order, with any python overrides applied."""
        pythons = dict(self.peer_pythons)
        out: list[Engine] = []
        for engine in parse_engines(list(self.engines)):
            python = pythons.get(engine.name)
            if python and isinstance(engine, TIAToolbox | Monai):
                engine = replace(engine, python=Path(python).absolute())
            out.append(engine)
        return tuple(out)

    @property
    def reference(self) -> str:
        """The engine every other one is compared with: ``ours`` if it runs, else the first."""
        return "ours" if "ours" in self.engines else self.engines[0]

    def run_config(self) -> RunConfig:
        """Our run settings for this study: no mask, labels only unless probabilities are asked."""
        from harness.config import DEFAULT_BUDGET, RunConfig
        from harness.plan import PlanConfig
        from harness.units import parse_bytes

        return RunConfig(
            plan=PlanConfig(patch=self.patch, stride=self.stride, mpp=self.mpp),
            model=self.model,
            budget=parse_bytes(self.budget) if self.budget else DEFAULT_BUDGET,
            mask="none",
            batch_size=self.batch_size,
            workers=self.workers,
            probabilities=self.peer_probabilities,
        )


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
    """Every engine on one slide, and how far each agrees with the reference engine."""

    size: int
    slide: str
    runs: dict[str, EngineRun]
    agreement: dict[str, Agreement | None] = field(default_factory=dict)
    reference: str = "ours"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "size": self.size,
            "slide": self.slide,
            "reference": self.reference,
            "runs": {k: r.to_dict() for k, r in self.runs.items()},
            "agreement": {k: None if a is None else a.to_dict() for k, a in self.agreement.items()},
        }


def _nice(cfg: VersusConfig) -> list[str]:
    return ["nice", "-n", str(cfg.nice)] if cfg.nice else []


def measure_engine(
    engine: str, size: int, area: int, argv: list[str], timeout_s: float | None, output: Path
) -> EngineRun:
    """Run ``argv`` in a fresh process under :mod:`harness.measure` and record it."""
    from harness.errors import HarnessError
    from harness.measure import run_command

    # Let the previous run's dirty pages (a multi-GB zarr) reach the disk first, so
    # its writeback is not billed to this run.
    os.sync()
    m = run_command(argv, timeout_s=timeout_s)
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


@dataclass
class _Predictions:
    """Per engine, how far its measured peaks exceeded its own prediction (never below 0)."""

    under: dict[str, int] = field(default_factory=dict)

    def predict(self, engine: Engine, area_px: int) -> int | None:
        base = engine.predict_peak(area_px)
        return None if base is None else base + self.under.get(engine.name, 0)

    def learn(self, engine: Engine, run: EngineRun) -> None:
        base = engine.predict_peak(run.area_px)
        if base is None or not (run.ok and run.peak_rss_bytes):
            return
        gap = max(0, run.peak_rss_bytes - base)
        self.under[engine.name] = max(self.under.get(engine.name, 0), gap)


def _output_path(out_dir: Path, engine: Engine, job: SlideJob) -> Path:
    # TIAToolbox is told a folder and names the zarr itself; the others are told the zarr.
    stem = job.path.stem
    return out_dir / engine.name / (stem if isinstance(engine, TIAToolbox) else f"{stem}.zarr")


def run_engine(
    cfg: VersusConfig, engine: Engine, job: SlideJob, out_dir: Path, predicted: int | None
) -> EngineRun:
    """One engine on one slide: skipped (unavailable, or predicted not to fit) or measured."""
    import psutil

    base = EngineRun(engine.name, job.size, job.area_px, predicted_peak_bytes=predicted)
    why = engine.unavailable()
    if why:
        return replace(base, skipped=f"skipped: {why}")
    vm = psutil.virtual_memory()
    decision = decide(predicted, vm.total, vm.available, cfg.ram_share)
    if not decision.run:
        return replace(base, skipped=decision.reason)
    dest = _output_path(out_dir, engine, job)
    if dest.exists():
        shutil.rmtree(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    ejob = EngineJob(str(job.path), dest, cfg.run_config())
    argv = [*_nice(cfg), *engine.argv(ejob)]
    run = measure_engine(engine.name, job.size, job.area_px, argv, cfg.timeout_s, dest)
    output = engine.output(ejob, run.detail) if run.ok else None
    return replace(
        run, output=None if output is None else str(output), predicted_peak_bytes=predicted
    )


def _compare(
    cfg: VersusConfig, engines: dict[str, Engine], ref: EngineRun, other: EngineRun
) -> Agreement | None:
    if not (ref.ok and other.ok and ref.output and other.output):
        return None
    from harness.peers.compare import compare_outputs, open_output

    mine = open_output(Path(ref.output), engines[ref.engine].labels_key)
    theirs = open_output(Path(other.output), engines[other.engine].labels_key)
    return compare_outputs(mine, theirs, out=cfg.patch, stride=cfg.stride)


def _order(engines: Sequence[Engine]) -> list[Engine]:
    """Engines that grow with the slide first, while RAM is freest; the given order otherwise."""
    return sorted(engines, key=lambda e: e.predict_peak(1) is None)


def run_slide(
    cfg: VersusConfig, job: SlideJob, out_dir: Path, predictions: _Predictions | None = None
) -> SizeResult:
    """Run every engine on one slide, then compare each with the reference engine."""
    predictions = predictions or _Predictions()
    engines = {e.name: e for e in cfg.build_engines()}
    runs: dict[str, EngineRun] = {}
    for engine in _order(list(engines.values())):
        predicted = predictions.predict(engine, job.area_px)
        runs[engine.name] = run = run_engine(cfg, engine, job, out_dir, predicted)
        predictions.learn(engine, run)
    runs = {name: runs[name] for name in cfg.engines}  # the order the user gave
    ref = runs[cfg.reference]
    agreement = {
        name: _compare(cfg, engines, ref, run) for name, run in runs.items() if name != ref.engine
    }
    if not cfg.keep_outputs:
        for engine in engines.values():
            dest = _output_path(out_dir, engine, job)
            shutil.rmtree(dest, ignore_errors=True)
            with contextlib.suppress(OSError):  # other slides' outputs may still be there
                dest.parent.rmdir()
    return SizeResult(job.size, str(job.path), runs, agreement, cfg.reference)


def run_study(cfg: VersusConfig, jobs: Sequence[SlideJob], out_dir: Path) -> list[SizeResult]:
    """Run every slide in order of size; print one line per slide as it finishes."""
    predictions = _Predictions()
    results: list[SizeResult] = []
    for job in sorted(jobs, key=lambda j: j.area_px):
        result = run_slide(cfg, job, out_dir, predictions)
        results.append(result)
        print(summary_line(result), flush=True)
    return results


def summary_line(result: SizeResult) -> str:
    """One progress line per slide."""
    parts = [f"{result.size:>6}"]
    for run in result.runs.values():
        if run.skipped:
            parts.append(f"{run.engine}: {run.skipped}")
        elif not run.ok:
            parts.append(f"{run.engine}: failed (status {run.returncode})")
        else:
            rss = (run.peak_rss_bytes or 0) / GB
            parts.append(f"{run.engine}: {rss:.2f} GB, {run.wall_s or 0:.1f} s")
    return " | ".join(parts)
