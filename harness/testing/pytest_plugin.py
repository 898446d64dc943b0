"""pytest plugin: memory gates for any whole-slide engine (entry point ``wsi_harness``).

Installed with wsi-harness and loaded by pytest through the ``pytest11``
entry point, so ``pip install wsi-harness`` is enough. It adds:

``@pytest.mark.limit_rss("1.5 GB", above_baseline=False, period_s=0.01)``
    Fail the test when the summed RSS of the *whole process tree* of the
    pytest process during the test body passes the limit -- forked and spawned
    children included (DataLoader workers, dask workers, ``subprocess``), which
    pytest-memray's ``limit_memory`` cannot see. Fixtures are excluded: the
    sampler runs only around the test function. With ``above_baseline=True``
    the limit applies to the peak minus the tree's RSS at the start of the
    body. Details and what sampling can miss: :mod:`harness.testing.plugin.tree_peak`.
``@pytest.mark.bounded(sizes=[...], max_growth="5%")``
    The marked function *is* the workload: it takes one argument, ``size``, and
    runs once per size in a fresh process; the test fails when the whole-tree
    peak RSS grows more than ``max_growth`` from the smallest to the largest
    size. :func:`assert_bounded` is the same check for a command template or
    any importable callable.
Fixtures ``wsi_synthetic`` and ``wsi_tiff``
    Factories of synthetic slides and cached pyramidal TIFFs
    (:mod:`harness.testing.fixtures`).

Sizes are parsed by :func:`harness.units.parse_bytes`: ``1.5GB`` is decimal
(1.5 x 10^9 bytes), ``1.5GiB`` binary.
"""

from __future__ import annotations

import inspect
import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from harness.errors import HarnessError
from harness.measure.rss import DEFAULT_PERIOD_S
from harness.testing.fixtures import wsi_synthetic, wsi_tiff
from harness.testing.plugin.bounded import BoundedMark, BoundedReport, assert_bounded
from harness.testing.plugin.tree_peak import BodyWatch, RssLimit, user_properties
from harness.testing.plugin.watcher import TreeWatcher

if TYPE_CHECKING:
    from collections.abc import Generator

__all__ = ["BoundedReport", "assert_bounded", "wsi_synthetic", "wsi_tiff"]

_MARKERS = (
    "limit_rss(limit, above_baseline=False, period_s=None): fail when the summed RSS of the "
    "whole process tree (children included) during the test body passes limit, e.g. '1.5 GB' "
    "(decimal) or '1.5 GiB' (binary); above_baseline=True limits the peak minus the tree's "
    "RSS at the start of the body. From wsi-harness.",
    "bounded(sizes, max_growth='5%', timeout_s=None, period_s=None): the test function, taking "
    "one argument `size`, runs once per size in a fresh process; fail when its whole-tree "
    "peak RSS grows more than max_growth from the smallest to the largest size. From wsi-harness.",
)


def pytest_addoption(parser: pytest.Parser) -> None:
    """Ini options: the sampling period and the slide cache folder."""
    parser.addini(
        "limit_rss_period_s",
        "seconds between process-tree RSS samples for limit_rss and bounded (default 0.01)",
        default=str(DEFAULT_PERIOD_S),
    )
    parser.addini(
        "wsi_slide_cache",
        "folder for wsi_tiff's cached slides (default: pytest's cache directory)",
        default="",
    )


def pytest_configure(config: pytest.Config) -> None:
    """Register the markers, so ``--markers`` lists them and ``--strict-markers`` accepts them."""
    for line in _MARKERS:
        config.addinivalue_line("markers", line)


_WATCHER = pytest.StashKey[TreeWatcher]()


def _watcher(config: pytest.Config) -> TreeWatcher:
    """The session's watcher process, created on first use (closed at unconfigure)."""
    if _WATCHER not in config.stash:
        config.stash[_WATCHER] = TreeWatcher()
    return config.stash[_WATCHER]


