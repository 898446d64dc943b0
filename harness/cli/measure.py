"""``wsi-harness scaling`` and ``wsi-harness profile``: the measurement sub-commands."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path
from typing import Any

from harness.errors import ConfigError


def _sizes(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"sizes must be comma-separated integers: {text!r}"
        ) from None


def sizes(text: str) -> tuple[int, ...]:
    """Comma-separated slide sides (``4096,16384``): one syntax in every command."""
    return _sizes(text)


def _register_scaling(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser(
        "scaling",
        help="peak memory against slide size, one fresh process per run",
        description="Segment synthetic slides of several sizes, each in a fresh process, and "
        "record the process-tree peak RSS. Writes DIR/scaling.json and DIR/scaling.png.",
    )
    p.add_argument("--sizes", type=_sizes, default=(4096, 16384, 65536),
                   help="slide sides, comma-separated (default: 4096,16384,65536)")  # fmt: skip
    p.add_argument("--engine", action="append", dest="engines", metavar="NAME",
                   help="engine to measure, repeatable: streaming (ours), dense, tiatoolbox, "
                   "monai, monai-zarr or module:callable; peers read a pyramidal TIFF written "
                   "under DIR/slides (default: streaming)")  # fmt: skip
    p.add_argument("--out", type=Path, required=True, help="report directory")
    p.add_argument("--max-growth", default=None, help="fail (exit 1) if the first engine's peak "
                   "grows more than this from smallest to largest size, e.g. 5%%")  # fmt: skip
    p.add_argument("--memray", action="store_true", help="also record memray's heap peak")
    p.add_argument(
        "--ram-share",
        type=float,
        default=0.5,
        help="skip dense runs predicted above this share of RAM (default 0.5)",
    )
    p.add_argument("--keep-outputs", action="store_true", help="keep each run's output zarr")
    p.add_argument("--timeout", type=float, default=None, help="seconds allowed per run")
    p.add_argument("--extra-args", default="", help="more segment arguments, one shell string")
    from harness.cli.options import add_run_arguments

    # The merge engine is chosen per run by --engine above; the rest are segment's own flags.
    add_run_arguments(p, skip=("engine", "overwrite", "resume", "progress"))
    p.set_defaults(func=_run_scaling)


def _run_scaling(args: argparse.Namespace) -> int:
    from harness.cli.options import run_config
    from harness.measure import scaling
    from harness.measure.plots import plot_scaling

    options = run_config(args)
    growth = None if args.max_growth is None else scaling.parse_growth(args.max_growth)
    config = scaling.ScalingConfig(
        sizes=args.sizes, out_dir=args.out, engines=tuple(args.engines or ("streaming",)),
        segment=options, extra=tuple(shlex.split(args.extra_args)), max_growth=growth,
        memray=args.memray, ram_share=args.ram_share, keep_outputs=args.keep_outputs,
        timeout_s=args.timeout,
    )  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    records = scaling.run_scaling(config, progress=lambda line: print(line, flush=True))
    verdict = scaling.growth_verdict(records, growth, engine=config.engines[0])
    json_path = scaling.write_json(records, verdict, args.out / "scaling.json")
    budgets = [r.segment.get("budget_bytes") for r in records if r.segment]
    png = plot_scaling(records, next((b for b in budgets if b), None), args.out / "scaling.png",
                       verdict)  # fmt: skip
    print(scaling.format_table(records))
    if verdict is not None:
        print(verdict.describe())
    elif growth is not None:
        print(f"growth not checked: fewer than two successful {config.engines[0]} sizes")
    print(f"wrote {json_path} and {png}")
    return scaling.study_exit_code(records, verdict)


def _register_profile(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser(
        "profile",
        help="one segmentation under memray and the RSS sampler, with a report",
        description="Run `wsi-harness segment SLIDE <segment args>` under memray and the "
        "process-tree RSS sampler. Writes DIR/capture.bin, DIR/flamegraph.html, "
        "DIR/rss.png (phases shaded) and DIR/summary.json. Every argument other than "
        "--report and --no-flamegraph goes to segment.",
        epilog="--report DIR is required; it and --no-flamegraph may come before or after "
        "SLIDE. Example: wsi-harness profile synthetic:8192 --report prof --model tiny-cnn",
    )
    p.add_argument("slide", help="slide path or synthetic:WxH")
    p.add_argument("segment_args", nargs=argparse.REMAINDER,
                   help="arguments for segment (see segment --help)")  # fmt: skip
    p.add_argument("--report", type=Path, default=None, metavar="DIR",
                   help="report folder (required)")  # fmt: skip
    p.add_argument("--no-flamegraph", action="store_true",
                   help="skip the flame graph (default: written)")  # fmt: skip
    p.set_defaults(func=_run_profile)


def _run_profile(args: argparse.Namespace) -> int:
    from harness.measure.profile import run_profile

    own = argparse.ArgumentParser(prog="wsi-harness profile", add_help=False)
    own.add_argument("--report", type=Path, default=args.report)
    own.add_argument("--no-flamegraph", action="store_true", default=args.no_flamegraph)
    try:
        mine, rest = own.parse_known_args(args.segment_args)
    except SystemExit:
        raise ConfigError("profile needs --report DIR") from None
    if mine.report is None:
        raise ConfigError("profile needs --report DIR")
    report = run_profile(args.slide, rest, mine.report, with_flamegraph=not mine.no_flamegraph)
    m = report.measurement
    heap = "-" if m.memray is None else f"{m.memray.peak_bytes / 2**20:.1f} MiB"
    print(f"peak tree RSS {m.peak_rss_bytes / 2**20:.1f} MiB, memray heap peak {heap}, "
          f"wall {m.wall_s:.2f} s")  # fmt: skip
    flame = report.flamegraph
    print(
        f"wrote {report.summary}, {report.rss_png}, {flame.path if flame else '(no flame graph)'}"
    )
    if flame is not None and flame.note:
        print(f"note: Python frames only in the flame graph: {flame.note}")
    return 0


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add ``scaling`` and ``profile`` to ``sub``."""
    _register_scaling(sub)
    _register_profile(sub)
