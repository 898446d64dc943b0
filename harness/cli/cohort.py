"""``wsi-harness cohort``: many slides, one output each, one job."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.errors import ConfigError

if TYPE_CHECKING:
    import argparse


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add ``cohort``."""
    from harness.cli.options import add_cluster_arguments, add_run_arguments

    p = sub.add_parser(
        "cohort",
        help="segment many slides, one output each (resumable, failures isolated)",
        description="Segment every slide into OUT/<name>.zarr. Complete outputs whose identity "
        "matches are skipped, incomplete ones resumed; a bad slide fails alone. Writes "
        "OUT/cohort.csv and OUT/cohort.json. Run the same command again to continue.",
    )
    p.add_argument("slides", nargs="*", help="slide paths or synthetic: specs")
    p.add_argument(
        "--list",
        type=Path,
        default=None,
        metavar="FILE",
        help="text file of slides (one a line) or CSV with slide[,mask][,name]",
    )
    p.add_argument("--out", type=Path, required=True, help="folder for the outputs")
    p.add_argument(
        "--concurrent", type=int, default=2, help="slides driven at once on a cluster (default: 2)"
    )
    add_run_arguments(p, skip=("resume",))
    add_cluster_arguments(p)
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run)  # fmt: skip


def run(args: argparse.Namespace) -> int:
    """Run the cohort; exit 1 when any slide failed."""
    from harness import policy
    from harness.cli.options import cluster_from, run_config
    from harness.cohort import CohortItem, read_list, run_cohort

    items = [CohortItem(s) for s in args.slides]
    if args.list is not None:
        items += read_list(args.list)
    if args.concurrent < 1:
        raise ConfigError(f"--concurrent must be >= 1, got {args.concurrent}")
    cfg = run_config(args)
    policy.apply(cfg.threads)

    def show(o: Any) -> None:
        if not args.json:
            print(f"{o.status:8s} {o.slide}" + (f": {o.error}" if o.error else ""), flush=True)

    with cluster_from(args, cfg) as client:
        concurrent = args.concurrent if client is not None else 1
        report = run_cohort(items, args.out, cfg, client, concurrent, show)
    if args.json:
        print(json.dumps({"slides": [o.__dict__ for o in report.outcomes]}))
    else:
        print(report.table())
        print(f"wrote {report.csv} and {report.json}")
    return 1 if report.failed else 0
