"""One run description: :class:`RunConfig`, built once and passed down.

Every way of starting a segmentation builds the same frozen, validated
object: the CLI (:func:`harness.cli.options.add_run_arguments` and
:meth:`RunConfig.from_namespace`), Python callers (``segment(..., run=RunConfig(...))``
or keyword overrides), the scaling study, the peer runner, the benchmarks and
the dask tasks. Defaults live here and nowhere else; :data:`OPTIONS` maps each
field to its command-line flag, so :meth:`RunConfig.cli_args` (the argv a
measuring parent hands a fresh ``wsi-harness segment`` process) and the
argument parser cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from harness.errors import ConfigError
from harness.plan import PlanConfig
from harness.preprocess import BUILTIN_MODELS, Preprocess
from harness.units import format_bytes, parse_bytes

if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable


class Engine(StrEnum):
    """How patch outputs are merged."""

    STREAMING = "streaming"
    """Budgeted: whole-chunk writes as chunks become final (the engine)."""
    DENSE = "dense"
    """The whole-canvas reference: sums and weights for the whole output in RAM."""


class Activation(StrEnum):
    """What turns the model's raw output into probabilities."""

    NONE = "none"
    """The model already returns probabilities (checked, see :attr:`RunConfig.check`)."""
    SOFTMAX = "softmax"
    """Softmax over the class axis (models that return logits)."""
    SIGMOID = "sigmoid"
    """Independent per-class sigmoid (multi-label logits)."""


Check = Literal["range", "simplex", "off"]
OUTPUT_DTYPES = ("float32", "float16")
MIN_BUDGET = 16 * 2**20
"""Smallest budget accepted: below it nothing but the interpreter's own noise fits."""
DEFAULT_BUDGET = 256 * 2**20
_DEVICE = re.compile(r"^(cpu|cuda(:\d+)?)$")
_CLUSTER = re.compile(r"^local:(\d+)$")


