"""The ``segment`` flags, generated from :data:`harness.config.OPTIONS`.

Every command that runs segmentations (``segment``, ``profile``'s pass-through,
``scaling``, ``cohort``) adds the same flags from the same table, with the
defaults of :class:`~harness.config.RunConfig`, so they cannot drift apart.
"""

from __future__ import annotations

import argparse
import contextlib
from typing import TYPE_CHECKING, Any

from harness.config import OPTIONS, Option, RunConfig, _get
from harness.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator


class DefaultsFormatter(argparse.HelpFormatter):
    """Help that shows every valued option's default, and no ``None``/``False`` noise.

    argparse's own ``ArgumentDefaultsHelpFormatter`` prints ``(default: None)``
    for required options and ``(default: False)`` for flags; this one leaves
    required options, flags and help that already states its default alone.
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        quiet = (
            not action.option_strings
            or action.required
            or action.nargs == 0  # flags: off unless given
            or action.default is argparse.SUPPRESS
            or "default" in text
        )
        if quiet:
            return text
        shown = "none" if action.default is None else "%(default)s"
        return f"{text} (default: {shown})"


def _typed(opt: Option) -> Callable[[str], Any]:
    """An argparse ``type`` that turns our ConfigError into argparse's one-line usage error."""
    assert opt.parse is not None
    parse = opt.parse

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except (ConfigError, ValueError) as exc:
            raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None

    convert.__name__ = opt.dest  # argparse names the type in its error message
    return convert


def _default_text(opt: Option, default: Any) -> str:
    """`` (default: X)`` unless the help already says its default in words."""
    if opt.parse is None or "(default" in opt.help:
        return ""
    if default is None:
        return " (default: none)"
    if opt.field == "budget":
        from harness.units import format_bytes

        return f" (default: {format_bytes(default)})"
    return f" (default: {opt.show(default)})"


def _declared_default(defaults: RunConfig, path: str) -> Any:
    """A field's declared default (PlanConfig normalises ``output_patch=None`` to the patch)."""
    if path.startswith("plan."):
        import dataclasses

        from harness.plan import PlanConfig

        declared = {f.name: f.default for f in dataclasses.fields(PlanConfig)}
        value = declared[path[5:]]
        return value if value is not dataclasses.MISSING else _get(defaults, path)
    return _get(defaults, path)


def add_run_arguments(parser: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    """Add every run flag (except those setting the fields in ``skip``) to ``parser``."""
    defaults = RunConfig()
    group = parser.add_argument_group("run options")
    for opt in OPTIONS:
        if opt.field in skip:
            continue
        default = _declared_default(defaults, opt.field)
        help_text = opt.help + _default_text(opt, default)
        if opt.parse is None:
            group.add_argument(opt.flag, action="store_true", help=help_text)
        else:
            group.add_argument(
                opt.flag, type=_typed(opt), default=default, choices=opt.choices,
                metavar=opt.metavar, help=help_text,
            )  # fmt: skip


def run_config(ns: argparse.Namespace, **overrides: Any) -> RunConfig:
    """The :class:`RunConfig` of parsed arguments, with ``overrides`` applied."""
    config = RunConfig.from_namespace(ns)
    return config.replace(**overrides) if overrides else config


def add_cluster_arguments(parser: argparse.ArgumentParser) -> None:
    """``--cluster local:N`` and ``--scheduler ADDRESS`` (see :mod:`harness.distributed`)."""
    dist = parser.add_argument_group("running on a cluster (dask.distributed)")
    dist.add_argument(
        "--cluster",
        default=None,
        metavar="local:N",
        help="start a LocalCluster of N single-threaded worker processes "
        "(default: none, run in this process)",
    )
    dist.add_argument("--scheduler", default=None, metavar="tcp://HOST:PORT",
                      help="run on an existing dask scheduler (default: none)")  # fmt: skip


@contextlib.contextmanager
def cluster_from(args: argparse.Namespace, run: RunConfig) -> Iterator[Any]:
    """A dask client for ``--cluster``/``--scheduler``, or ``None`` to run in this process."""
    if not (args.cluster or args.scheduler):
        yield None
        return
    from harness.distributed import cluster_client

    with cluster_client(run, args.cluster, args.scheduler) as client:
        yield client
