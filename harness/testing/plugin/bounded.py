"""``assert_bounded``: does a workload's peak memory follow the slide size?

A single small figure proves nothing about a bound; a slope does. So the
workload runs once per slide size, each time in a *fresh process* under
:func:`harness.measure.run_command` or :func:`harness.measure.run_callable`
(imports, allocator state and thread pools never carry over from one size to
the next, and the process tree is sampled whole, workers included), and the
verdict compares the whole-tree peak RSS of the smallest and the largest size,
exactly as ``wsi-harness scaling --max-growth`` does
(:func:`harness.measure.scaling.growth_verdict`): the whole-tree figure is the
one a user's machine feels. The table, ``bounded.json`` and the plot are the
scaling study's own formats.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from harness.errors import ConfigError
from harness.measure.rss import DEFAULT_PERIOD_S
from harness.measure.runner import Measurement, run_callable, run_command
from harness.measure.scaling import (
    GrowthVerdict,
    ScalingRecord,
    format_table,
    growth_verdict,
    parse_growth,
    write_json,
)

if TYPE_CHECKING:
    import pytest

#: A command template (``{size}``, optionally ``{out}`` and ``{slide}``), a
#: ``module:callable`` name, or an importable callable taking the size (and the slide).
Workload = str | Sequence[str] | Callable[..., object]
#: Slide per size: a mapping, or a function such as the ``wsi_tiff`` fixture.
Slides = Mapping[int, "str | os.PathLike[str]"] | Callable[[int], "str | os.PathLike[str]"]

_CALLABLE_NAME = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


@dataclass(frozen=True)
class BoundedReport:
    """What :func:`assert_bounded` measured.

    Attributes
    ----------
    records
        One scaling record per size, smallest first.
    verdict
        Growth of the peak from the smallest to the largest size.
    json_path
        ``bounded.json``: every record and the verdict.
    plot_path
        Peak RSS against slide area, or ``None`` when not drawn.
    """

    records: tuple[ScalingRecord, ...]
    verdict: GrowthVerdict
    json_path: Path
    plot_path: Path | None

    @property
    def table(self) -> str:
        """The records as the scaling study prints them."""
        return format_table(self.records)

    def describe(self) -> str:
        """Verdict, table and file paths, for a failure message or a log."""
        plot = "not drawn" if self.plot_path is None else str(self.plot_path)
        return f"{self.verdict.describe()}\n{self.table}\nplot: {plot}\nrecords: {self.json_path}"


@dataclass(frozen=True)
class _Study:
    """One validated ``assert_bounded`` call."""

    sizes: tuple[int, ...]
    max_growth: float
    name: str
    out_dir: Path
    timeout_s: float | None
    period_s: float
    keep_outputs: bool


def _sizes(sizes: Sequence[int]) -> tuple[int, ...]:
    ordered = tuple(sorted({int(s) for s in sizes}))
    if len(ordered) < 2 or ordered[0] < 1:
        raise ConfigError(
            f"assert_bounded needs at least two distinct positive sizes, got {list(sizes)}"
        )
    return ordered


def _growth(max_growth: str | float) -> float:
    value = parse_growth(max_growth) if isinstance(max_growth, str) else float(max_growth)
    if value < 0:
        raise ConfigError(f"max_growth must be >= 0, got {max_growth!r}")
    return value


def _safe_name(name: str) -> str:
    return re.sub(r"[^\w.-]+", "-", name).strip("-") or "workload"


def _import_callable(spec: str) -> Callable[..., object]:
    from harness.engines import import_callable

    return import_callable(spec, "workload")


def _template(workload: str | Sequence[str]) -> tuple[str, ...]:
    argv = tuple(shlex.split(workload)) if isinstance(workload, str) else tuple(workload)
    if not any("{size}" in arg or "{slide}" in arg for arg in argv):
        raise ConfigError(
            f"a workload command needs a {{size}} or {{slide}} placeholder, got {list(argv)}"
        )
    return argv


def _measure_one(
    workload: tuple[str, ...] | Callable[..., object],
    size: int,
    slide: str | None,
    study: _Study,
    env: Mapping[str, str] | None,
) -> Measurement:
    """Run the workload at ``size`` in a fresh process; ``{out}`` is removed afterwards."""
    if callable(workload):
        args = (size,) if slide is None else (size, slide)
        return run_callable(workload, *args, period_s=study.period_s, timeout_s=study.timeout_s)
    out = study.out_dir / "runs" / f"{study.name}-{size}"
    out.parent.mkdir(parents=True, exist_ok=True)
    fields = {"{size}": str(size), "{out}": str(out), "{slide}": slide or ""}
    argv = [_fill(arg, fields) for arg in workload]
    try:
        return run_command(argv, env=env, period_s=study.period_s, timeout_s=study.timeout_s)
    finally:
        if not study.keep_outputs:
            _remove(out)


def _fill(arg: str, fields: Mapping[str, str]) -> str:
    """Replace the placeholders only: other braces (``python -c "{}"``) stay as written."""
    for key, value in fields.items():
        arg = arg.replace(key, value)
    return arg


def _slide_for(slides: Slides | None, size: int) -> str | None:
    """The slide for ``size``, prepared here, before (and outside) the measured run."""
    if slides is None:
        return None
    try:
        slide = slides[size] if isinstance(slides, Mapping) else slides(size)
    except KeyError:
        raise ConfigError(f"slides has no slide for size {size}") from None
    return os.fspath(slide)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _record(size: int, name: str, m: Measurement) -> ScalingRecord:
    if m.returncode != 0:
        why = "timed out" if m.timed_out else f"exit {m.returncode}"
        tail = (m.stderr.strip().splitlines() or [""])[-1][:300]
        return ScalingRecord(size, name, "failed", reason=f"{why}: {tail}")
    return ScalingRecord(
        size,
        name,
        "ok",
        peak_rss_bytes=m.peak_rss_bytes,
        baseline_rss_bytes=m.baseline_rss_bytes,
        ru_maxrss_bytes=m.ru_maxrss_bytes,
        wall_s=m.wall_s,
        process_wall_s=m.wall_s,
        megapixels_per_s=size * size / 1e6 / m.wall_s if m.wall_s > 0 else None,
    )


def _resolve(workload: Workload) -> tuple[str, ...] | Callable[..., object]:
    if callable(workload):
        return workload
    if isinstance(workload, str) and _CALLABLE_NAME.match(workload.strip()):
        return _import_callable(workload.strip())
    return _template(workload)


def _report(records: list[ScalingRecord], study: _Study, plot: bool) -> BoundedReport:
    verdict = growth_verdict(records, study.max_growth, engine=study.name)
    assert verdict is not None  # two distinct sizes ran: _sizes and the failure check ensure it
    json_path = write_json(records, verdict, study.out_dir / "bounded.json")
    plot_path = None
    if plot:
        from harness.measure.plots import plot_scaling

        plot_path = plot_scaling(records, None, study.out_dir / "bounded.png")
    return BoundedReport(tuple(records), verdict, json_path, plot_path)


def assert_bounded(
    workload: Workload,
    sizes: Sequence[int],
    max_growth: str | float = "5%",
    *,
    name: str = "workload",
    out_dir: str | Path | None = None,
    timeout_s: float | None = None,
    period_s: float = DEFAULT_PERIOD_S,
    env: Mapping[str, str] | None = None,
    slides: Slides | None = None,
    keep_outputs: bool = False,
    plot: bool = True,
) -> BoundedReport:
    """Run ``workload`` once per size, each in a fresh process; fail if its peak grows.

    ``workload``: a command template (argv list or shell-style string) with
    ``{size}`` and optionally ``{out}`` (a fresh path per size under
    ``out_dir/runs``, removed after the run) and ``{slide}``; or an importable
    module-level callable (picklable arguments), called as ``workload(size)``,
    or ``workload(size, slide)`` with ``slides``; or its ``"module:callable"``.
    ``sizes``: at least two distinct slide sides in pixels, far apart (16x in
    area). ``max_growth``: the largest relative growth of the whole-tree peak RSS
    from the smallest to the largest size (``"5%"`` or ``0.05``). ``slides``: each
    size's slide path or spec, a mapping or a function of the size such as the
    ``wsi_tiff`` fixture, made in this process before each run. ``name`` labels
    the table, plot and files written to ``out_dir`` (default: a new temporary
    folder, kept); ``timeout_s`` kills a run's process group; ``period_s`` is the
    RSS sampling period; ``env`` adds variables for command workloads;
    ``keep_outputs`` keeps each ``{out}``; ``plot`` draws ``bounded.png``.
    Reference: docs/gate-your-engine.md.

    Returns the :class:`BoundedReport` when the growth is within ``max_growth``.
    Raises ``AssertionError`` (with the table and the plot path) when a run fails
    or the peak grows more, and ``ConfigError`` for an invalid argument.
    """
    resolved = _checked(workload, env, slides)
    study = _study(sizes, max_growth, name, out_dir, timeout_s, period_s, keep_outputs)
    records = _run_sizes(resolved, study, slides, env)
    return _passed(_report(records, study, plot))


def _study(
    sizes: Sequence[int],
    max_growth: str | float,
    name: str,
    out_dir: str | Path | None,
    timeout_s: float | None,
    period_s: float,
    keep_outputs: bool,
) -> _Study:
    """The validated call; ``out_dir`` (default a new temporary folder) is created first."""
    folder = Path(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix="wsi-bounded-"))
    folder.mkdir(parents=True, exist_ok=True)
    return _Study(
        _sizes(sizes), _growth(max_growth), _safe_name(name), folder, timeout_s, period_s,
        keep_outputs,
    )  # fmt: skip


def _passed(report: BoundedReport) -> BoundedReport:
    """``report`` when its verdict passed; otherwise raise with the table and the plot path."""
    if not report.verdict.passed:
        raise AssertionError(report.describe())
    return report


def _checked(
    workload: Workload, env: Mapping[str, str] | None, slides: Slides | None
) -> tuple[str, ...] | Callable[..., object]:
    """The resolved workload, refused when ``env`` or ``{slide}`` cannot apply to it."""
    resolved = _resolve(workload)
    if env and callable(resolved):
        raise ConfigError("env applies to command workloads; a callable runs with this env")
    if slides is None and not callable(resolved) and any("{slide}" in a for a in resolved):
        raise ConfigError("the workload command has a {slide} placeholder but no slides= given")
    return resolved


def _run_sizes(
    resolved: tuple[str, ...] | Callable[..., object],
    study: _Study,
    slides: Slides | None,
    env: Mapping[str, str] | None,
) -> list[ScalingRecord]:
    """One fresh-process run per size, smallest first; the first failure raises with its table."""
    records: list[ScalingRecord] = []
    for size in study.sizes:
        measured = _measure_one(resolved, size, _slide_for(slides, size), study, env)
        records.append(_record(size, study.name, measured))
        if records[-1].status != "ok":
            write_json(records, None, study.out_dir / "bounded.json")
            raise AssertionError(
                f"{study.name} failed at size {size}: {records[-1].reason}\n"
                f"{format_table(records)}\nstderr tail:\n{measured.stderr.strip()[-1500:]}"
            )
    return records


@dataclass(frozen=True)
class BoundedMark:
    """What a ``bounded`` marker asks for (the marked test function is the workload)."""

    sizes: tuple[int, ...]
    max_growth: str | float = "5%"
    timeout_s: float | None = None
    period_s: float = DEFAULT_PERIOD_S

    @classmethod
    def from_marker(cls, marker: pytest.Mark, default_period_s: float) -> BoundedMark:
        """Read ``bounded(sizes=[...], max_growth="5%", timeout_s=None, period_s=None)``."""
        if marker.args:
            raise ConfigError("bounded takes keyword arguments only: bounded(sizes=[...], ...)")
        unknown = set(marker.kwargs) - {"sizes", "max_growth", "timeout_s", "period_s"}
        if unknown or "sizes" not in marker.kwargs:
            raise ConfigError(
                f"bounded needs sizes=[...] and accepts max_growth, timeout_s, period_s; "
                f"got {sorted(marker.kwargs)}"
            )
        kwargs = dict(marker.kwargs)
        return cls(
            sizes=_sizes(kwargs["sizes"]),
            max_growth=kwargs.get("max_growth", "5%"),
            timeout_s=kwargs.get("timeout_s"),
            period_s=float(kwargs.get("period_s") or default_period_s),
        )