@dataclass(frozen=True)
class RunConfig:
    """Everything a segmentation run needs besides the slide and the output path.

    Attributes
    ----------
    plan
        Patch geometry, blending and order (:class:`~harness.plan.PlanConfig`).
    model
        Built-in model name or a model file (``.pt2`` / TorchScript).
    engine
        :class:`Engine`: ``streaming`` (default) or the ``dense`` reference.
    budget
        Bytes the run may allocate above its baseline (after imports and model
        load): merge buffers, the batch in flight, caches, queues and slack
        (see :mod:`harness.budget`).
    mask
        ``None``, ``"auto"``, a mask image or ``.npy`` path, or (Python only) a
        2-D boolean array (see :mod:`harness.mask`).
    batch_size, workers, device, threads
        Patches per model call; DataLoader reader processes; ``cpu`` or
        ``cuda[:N]``; torch intra-op threads (``None``: torch's default).
    dtype, probabilities
        Stored probability dtype; ``probabilities=False`` writes labels only.
    activation, check, tolerance
        Output activation (:class:`Activation`) and the check of what the model
        returns when ``activation`` is ``none``: ``range`` (values in [0, 1]),
        ``simplex`` (also channels sum to 1) or ``off``; ``tolerance`` for both.
    classes, preprocess
        Class names and input preprocessing for a user model (built-ins know theirs).
    slide_mpp
        Level-0 microns per pixel for slides without (or with wrong) metadata.
    spill_dir
        Scratch folder for raster-order spills (default: inside the output).
    merge_budget
        Bytes for the merge buffers alone, overriding their share of ``budget``
        (for studies of the merger itself; ``None``: :mod:`harness.budget` decides).
    block
        Side, in output chunks, of a work unit for a cluster (``None``: chosen).
    progress, overwrite, resume
        Progress bar; replace an existing output; continue an incomplete one.
    """

    plan: PlanConfig = field(default_factory=PlanConfig)
    model: str = "hne-colour"
    engine: Engine = Engine.STREAMING
    budget: int = DEFAULT_BUDGET
    mask: Any = None
    batch_size: int = 8
    workers: int = 0
    device: str = "cpu"
    threads: int | None = None
    dtype: str = "float32"
    probabilities: bool = True
    activation: Activation = Activation.NONE
    check: Check = "range"
    tolerance: float = 1e-3
    classes: tuple[str, ...] | None = None
    preprocess: Preprocess | None = None
    slide_mpp: float | None = None
    spill_dir: str | None = None
    merge_budget: int | None = None
    block: int | None = None
    progress: bool = True
    overwrite: bool = False
    resume: bool = False

    def __post_init__(self) -> None:
        _coerce_enums(self)
        for name, value, lo in (("batch_size", self.batch_size, 1), ("workers", self.workers, 0)):
            _check_int(name, value, lo)
        if self.threads is not None:
            _check_int("threads", self.threads, 1)
        if self.block is not None:
            _check_int("block", self.block, 1)
        if self.merge_budget is not None:
            _check_int("merge_budget", self.merge_budget, 1)
        if not _DEVICE.match(str(self.device)):
            raise ConfigError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")
        if self.dtype not in OUTPUT_DTYPES:
            raise ConfigError(
                f"dtype must be one of {', '.join(OUTPUT_DTYPES)}, got {self.dtype!r}"
            )
        if isinstance(self.budget, bool) or not isinstance(self.budget, int):
            raise ConfigError(f"budget must be a whole number of bytes, got {self.budget!r}")
        if self.budget < MIN_BUDGET:
            raise ConfigError(
                f"budget {format_bytes(self.budget)} is below the {format_bytes(MIN_BUDGET)} "
                "minimum; budgets are byte sizes such as 256MB or 1GiB"
            )
        if self.check not in ("range", "simplex", "off"):
            raise ConfigError(f"check must be range, simplex or off, got {self.check!r}")
        if not (math.isfinite(self.tolerance) and 0 <= self.tolerance < 1):
            raise ConfigError(f"tolerance must be a number in [0, 1), got {self.tolerance}")
        if self.slide_mpp is not None and not (
            math.isfinite(self.slide_mpp) and self.slide_mpp > 0
        ):
            raise ConfigError(f"slide mpp must be a positive number, got {self.slide_mpp}")
        if self.classes is not None and (
            not self.classes or any(not str(c).strip() for c in self.classes)
        ):
            raise ConfigError(f"classes must be non-empty names, got {self.classes!r}")
        if self.overwrite and self.resume:
            raise ConfigError("overwrite and resume exclude each other: replace or continue")

    def replace(self, **changes: Any) -> RunConfig:
        """A copy with ``changes`` (plan fields such as ``stride`` are accepted too)."""
        plan_fields = {f.name for f in dataclasses.fields(PlanConfig)}
        run_fields = {f.name for f in dataclasses.fields(RunConfig)}
        unknown = set(changes) - plan_fields - run_fields
        if unknown:
            raise ConfigError(
                f"unknown run option(s) {', '.join(sorted(unknown))}; known: "
                f"{', '.join(sorted(run_fields | plan_fields))}"
            )
        plan_changes = {k: changes.pop(k) for k in list(changes) if k in plan_fields}
        if plan_changes:
            changes["plan"] = dataclasses.replace(changes.get("plan", self.plan), **plan_changes)
        return dataclasses.replace(self, **changes)

    @property
    def model_is_builtin(self) -> bool:
        """Whether :attr:`model` names a built-in model (else it is a file)."""
        return self.model in BUILTIN_MODELS

    def summary(self) -> dict[str, Any]:
        """JSON-ready record of the options (provenance; arrays and objects described)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "plan":
                value = self.plan.to_dict()
            elif f.name == "preprocess":
                value = None if value is None else dataclasses.asdict(value)
            elif f.name == "mask":
                value = _describe_mask(value)
            elif isinstance(value, StrEnum):
                value = str(value)
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out

    def cli_args(self) -> list[str]:
        """``wsi-harness segment`` arguments that rebuild this config (every option explicit)."""
        argv: list[str] = []
        for opt in OPTIONS:
            value = _get(self, opt.field)
            argv += opt.to_argv(value)
        return argv

    @classmethod
    def from_namespace(cls, ns: argparse.Namespace) -> RunConfig:
        """Build from parsed arguments of :func:`harness.cli.options.add_run_arguments`."""
        values = {o.field: o.from_cli(getattr(ns, o.dest)) for o in OPTIONS if hasattr(ns, o.dest)}
        plan = {k.split(".", 1)[1]: v for k, v in values.items() if k.startswith("plan.")}
        run = {k: v for k, v in values.items() if not k.startswith("plan.")}
        pre = [run.pop(k, None) for k in ("scale", "mean", "std")]
        return cls(plan=PlanConfig(**plan), preprocess=_preprocess(*pre), **run)


def _coerce_enums(cfg: RunConfig) -> None:
    """Accept enum values as plain strings (``engine="dense"``), with a clear error."""
    for name, enum in (("engine", Engine), ("activation", Activation)):
        value = getattr(cfg, name)
        try:
            object.__setattr__(cfg, name, enum(value))
        except ValueError:
            allowed = ", ".join(e.value for e in enum)
            raise ConfigError(f"{name} must be one of {allowed}, got {value!r}") from None
    if not isinstance(cfg.plan, PlanConfig):
        raise ConfigError(f"plan must be a PlanConfig, got {type(cfg.plan).__name__}")
    if cfg.classes is not None:
        object.__setattr__(cfg, "classes", tuple(str(c) for c in cfg.classes))
    if isinstance(cfg.spill_dir, Path):
        object.__setattr__(cfg, "spill_dir", str(cfg.spill_dir))
    if isinstance(cfg.mask, Path):
        object.__setattr__(cfg, "mask", str(cfg.mask))


def _check_int(name: str, value: object, lo: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise ConfigError(f"{name} must be an integer >= {lo}, got {value!r}")


def _describe_mask(mask: object) -> object:
    if mask is None or isinstance(mask, str):
        return mask
    shape = getattr(mask, "shape", None)
    return f"array {list(shape) if shape is not None else type(mask).__name__}"


def _preprocess(
    scale: float | None, mean: tuple[float, ...] | None, std: tuple[float, ...] | None
) -> Preprocess | None:
    if scale is None and mean is None and std is None:
        return None
    base = Preprocess()
    try:
        return Preprocess(
            scale=base.scale if scale is None else scale,
            mean=base.mean if mean is None else _triple("mean", mean),
            std=base.std if std is None else _triple("std", std),
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc


def _triple(name: str, values: tuple[float, ...]) -> tuple[float, float, float]:
    if len(values) == 1:
        values = values * 3
    if len(values) != 3 or not all(math.isfinite(v) for v in values):
        raise ConfigError(f"--{name} takes one or three finite numbers (R,G,B), got {values}")
    return float(values[0]), float(values[1]), float(values[2])


def _get(cfg: RunConfig, path: str) -> Any:
    if path.startswith("plan."):
        return getattr(cfg.plan, path[5:])
    if path in ("scale", "mean", "std"):
        return None if cfg.preprocess is None else getattr(cfg.preprocess, path)
    return getattr(cfg, path)


# ---------------------------------------------------------------- the flag table


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ConfigError(f"expected comma-separated numbers, got {text!r}") from None


def _names(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(","))


def _optional(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    def read(text: str) -> Any:
        return None if text.lower() in ("none", "") else parse(text)

    return read


def _join(values: Any) -> str:
    return ",".join(str(v) for v in values)


def _pair_text(value: Any) -> str:
    """A plan pair back to its flag: one side when square, ``H,W`` otherwise."""
    if isinstance(value, tuple):
        return str(value[0]) if value[0] == value[1] else f"{value[0]},{value[1]}"
    return str(value)


def _side(text: str) -> int | tuple[int, int]:
    parts = [p.strip() for p in text.split(",")]
    try:
        sides = [int(p) for p in parts]
    except ValueError:
        raise ConfigError(f"expected a pixel size such as 256 or 256,512, got {text!r}") from None
    if len(sides) == 1:
        return sides[0]
    if len(sides) == 2:
        return sides[0], sides[1]
    raise ConfigError(f"expected one side or height,width, got {text!r}")


@dataclass(frozen=True)
class Option:
    """One ``segment`` flag and the :class:`RunConfig` field it sets."""

    flag: str
    field: str
    help: str
    parse: Callable[[str], Any] | None = None  # None: a boolean switch
    show: Callable[[Any], str] = str
    choices: tuple[str, ...] | None = None
    invert: bool = False  # a switch that sets the field False (--labels-only)
    metavar: str | None = None

    @property
    def dest(self) -> str:
        """The argparse attribute name."""
        return self.flag.lstrip("-").replace("-", "_")

    def from_cli(self, raw: Any) -> Any:
        """The field value from what argparse stored."""
        if self.parse is None:
            return not raw if self.invert else bool(raw)
        return raw

    def to_argv(self, value: Any) -> list[str]:
        """The flag (and value) that set ``value``; nothing for a default-off switch."""
        if self.parse is None:
            on = (not value) if self.invert else bool(value)
            return [self.flag] if on else []
        if value is None:
            return []
        return [self.flag, self.show(value)]


def _budget_text(value: int) -> str:
    return str(int(value))


def _budget(text: str) -> int:
    return parse_bytes(text)


OPTIONS: tuple[Option, ...] = (
    Option("--model", "model", "built-in model (" + ", ".join(BUILTIN_MODELS) + ") or a model "
           "file: a torch.export program (.pt2) or TorchScript", str, metavar="NAME|FILE"),
    Option("--patch", "plan.patch", "input patch side (or H,W) in pixels at --mpp", _side,
           _pair_text),
    Option("--output-patch", "plan.output_patch", "model output patch side (default: --patch)",
           _optional(_side), _pair_text),
    Option("--stride", "plan.stride", "step between patches (at most the output patch)", _side,
           _pair_text),
    Option("--mpp", "plan.mpp", "processing resolution in microns per pixel ('none': level 0)",
           _optional(float)),
    Option("--chunk", "plan.chunk", "output chunk side: the unit of merging and writing", _side,
           _pair_text),
    Option("--blend", "plan.blend", "overlap blending", str, choices=("mean", "gaussian")),
    Option("--sigma", "plan.sigma", "gaussian window sigma, a fraction of the patch side", float),
    Option("--order", "plan.order", "strips: budget-sized column strips, halo patches re-run; "
           "raster: every patch once, spilling partial chunks when the band does not fit", str,
           choices=("strips", "raster")),
    Option("--engine", "engine", "streaming (the engine) or dense (the whole-canvas reference)",
           str, choices=tuple(e.value for e in Engine)),
    Option("--budget", "budget", "bytes this run may allocate above its baseline (after imports "
           "and model load), e.g. 256MB or 1GiB", _budget, _budget_text, metavar="SIZE"),
    Option("--mask", "mask", "tissue mask: none, auto, or a mask image / .npy file",
           _optional(str), metavar="none|auto|FILE"),
    Option("--batch-size", "batch_size", "patches per model call", int),
    Option("--workers", "workers", "DataLoader reader processes (0: read in this process)", int),
    Option("--device", "device", "cpu, cuda or cuda:N", str),
    Option("--threads", "threads", "torch intra-op threads (default: torch's choice)",
           _optional(int)),
    Option("--dtype", "dtype", "stored probability dtype", str, choices=OUTPUT_DTYPES),
    Option("--labels-only", "probabilities", "write the label map, not the probabilities",
           invert=True),
    Option("--activation", "activation", "applied to the model output: none (it returns "
           "probabilities), softmax or sigmoid (it returns logits)", str,
           choices=tuple(a.value for a in Activation)),
    Option("--check", "check", "with --activation none: range (values in [0,1]), simplex "
           "(and channels sum to 1) or off", str, choices=("range", "simplex", "off")),
    Option("--tolerance", "tolerance", "tolerance of --check", float),
    Option("--classes", "classes", "class names of a user model, comma-separated",
           _optional(_names), _join, metavar="A,B,..."),
    Option("--scale", "scale", "input preprocessing: pixel * scale (default 1/255)",
           _optional(float)),
    Option("--mean", "mean", "input preprocessing mean, one or three numbers (R,G,B)",
           _optional(_floats), _join, metavar="M|R,G,B"),
    Option("--std", "std", "input preprocessing std, one or three numbers (R,G,B)",
           _optional(_floats), _join, metavar="S|R,G,B"),
    Option("--slide-mpp", "slide_mpp", "level-0 microns per pixel of the slide (overrides or "
           "supplies its metadata)", _optional(float)),
    Option("--spill-dir", "spill_dir", "scratch folder for raster-order spills (default: "
           "inside the output)", _optional(str), metavar="DIR"),
    Option("--merge-budget", "merge_budget", "bytes for the merge buffers alone, overriding "
           "their share of --budget (for studies of the merger)", _optional(_budget),
           _budget_text, metavar="SIZE"),
    Option("--block", "block", "work-unit side in output chunks for --cluster/--scheduler "
           "(default: chosen from the budget and the worker count)", _optional(int)),
    Option("--overwrite", "overwrite", "replace an existing output"),
    Option("--resume", "resume", "continue an incomplete output (its identity must match)"),
    Option("--no-progress", "progress", "no progress bar", invert=True),
)  # fmt: skip
"""Every ``segment`` flag that sets a :class:`RunConfig` field, in help order."""


def parse_cluster(text: str) -> int:
    """Worker count of a ``local:N`` cluster spec."""
    m = _CLUSTER.match(text.strip())
    if not m or int(m.group(1)) < 1:
        raise ConfigError(f"--cluster takes local:N with N >= 1 workers, got {text!r}")
    return int(m.group(1))
