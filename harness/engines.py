"""Engines the harness can measure: one small protocol for ours, the dense reference, peers, yours.

An *engine* segments one slide with a model on a patch grid into a zarr
output that holds a label map (``(H, W)`` uint8 at the processing
resolution), in a fresh process that :func:`harness.measure.run_command`
samples whole. Everything that measures engines -- ``wsi-harness scaling
--engine NAME``, ``wsi-harness versus --engines a,b,c`` and the pytest
plugin's :func:`engine_command` for ``assert_bounded`` -- goes through
:class:`Engine`, so adding an engine adds it to all three.

Built in:

``ours``
    our streaming engine (``wsi-harness segment --engine streaming``).
``dense``
    the dense reference (``--engine dense``): the whole canvas in RAM.
``tiatoolbox``
    TIAToolbox 2.1.3's ``SemanticSegmentor`` in ``peer/tiatoolbox``
    (``scripts/peer_env.sh tiatoolbox``).
``monai`` / ``monai-zarr``
    MONAI 1.6.1's ``PatchInferer`` with ``AvgMerger`` (in RAM) or
    ``ZarrAvgMerger`` (on disk), in ``peer/monai``.
``module:callable``
    any engine of yours: a function called in a fresh process as
    ``fn(slide=PATH, out=PATH, model=NAME, patch=INT, stride=INT, mpp=FLOAT,
    batch_size=INT)`` that writes a zarr group at ``out`` with a ``labels``
    array (see ``docs/gate-your-engine.md``). It may return a dict, which is
    printed as the run's JSON record.

A peer's python is found at ``peer/NAME/bin/python`` under the directory
the command runs in, then under this checkout, unless
``WSI_HARNESS_PEER_NAME`` (``NAME`` upper-cased, ``-`` as ``_``) names one.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from harness.config import RunConfig
from harness.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

REPO_ROOT = Path(__file__).resolve().parents[1]
PEERS_DIR = Path(__file__).resolve().with_name("peers")
GB = 1e9
BUILTIN = ("ours", "dense", "tiatoolbox", "monai", "monai-zarr")
"""Built-in engine names; ``streaming`` is accepted for ``ours``."""


@dataclass(frozen=True)
class PeakModel:
    """Predicted whole-tree peak RSS of an engine: ``base + bytes_per_px * area``.

    Used to skip runs that would not fit in RAM (an OOM kill takes whatever
    the kernel likes, not just the run). :meth:`calibrated` raises the base
    so that no measurement is under-predicted.
    """

    base_bytes: float
    bytes_per_px: float

    def predict(self, area_px: int) -> int:
        """Predicted peak in bytes for a slide of ``area_px`` pixels at processing mpp."""
        return int(self.base_bytes + self.bytes_per_px * area_px)

    def calibrated(self, measured: list[tuple[int, int]]) -> PeakModel:
        """Raise the base so no ``(area_px, peak_bytes)`` measurement is under-predicted."""
        base = max([self.base_bytes, *(p - self.bytes_per_px * a for a, p in measured)])
        return PeakModel(base, self.bytes_per_px)


#: TIAToolbox 2.1.3 on 2 cores (tiny model, patch 256, stride 128): 2.1 GB at 4k²,
#: 4.5 GB at 8k², 11.2 GB at 16k², 1.3 GB for import and model; 45 B/px errs high.
TIATOOLBOX_PEAK = PeakModel(1.3 * GB, 45.0)
#: MONAI's AvgMerger holds float32 values and uint8 counts per class and pixel, and its
#: in-place division promotes the counts: 27 B/px at 16k² in the trial (7.6 GB); errs high.
MONAI_AVG_PEAK = PeakModel(0.6 * GB, 28.0)
#: The dense reference: float32 sum over 3 classes + float32 count per output pixel.
DENSE_PEAK = PeakModel(400 * 2**20, 16.0)


@dataclass(frozen=True)
class EngineJob:
    """One slide for one engine: where it is, where the output goes, and the run's settings.

    ``run`` carries the model, the grid (``run.plan``: patch, stride, mpp),
    the batch size and whether probabilities are wanted; peers take those
    fields and leave the rest at their own defaults. ``out`` is the output
    zarr group's path (a peer that cannot be told one writes under it).
    """

    slide: str
    out: Path
    run: RunConfig = field(default_factory=lambda: default_run())
    extra: tuple[str, ...] = ()

    @property
    def patch(self) -> int:
        """Square input patch side (peers take one number)."""
        return _square(self.run.plan.patch_hw, "patch")

    @property
    def stride(self) -> int:
        """Square stride (peers take one number)."""
        return _square(self.run.plan.stride_hw, "stride")

    @property
    def mpp(self) -> float:
        """Processing resolution; 0.5 when the run says 'level 0' (peers need a number)."""
        return self.run.plan.mpp or 0.5


def default_run() -> RunConfig:
    """What an engine runs when not told: tiny-cnn, no mask, labels only."""
    return RunConfig(model="tiny-cnn", mask="none", probabilities=False)


def grid_args(job: EngineJob) -> list[str]:
    """``--model --patch --stride --mpp --batch-size`` of ``job``: what every runner takes."""
    return ["--model", job.run.model, "--patch", str(job.patch), "--stride", str(job.stride),
            "--mpp", str(job.mpp), "--batch-size", str(job.run.batch_size)]  # fmt: skip


def _square(pair: tuple[int, int], name: str) -> int:
    if pair[0] != pair[1]:
        raise ConfigError(f"peer engines take a square {name}, got {pair[0]}x{pair[1]}")
    return pair[0]


@runtime_checkable
class Engine(Protocol):
    """What the harness needs from an engine.

    Attributes
    ----------
    name
        How tables, plots and file names call it.
    needs_file
        True when it reads only slide *files* (a pyramidal TIFF the study
        writes first); False when it also reads ``synthetic:WxH`` specs.
    labels_key
        Name of the label-map array in its output group.
    """

    @property
    def name(self) -> str: ...

    @property
    def needs_file(self) -> bool: ...

    @property
    def labels_key(self) -> str: ...

    def unavailable(self) -> str | None:
        """Why it cannot run here (say, no peer virtualenv), or ``None``."""
        ...

    def argv(self, job: EngineJob) -> list[str]:
        """The command that segments ``job.slide`` into ``job.out``, printing a JSON line."""
        ...

    def output(self, job: EngineJob, record: Mapping[str, Any]) -> Path | None:
        """The output zarr group of a finished run (``record``: its JSON line)."""
        ...

    def predict_peak(self, area_px: int) -> int | None:
        """Predicted peak RSS at ``area_px`` pixels, or ``None`` when it is bounded."""
        ...


@dataclass(frozen=True)
class Ours:
    """Our engine through ``wsi-harness segment``: streaming (``ours``) or ``dense``."""

    merge: str = "streaming"
    python: str = sys.executable
    needs_file: bool = False
    labels_key: str = "labels"

    @property
    def name(self) -> str:
        """``ours`` or ``dense``."""
        return "ours" if self.merge == "streaming" else self.merge

    def unavailable(self) -> str | None:
        """Always runnable: it is this package."""
        return None

    def argv(self, job: EngineJob) -> list[str]:
        """``python -m harness segment`` with every option of ``job.run`` explicit."""
        cfg = job.run.replace(engine=self.merge, overwrite=True, resume=False, progress=False)
        return [self.python, "-m", "harness", "segment", job.slide, "--out", str(job.out),
                *cfg.cli_args(), "--json", *job.extra]  # fmt: skip

    def output(self, job: EngineJob, record: Mapping[str, Any]) -> Path | None:
        """``job.out`` itself."""
        return job.out

    def predict_peak(self, area_px: int) -> int | None:
        """Streaming: bounded by its budget (``None``); dense: 16 B per output pixel."""
        return DENSE_PEAK.predict(area_px) if self.merge == "dense" else None


def peer_python(name: str, cwd: Path | None = None) -> Path:
    """A peer venv's python: ``WSI_HARNESS_PEER_NAME``, else ``peer/NAME`` here or in the repo."""
    var = "WSI_HARNESS_PEER_" + name.upper().replace("-", "_")
    if os.environ.get(var):
        return Path(os.environ[var]).expanduser().absolute()
    for root in (cwd or Path.cwd(), REPO_ROOT):
        candidate = root / "peer" / name / "bin" / "python"
        if candidate.is_file():
            return candidate.absolute()
    return (REPO_ROOT / "peer" / name / "bin" / "python").absolute()