def pytest_unconfigure(config: pytest.Config) -> None:
    """End the watcher process, if one was started."""
    watcher = config.stash.get(_WATCHER, None)
    if watcher is not None:
        watcher.close()


def _period(config: pytest.Config) -> float:
    text = str(config.getini("limit_rss_period_s"))
    try:
        return float(text)
    except ValueError:
        raise pytest.UsageError(f"limit_rss_period_s must be seconds, got {text!r}") from None


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Give a ``bounded`` test's ``size`` argument the whole list, so it collects."""
    marker = metafunc.definition.get_closest_marker("bounded")
    if marker is None or "size" not in metafunc.fixturenames:
        return
    sizes = marker.kwargs.get("sizes", ())
    # A bad value is reported when the test runs (BoundedMark), not as a collection crash.
    label = "-".join(map(str, sizes)) if isinstance(sizes, list | tuple) and sizes else "sizes"
    metafunc.parametrize("size", [tuple(sizes)], ids=[label])


@pytest.hookimpl(wrapper=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> Generator[None, object, object]:
    """Sample the process tree around the test function of a ``limit_rss`` test."""
    marker = pyfuncitem.get_closest_marker("limit_rss")
    if marker is None:
        return (yield)
    try:
        limit = RssLimit.from_marker(marker, _period(pyfuncitem.config))
    except HarnessError as exc:
        raise pytest.fail.Exception(f"bad limit_rss marker: {exc}", pytrace=False) from None
    watch = BodyWatch.start(_watcher(pyfuncitem.config), limit.period_s)
    try:
        result = yield
    finally:
        body = watch.finish()
        pyfuncitem.user_properties.extend(user_properties(body))
    failure = limit.failure(body)
    if failure is not None:
        pytest.fail(failure, pytrace=False)
    pyfuncitem.add_report_section("call", "limit_rss", body.describe())  # shown with -rP
    return result


def _workload(pyfuncitem: pytest.Function) -> Any:
    """The marked test function itself, checked to be runnable in a fresh process."""
    fn = inspect.unwrap(pyfuncitem.obj)  # pytest-memray may have wrapped it
    params = list(inspect.signature(fn).parameters)
    if params != ["size"] or "." in fn.__qualname__:
        pytest.fail(
            f"a bounded test must be a module-level function taking only `size` (it runs in a "
            f"fresh process per size, where fixtures do not exist); {fn.__qualname__} takes "
            f"{params}",
            pytrace=False,
        )
    return fn


def _study_dir(config: pytest.Config, nodeid: str) -> Path:
    """Where a bounded test's table and plot go: pytest's cache, else a temporary folder."""
    if hasattr(config, "cache"):
        name = re.sub(r"[^\w.-]+", "-", nodeid).strip("-")
        return config.cache.mkdir("wsi-harness-bounded") / name
    return Path(tempfile.mkdtemp(prefix="wsi-bounded-"))


@pytest.hookimpl(tryfirst=True, specname="pytest_pyfunc_call")
def pytest_pyfunc_call_bounded(pyfuncitem: pytest.Function) -> bool | None:
    """Run a ``bounded`` test's function at every size in fresh processes, not in pytest."""
    marker = pyfuncitem.get_closest_marker("bounded")
    if marker is None:
        return None
    try:
        spec = BoundedMark.from_marker(marker, _period(pyfuncitem.config))
    except HarnessError as exc:
        raise pytest.fail.Exception(f"bad bounded marker: {exc}", pytrace=False) from None
    fn = _workload(pyfuncitem)
    try:
        report = assert_bounded(
            fn, spec.sizes, spec.max_growth, name=pyfuncitem.originalname,
            out_dir=_study_dir(pyfuncitem.config, pyfuncitem.nodeid), timeout_s=spec.timeout_s,
            period_s=spec.period_s,
        )  # fmt: skip
    except AssertionError as exc:
        raise pytest.fail.Exception(str(exc), pytrace=False) from None
    pyfuncitem.add_report_section("call", "bounded", report.describe())  # shown with -rP
    return True
