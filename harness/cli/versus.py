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

_SIZE_HELP = "synthetic slide sides to run (written under OUT/slides/ if missing)"


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add ``versus`` to ``sub``."""
    from harness.peers.versus import DEFAULT_PEER_PYTHON, ENGINES

    p = sub.add_parser("versus", help="compare memory, time and outputs with a peer engine")
    p.add_argument("peer", choices=["tiatoolbox"], help="the peer engine")
    p.add_argument("slides", nargs="*", type=Path, help="TIFF slides (or use --sizes)")
    p.add_argument("--sizes", nargs="+", type=int, default=[], help=_SIZE_HELP)
    p.add_argument("--out", type=Path, required=True, help="directory for versus.json etc.")
    p.add_argument("--model", default="tiny-cnn")
    p.add_argument("--patch", type=int, default=256)
    p.add_argument("--stride", type=int, default=128)
    p.add_argument("--mpp", type=float, default=0.5)
    p.add_argument("--budget", default=None, help="our memory budget (default: the engine's)")
    p.add_argument("--batch-size", type=int, default=8, help="TIAToolbox batch size")
    p.add_argument("--peer-python", type=Path, default=DEFAULT_PEER_PYTHON)
    p.add_argument(
        "--peer-probabilities",
        action="store_true",
        help="ask TIAToolbox to return probabilities too (compares them)",
    )
    p.add_argument(
        "--ram-share",
        type=float,
        default=0.5,
        help="skip TIAToolbox where its predicted peak exceeds this share of RAM",
    )
    p.add_argument("--engines", nargs="+", choices=["ours", "tiatoolbox"], default=list(ENGINES))
    p.add_argument("--nice", type=int, default=0, help="run both engines under nice -n N")
    p.add_argument("--timeout", type=float, default=None, help="seconds per engine run")
    p.add_argument("--keep-outputs", action="store_true", help="keep both zarr outputs")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the study, print the table, write ``versus.json`` and ``versus.png``."""
    from harness.peers import report
    from harness.peers.versus import VersusConfig, run_study, slide_job, synthetic_job

    if not args.slides and not args.sizes:
        raise ConfigError("give SLIDE paths or --sizes")
    cfg = VersusConfig(
        model=args.model,
        patch=args.patch,
        stride=args.stride,
        mpp=args.mpp,
        budget=args.budget,
        batch_size=args.batch_size,
        peer_python=args.peer_python,
        ram_share=args.ram_share,
        peer_probabilities=args.peer_probabilities,
        nice=args.nice,
        timeout_s=args.timeout,
        keep_outputs=args.keep_outputs,
        engines=tuple(args.engines),
    )
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    jobs = [slide_job(path, cfg.mpp) for path in args.slides]
    jobs += [synthetic_job(s, out / "slides", cfg.mpp) for s in args.sizes]
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