@dataclass(frozen=True)
class TIAToolbox:
    """TIAToolbox's ``SemanticSegmentor`` through :mod:`harness.peers.tiatoolbox_runner`."""

    python: Path = field(default_factory=lambda: peer_python("tiatoolbox"))
    name: str = "tiatoolbox"
    needs_file: bool = True
    labels_key: str = "predictions"
    peak: PeakModel = TIATOOLBOX_PEAK

    def unavailable(self) -> str | None:
        """No peer python: say how to make one."""
        return _missing_venv(self.python, "tiatoolbox")

    def argv(self, job: EngineJob) -> list[str]:
        """The runner writes ``job.out/<slide>.zarr`` (TIAToolbox names the file itself)."""
        argv = [str(self.python), str(PEERS_DIR / "tiatoolbox_runner.py"), job.slide]
        return [*argv, "--out-dir", str(job.out), *grid_args(job), *_probabilities(job)]

    def output(self, job: EngineJob, record: Mapping[str, Any]) -> Path | None:
        """The zarr path the runner reported."""
        out = record.get("output")
        return Path(out) if out else None

    def predict_peak(self, area_px: int) -> int | None:
        """Its peak grows with the slide: 1.3 GB + 45 B/px."""
        return self.peak.predict(area_px)


@dataclass(frozen=True)
class Monai:
    """MONAI's ``PatchInferer`` through :mod:`harness.peers.monai_runner`."""

    merger: str = "avg"
    python: Path = field(default_factory=lambda: peer_python("monai"))
    needs_file: bool = True
    labels_key: str = "labels"
    peak: PeakModel = MONAI_AVG_PEAK

    @property
    def name(self) -> str:
        """``monai`` (``AvgMerger``, in RAM) or ``monai-zarr`` (``ZarrAvgMerger``, on disk)."""
        return "monai" if self.merger == "avg" else "monai-zarr"

    def unavailable(self) -> str | None:
        """No peer python: say how to make one."""
        return _missing_venv(self.python, "monai")

    def argv(self, job: EngineJob) -> list[str]:
        """The runner writes ``job.out`` laid out like ours (``labels``, ``probabilities``)."""
        argv = [str(self.python), str(PEERS_DIR / "monai_runner.py"), job.slide]
        argv += ["--out", str(job.out), "--merger", self.merger, *grid_args(job)]
        return argv + _probabilities(job)

    def output(self, job: EngineJob, record: Mapping[str, Any]) -> Path | None:
        """``job.out`` itself."""
        return job.out

    def predict_peak(self, area_px: int) -> int | None:
        """``AvgMerger`` grows 28 B/px; ``ZarrAvgMerger`` is bounded (``None``)."""
        return self.peak.predict(area_px) if self.merger == "avg" else None


