"""Scaling studies: does peak memory follow the slide size?

Each (size, engine) pair runs ``wsi-harness segment synthetic:SIZExSIZE`` in a
fresh process under :func:`~harness.measure.runner.run_command`, so imports,
allocator state and torch's thread pools never carry over from one run to
the next. The growth gate (:func:`growth_verdict`) compares the whole-tree
sampled peak RSS (``peak_rss_bytes``) of the smallest and largest
streaming runs: boundedness is a slope, and the whole-tree figure is the one
a user's machine feels. The above-baseline figure is recorded beside it.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import psutil

from harness.config import RunConfig
from harness.errors import ConfigError
from harness.measure.runner import Measurement, run_command

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from pathlib import Path

    from harness.engines import Engine

ENGINES = ("streaming", "dense")
"""Our two merge engines; any :mod:`harness.engines` name (``tiatoolbox``, ``monai``,
``module:callable``) is accepted too."""
#: Dense merger bytes per output pixel: float32 sum over 3 classes + float32 count.
DENSE_BYTES_PER_PIXEL = 16
#: Baseline assumed for a dense prediction before any run has reported one
#: (interpreter + torch + zarr, measured about 300 MB on the 2-core machines).
DEFAULT_BASELINE_BYTES = 400 * 2**20


def segment_argv(
    slide: str, out: Path, run: RunConfig, engine: str = "streaming", extra: Sequence[str] = ()
) -> list[str]:
    """The ``wsi-harness segment`` command line of ``run`` (every option explicit), JSON on stdout.

    ``engine`` overrides the run's merge engine (``streaming`` or ``dense``).
    """
    from harness.engines import EngineJob, Ours

    return Ours(engine).argv(EngineJob(slide, out, run, tuple(extra)))


@dataclass(frozen=True)
class ScalingConfig:
    """One scaling study, validated on construction."""

    sizes: tuple[int, ...]
    out_dir: Path
    engines: tuple[str, ...] = ("streaming",)
    segment: RunConfig = field(default_factory=lambda: RunConfig(model="passthrough"))
    extra: tuple[str, ...] = ()
    max_growth: float | None = None
    memray: bool = False
    ram_share: float = 0.5
    keep_outputs: bool = False
    timeout_s: float | None = None

    def __post_init__(self) -> None:
        if not self.sizes or min(self.sizes) < 1:
            raise ConfigError(f"sizes must be positive pixel counts, got {self.sizes}")
        from harness.engines import get_engine

        if not self.engines:
            raise ConfigError("give at least one engine")
        for name in self.engines:
            get_engine(name)  # raises ConfigError naming the choices
        if not 0.0 < self.ram_share <= 1.0:
            raise ConfigError(f"ram_share must be in (0, 1], got {self.ram_share}")
        if self.max_growth is not None and self.max_growth < 0:
            raise ConfigError(f"max_growth must be >= 0, got {self.max_growth}")


@dataclass(frozen=True)
class ScalingRecord:
    """One (size, engine) run, or its skip.

    ``status`` is ``"ok"``, ``"failed"`` or ``"skipped"``; memory figures are
    ``None`` when not measured. ``megapixels_per_s`` is level-0 slide area
    over the segmentor's own ``wall_s`` (interpreter start-up excluded).
    """

    size: int
    engine: str
    status: str
    peak_rss_bytes: int | None = None
    baseline_rss_bytes: int | None = None
    ru_maxrss_bytes: int | None = None
    memray_peak_bytes: int | None = None
    wall_s: float | None = None
    process_wall_s: float | None = None
    megapixels_per_s: float | None = None
    predicted_peak_bytes: int | None = None
    reason: str = ""
    segment: dict[str, Any] | None = None

    @property
    def area(self) -> int:
        """Level-0 slide area in pixels."""
        return self.size * self.size

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        out = {k: getattr(self, k) for k in self.__dataclass_fields__}
        out["peak_above_baseline_bytes"] = (
            None
            if self.peak_rss_bytes is None or self.baseline_rss_bytes is None
            else self.peak_rss_bytes - self.baseline_rss_bytes
        )
        return out


@dataclass(frozen=True)
class GrowthVerdict:
    """Growth of the streaming peak RSS from the smallest to the largest size."""

    engine: str
    smallest_size: int
    largest_size: int
    smallest_peak_bytes: int
    largest_peak_bytes: int
    max_growth: float | None

    @property
    def growth(self) -> float:
        """Relative growth, e.g. 0.03 for 3 %."""
        return self.largest_peak_bytes / self.smallest_peak_bytes - 1.0

    @property
    def passed(self) -> bool:
        """Within ``max_growth`` (always true when no limit was set; the limit itself passes)."""
        return self.max_growth is None or self.growth <= self.max_growth + 1e-12

    def describe(self) -> str:
        """One line for the console."""
        limit = "" if self.max_growth is None else f" (limit {self.max_growth:.1%})"
        verdict = "ok" if self.passed else "FAIL"
        return (
            f"{self.engine} peak RSS growth {self.smallest_size} -> {self.largest_size}: "
            f"{self.growth:+.1%}{limit}: {verdict}"
        )


def growth_verdict(
    records: Sequence[ScalingRecord], max_growth: float | None, engine: str = "streaming"
) -> GrowthVerdict | None:
    """Compare the peak RSS of the smallest and largest successful ``engine`` runs.

    Returns
    -------
    GrowthVerdict or None
        ``None`` when fewer than two distinct sizes ran successfully.
    """
    ok = sorted(
        (r for r in records if r.engine == engine and r.status == "ok"), key=lambda r: r.size
    )
    if len(ok) < 2 or ok[0].size == ok[-1].size:
        return None
    first, last = ok[0], ok[-1]
    assert first.peak_rss_bytes is not None and last.peak_rss_bytes is not None
    return GrowthVerdict(
        engine, first.size, last.size, first.peak_rss_bytes, last.peak_rss_bytes, max_growth
    )


def study_exit_code(records: Sequence[ScalingRecord], verdict: GrowthVerdict | None) -> int:
    """1 if any run failed or the growth verdict failed, else 0 (skips are not failures)."""
    failed = any(r.status == "failed" for r in records)
    return 1 if failed or (verdict is not None and not verdict.passed) else 0


def parse_growth(text: str) -> float:
    """Parse ``"5%"`` or ``"0.05"`` as a fraction.

    Raises
    ------
    ConfigError
        If ``text`` is not a non-negative number or percentage.
    """
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise ConfigError(f"max growth must look like 5% or 0.05, got {text!r}") from None
    if value < 0:
        raise ConfigError(f"max growth must be >= 0, got {text!r}")
    return value


def segment_command_available() -> bool:
    """Whether ``wsi-harness segment`` is registered and can open a slide."""
    from harness.cli import build_parser

    try:
        from harness.slides import open_slide  # type: ignore[attr-defined,unused-ignore]  # noqa: F401
    except ImportError:
        return False

    parser = build_parser()
    sub = next((a for a in parser._actions if a.dest == "command"), None)
    return sub is not None and "segment" in (sub.choices or {})


def output_scale(slide: str, mpp: float) -> float:
    """Output pixels per level-0 pixel: ``(slide mpp / mpp) ** 2``, capped at 1.

    Falls back to 1 (the conservative answer) if the slide cannot be opened.
    """
    try:
        from harness.slides import open_slide  # type: ignore[attr-defined,unused-ignore]

        slide_mpp = float(open_slide(slide).mpp)
    except Exception:  # slides area not landed, or no mpp: assume output == level 0
        return 1.0
    return min(1.0, (slide_mpp / mpp) ** 2)


def predict_dense_peak(size: int, baseline_bytes: int, scale: float = 1.0) -> int:
    """Predicted dense-engine peak: baseline + 16 B per output pixel."""
    return baseline_bytes + int(DENSE_BYTES_PER_PIXEL * size * size * scale)


def _record(size: int, engine: str, measured: Measurement) -> ScalingRecord:
    """Turn one measured segmentation into a record."""
    if measured.returncode != 0:
        why = "timed out" if measured.timed_out else f"exit {measured.returncode}"
        tail = measured.stderr.strip().splitlines()[-1:] or [""]
        return ScalingRecord(size, engine, "failed", reason=f"{why}: {tail[0][:200]}")
    seg = measured.stdout_json()
    wall = float(seg.get("wall_s") or measured.wall_s)
    return ScalingRecord(
        size,
        engine,
        "ok",
        peak_rss_bytes=measured.peak_rss_bytes,
        baseline_rss_bytes=measured.baseline_rss_bytes,
        ru_maxrss_bytes=measured.ru_maxrss_bytes,
        memray_peak_bytes=None if measured.memray is None else measured.memray.peak_bytes,
        wall_s=wall,
        process_wall_s=measured.wall_s,
        megapixels_per_s=size * size / 1e6 / wall if wall > 0 else None,
        segment=seg,
    )


def _slide(config: ScalingConfig, size: int, engine: Engine) -> str:
    """``synthetic:SxS`` for engines that read it; else a pyramidal TIFF under ``out/slides``."""
    if not engine.needs_file:
        return f"synthetic:{size}x{size}"
    from harness.measure.slides import synthetic_job

    return str(synthetic_job(size, config.out_dir / "slides", config.segment.plan.mpp or 0.5).path)


def run_one(config: ScalingConfig, size: int, engine: str) -> ScalingRecord:
    """Run ``engine`` once on a ``size`` x ``size`` synthetic slide and record it."""
    from harness.engines import EngineJob, Ours, get_engine

    eng = get_engine(engine)
    why = eng.unavailable()
    if why:
        return ScalingRecord(size, engine, "skipped", reason=why)
    runs = config.out_dir / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    name = _file_name(engine)
    out = runs / (f"{name}-{size}.zarr" if isinstance(eng, Ours) else f"{name}-{size}")
    capture = None
    if config.memray and isinstance(eng, Ours):  # memray runs in our venv only
        capture = config.out_dir / "memray" / f"{name}-{size}.bin"
        capture.parent.mkdir(parents=True, exist_ok=True)
    argv = eng.argv(EngineJob(_slide(config, size, eng), out, config.segment, config.extra))
    measured = run_command(argv, memray_file=capture, timeout_s=config.timeout_s, aggregate=True)
    if not config.keep_outputs:
        shutil.rmtree(out, ignore_errors=True)
    return _record(size, engine, measured)


def _file_name(engine: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in engine)


def _skip_reason(
    config: ScalingConfig, size: int, engine: str, baseline: int
) -> ScalingRecord | None:
    """A skip record when a run is predicted to exceed the safe share of RAM."""
    from harness.engines import get_engine

    if engine == "dense":
        scale = output_scale(f"synthetic:{size}x{size}", config.segment.plan.mpp or 0.5)
        predicted: int | None = predict_dense_peak(size, baseline, scale)
    else:  # peers' slides are written at the processing mpp
        predicted = get_engine(engine).predict_peak(size * size)
    safe = int(config.ram_share * psutil.virtual_memory().total)
    if predicted is None or predicted <= safe:
        return None
    reason = f"predicted {predicted / 2**30:.1f} GiB > {config.ram_share:.0%} of RAM"
    return ScalingRecord(size, engine, "skipped", predicted_peak_bytes=predicted, reason=reason)


def run_scaling(
    config: ScalingConfig, progress: Callable[[str], None] | None = None
) -> list[ScalingRecord]:
    """Run every (size, engine) pair, smallest first, and return the records."""
    records: list[ScalingRecord] = []
    baselines: list[int] = []  # dense predictions use the largest baseline seen so far
    pairs = [(s, e) for s in sorted(set(config.sizes)) for e in config.engines]
    for i, (size, engine) in enumerate(pairs, 1):
        baseline = max(baselines, default=DEFAULT_BASELINE_BYTES)
        record = _skip_reason(config, size, engine, baseline) or run_one(config, size, engine)
        if record.baseline_rss_bytes is not None:
            baselines.append(record.baseline_rss_bytes)
        records.append(record)
        if progress is not None:
            progress(f"[{i}/{len(pairs)}] {progress_line(record)}")
    return records


def progress_line(r: ScalingRecord) -> str:
    """One line describing a finished or skipped run."""
    head = f"{r.engine:9s} {r.size:>6d}px"
    if r.status != "ok":
        return f"{head} {r.status}: {r.reason}"
    assert r.peak_rss_bytes is not None and r.wall_s is not None
    return f"{head} peak {r.peak_rss_bytes / 2**20:8.1f} MiB  wall {r.wall_s:7.2f} s"


def write_json(records: Sequence[ScalingRecord], verdict: GrowthVerdict | None, path: Path) -> Path:
    """Write ``scaling.json``: every record and the growth verdict."""
    doc = {
        "records": [r.to_dict() for r in records],
        "growth": None
        if verdict is None
        else {"growth": verdict.growth, "passed": verdict.passed, **verdict.__dict__},
        "ram_total_bytes": psutil.virtual_memory().total,
    }
    path.write_text(json.dumps(doc, indent=2, default=str))
    return path


def format_table(records: Sequence[ScalingRecord]) -> str:
    """A plain-text table of the records (MiB, seconds, Mpx/s)."""

    def mib(v: int | None) -> str:
        return "-" if v is None else f"{v / 2**20:.1f}"

    rows = [("size", "engine", "status", "peak MiB", "base MiB", "maxrss MiB", "memray MiB",
             "wall s", "Mpx/s")]  # fmt: skip
    for r in records:
        rows.append((
            str(r.size), r.engine, r.status,
            mib(r.peak_rss_bytes) if r.status == "ok" else "~" + mib(r.predicted_peak_bytes),
            mib(r.baseline_rss_bytes), mib(r.ru_maxrss_bytes), mib(r.memray_peak_bytes),
            "-" if r.wall_s is None else f"{r.wall_s:.2f}",
            "-" if r.megapixels_per_s is None else f"{r.megapixels_per_s:.1f}",
        ))  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in rows
    )
