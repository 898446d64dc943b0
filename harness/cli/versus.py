"""``wsi-harness versus``: our engine side by side with a peer (TIAToolbox).

Each engine runs in a fresh, measured process on the same slides and grid;
see :mod:`harness.peers.versus` and ``docs/versus.md``.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.errors import ConfigError

if TYPE_CHECKING:
    import argparse

_SIZE_HELP = (
    "synthetic slide sides, comma- or space-separated (written as pyramidal TIFFs under "
    "OUT/slides/ if missing; no default)"
)
_ENGINES_HELP = (
    "engines to run, comma-separated: ours, dense, tiatoolbox, monai (MONAI's AvgMerger), "
    "monai-zarr (its ZarrAvgMerger) or module:callable (default: ours,tiatoolbox)"
)


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add ``versus`` to ``sub``."""
    from harness.cli.measure import sizes
    from harness.cli.options import DefaultsFormatter

    p = sub.add_parser(
        "versus",
        help="compare memory, time and outputs of several engines on the same slides",
        formatter_class=DefaultsFormatter,
        description="Run each engine on the same slides, model and grid, each in a fresh "
        "measured process (peers in their own virtualenvs, see scripts/peer_env.sh), compare "
        "every engine's labels with ours, and write OUT/versus.json, versus.md and versus.png. "
        "Engines whose peak grows with the slide are skipped where their predicted peak does "
        "not fit in RAM.",
        epilog="Example: wsi-harness versus --engines ours,tiatoolbox,monai "
        "--sizes 4096,8192,16384 --out versus",
    )
    p.add_argument("items", nargs="*", metavar="SLIDE|ENGINE",
                   help="TIFF slides to run (or use --sizes); an engine name here is added to "
                   "--engines (versus tiatoolbox ...)")  # fmt: skip
    p.add_argument("--sizes", nargs="+", type=sizes, default=[], help=_SIZE_HELP)
    p.add_argument("--out", type=Path, required=True,
                   help="folder for versus.json, .md and .png (relative to here)")  # fmt: skip
    p.add_argument("--engines", default=None, help=_ENGINES_HELP)
    p.add_argument("--model", default="tiny-cnn", help="built-in model every engine runs")
    p.add_argument("--patch", type=int, default=256, help="input patch side")
    p.add_argument("--stride", type=int, default=128, help="patch stride")
    p.add_argument("--mpp", type=float, default=0.5, help="processing resolution")
    p.add_argument("--budget", default=None, help="our memory budget (default: the engine's)")
    p.add_argument("--batch-size", type=int, default=8, help="patches per model call, every engine")
    p.add_argument("--workers", type=int, default=0, help="our loader workers (segment --workers)")
    p.add_argument("--peer-python", action="append", default=[], metavar="[ENGINE=]PATH",
                   help="a peer's virtualenv python (a bare PATH is TIAToolbox's); default "
                   "peer/ENGINE/bin/python")  # fmt: skip
    p.add_argument(
        "--peer-probabilities",
        action="store_true",
        help="ask every engine for probabilities too (compares them)",
    )
    p.add_argument(
        "--ram-share",
        type=float,
        default=0.5,
        help="skip an engine where its predicted peak exceeds this share of RAM",
    )
    p.add_argument("--nice", type=int, default=0, help="run every engine under nice -n N")
    p.add_argument("--timeout", type=float, default=None, help="seconds per engine run")
    p.add_argument("--keep-outputs", action="store_true", help="keep every engine's output")
    p.set_defaults(func=run)


def _split_items(items: list[str]) -> tuple[list[str], list[Path]]:
    """Engine names and slide paths among the positional arguments."""
    from harness.engines import BUILTIN

    engines = [i for i in items if i in BUILTIN and not Path(i).exists()]
    slides = [Path(i).absolute() for i in items if i not in engines]
    return engines, slides


def _sizes(groups: list[tuple[int, ...]]) -> list[int]:
    """``--sizes 4096,8192 16384`` (parsed by the shared comma parser) as one list, checked."""
    flat = [size for group in groups for size in group]
    if any(size < 256 for size in flat):
        raise ConfigError(f"sizes must be at least 256 pixels, got {flat}")
    return flat


def _pythons(values: list[str]) -> tuple[tuple[str, str], ...]:
    out = []
    for value in values:
        name, sep, path = value.partition("=")
        out.append((name, path) if sep else ("tiatoolbox", value))
    return tuple((name, str(Path(path).expanduser().absolute())) for name, path in out)


def run(args: argparse.Namespace) -> int:
    """Run the study, print the table, write ``versus.json``, ``versus.md`` and ``versus.png``."""
    from harness.measure.slides import slide_job, synthetic_job
    from harness.peers import report
    from harness.peers.versus import DEFAULT_ENGINES, VersusConfig, run_study

    named, slides = _split_items(args.items)
    sizes = _sizes(args.sizes)
    if not slides and not sizes:
        raise ConfigError("give SLIDE paths or --sizes")
    listed = [e for e in (args.engines or "").split(",") if e.strip()]
    engines = tuple(dict.fromkeys([*listed, *named])) or DEFAULT_ENGINES
    if named and not listed and "ours" not in engines:
        engines = ("ours", *engines)  # `versus tiatoolbox`: ours beside it, as before
    cfg = VersusConfig(
        model=args.model,
        patch=args.patch,
        stride=args.stride,
        mpp=args.mpp,
        budget=args.budget,
        batch_size=args.batch_size,
        workers=args.workers,
        ram_share=args.ram_share,
        peer_probabilities=args.peer_probabilities,
        nice=args.nice,
        timeout_s=args.timeout,
        keep_outputs=args.keep_outputs,
        engines=engines,
        peer_pythons=_pythons(args.peer_python),
    )
    out: Path = args.out.absolute()
    out.mkdir(parents=True, exist_ok=True)
    jobs = [slide_job(path, cfg.mpp) for path in slides]
    jobs += [synthetic_job(s, out / "slides", cfg.mpp) for s in sizes]
    results = run_study(cfg, jobs, out)
    report.write_json(out / "versus.json", report.study_dict(cfg, results, _environment()))
    table = report.format_table(results)
    (out / "versus.md").write_text(table)
    report.plot(results, out / "versus.png")
    print(table)
    print(f"wrote {out / 'versus.json'}, {out / 'versus.md'}, {out / 'versus.png'}")
    return 0


def _environment() -> dict[str, Any]:
    import psutil

    return {
        "cpus": os.cpu_count(),
        "ram_total_bytes": psutil.virtual_memory().total,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