@dataclass(frozen=True)
class UserEngine:
    """Any engine given as ``module:callable``, run by ``python -m harness.engines``."""

    spec: str
    python: str = sys.executable
    needs_file: bool = True
    labels_key: str = "labels"

    @property
    def name(self) -> str:
        """The callable's name (``pkg.mod:segment`` -> ``segment``)."""
        return self.spec.rpartition(":")[2] or self.spec

    def unavailable(self) -> str | None:
        """Checked in the child, where the callable is imported."""
        return None

    def argv(self, job: EngineJob) -> list[str]:
        """``python -m harness.engines SPEC SLIDE --out OUT --model ...``."""
        argv = [self.python, "-m", "harness.engines", self.spec, job.slide, "--out", str(job.out)]
        return [*argv, *grid_args(job), *job.extra]

    def output(self, job: EngineJob, record: Mapping[str, Any]) -> Path | None:
        """``job.out`` itself."""
        return job.out

    def predict_peak(self, area_px: int) -> int | None:
        """Unknown: never skipped by prediction."""
        return None


def _probabilities(job: EngineJob) -> list[str]:
    """A peer runner's ``--probabilities`` when asked for, then the job's extra arguments."""
    return (["--probabilities"] if job.run.probabilities else []) + list(job.extra)


def _missing_venv(python: Path, name: str) -> str | None:
    if python.is_file():
        return None
    return f"no {name} peer python at {python} (run scripts/peer_env.sh {name})"


def get_engine(name: str) -> Engine:
    """The engine called ``name``: a built-in one or ``module:callable``.

    Raises
    ------
    ConfigError
        An unknown name, or a ``module:callable`` with an empty part.
    """
    name = name.strip()
    builtins: dict[str, Callable[[], Engine]] = {
        "ours": Ours,
        "streaming": Ours,
        "dense": lambda: Ours("dense"),
        "tiatoolbox": TIAToolbox,
        "monai": Monai,
        "monai-zarr": lambda: Monai("zarr"),
    }
    if name in builtins:
        return builtins[name]()
    module, sep, attr = name.partition(":")
    if sep and module and attr:
        return UserEngine(name)
    raise ConfigError(
        f"unknown engine {name!r}: use one of {', '.join(BUILTIN)} or module:callable"
    )


def parse_engines(text: str | list[str] | tuple[str, ...]) -> tuple[Engine, ...]:
    """Comma- or space-separated engine names (``ours,tiatoolbox,monai``), each once."""
    items = [text] if isinstance(text, str) else list(text)
    names = [n.strip() for item in items for n in item.split(",") if n.strip()]
    if not names:
        raise ConfigError("give at least one engine")
    engines = [get_engine(n) for n in names]
    seen: set[str] = set()
    for e in engines:
        if e.name in seen:
            raise ConfigError(f"engine {e.name!r} is named twice")
        seen.add(e.name)
    return tuple(engines)


def engine_command(
    engine: str | Engine, run: RunConfig | None = None, extra: tuple[str, ...] = ()
) -> list[str]:
    """``engine``'s command with ``{slide}`` and ``{out}`` placeholders, for ``assert_bounded``.

    Example::

        from harness.engines import engine_command
        from harness.testing import assert_bounded

        def test_tiatoolbox_peak_is_bounded(wsi_tiff):
            assert_bounded(engine_command("tiatoolbox"), sizes=[1024, 4096], slides=wsi_tiff)
    """
    eng = get_engine(engine) if isinstance(engine, str) else engine
    why = eng.unavailable()
    if why:
        raise ConfigError(f"engine {eng.name} cannot run: {why}")
    job = EngineJob("{slide}", Path("{out}"), run or default_run(), extra)
    return eng.argv(job)


# --- running a user engine in a fresh process -------------------------------------------


def import_callable(spec: str, what: str = "engine") -> Callable[..., Any]:
    """Import ``module:attr.path`` and check it is callable (a :class:`ConfigError` if not)."""
    module, _, attr = spec.partition(":")
    try:
        obj: Any = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"cannot import {what} {spec!r}: {exc}") from None
    if not callable(obj):
        raise ConfigError(f"{what} {spec!r} is not callable")
    return obj  # type: ignore[no-any-return]


def main(argv: list[str] | None = None) -> int:
    """Run a ``module:callable`` engine on one slide and print its JSON record."""
    p = argparse.ArgumentParser(prog="python -m harness.engines", description=main.__doc__)
    p.add_argument("engine", help="module:callable")
    p.add_argument("slide")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--model", default="tiny-cnn")
    p.add_argument("--patch", type=int, default=256)
    p.add_argument("--stride", type=int, default=128)
    p.add_argument("--mpp", type=float, default=0.5)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    args = p.parse_args(argv)
    sys.path.insert(0, str(Path.cwd()))  # a user's module next to their tests
    try:
        fn = import_callable(args.engine)
        start = time.perf_counter()
        result = fn(
            slide=args.slide, out=args.out, model=args.model, patch=args.patch,
            stride=args.stride, mpp=args.mpp, batch_size=args.batch_size,
        )  # fmt: skip
        wall = time.perf_counter() - start
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        if args.debug:
            raise
        print(f"error: engine {args.engine} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    record = dict(result) if isinstance(result, dict) else {}
    record.setdefault("wall_s", wall)
    record.setdefault("output", str(args.out))
    print(json.dumps(record, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
