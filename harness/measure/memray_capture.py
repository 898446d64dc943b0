"""memray captures: wrapping a command, reading the heap high-water mark, reports.

memray intercepts ``malloc``/``mmap`` and friends, so its peak is the largest
total of *live heap allocations* (Python objects, numpy and torch buffers,
with ``--native`` the C stacks that made them). It is not RSS: it does not
see pages of mapped files, allocator caches and fragmentation, the
interpreter's own code and shared libraries, or memory of processes it does
not follow. With ``--follow-fork`` each forked child writes its own capture
``FILE.<pid>``, counting only what the child allocates after the fork;
``spawn``-ed children are not followed at all.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from harness.errors import HarnessError

if TYPE_CHECKING:
    from collections.abc import Sequence

#: ``memray run`` options used for every capture.
MEMRAY_RUN_OPTIONS = ("--native", "--follow-fork", "--quiet", "--force")


@dataclass(frozen=True)
class MemrayCapture:
    """The heap high-water marks of one memray capture.

    Attributes
    ----------
    path
        The capture of the root process.
    peak_bytes
        Heap high-water mark of the root process.
    child_peaks
        ``(capture path, peak bytes)`` of each readable capture of a followed
        (forked) child; each counts only what the child allocated after the fork.
    """

    path: Path
    peak_bytes: int
    child_peaks: tuple[tuple[Path, int], ...] = ()

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        return {
            "path": str(self.path),
            "peak_bytes": self.peak_bytes,
            "child_peaks": [{"path": str(p), "peak_bytes": b} for p, b in self.child_peaks],
        }


def memray_run_argv(argv: Sequence[str], output: Path, *, aggregate: bool = False) -> list[str]:
    """Wrap a Python command in ``memray run``.

    Parameters
    ----------
    argv
        A Python command: ``[python, -m, module, ...]``, ``[python, script, ...]``
        or a console script (a Python file on ``PATH``, e.g. ``wsi-harness``).
    output
        Capture file to write.
    aggregate
        Write only aggregated statistics (``--aggregate``): a small file that
        still holds the peak and a high-water-mark flame graph, but forked
        children that leave through ``os._exit`` (multiprocessing workers)
        leave empty captures, which :func:`read_capture` skips.

    Returns
    -------
    list[str]
        ``[sys.executable, -m, memray, run, <options>, -o, output, ...]``.

    Raises
    ------
    HarnessError
        If ``argv`` is empty or its program cannot be found.
    """
    if not argv:
        raise HarnessError("cannot wrap an empty command in memray")
    options = [*MEMRAY_RUN_OPTIONS, "--aggregate"] if aggregate else list(MEMRAY_RUN_OPTIONS)
    head = [sys.executable, "-m", "memray", "run", *options, "-o", str(output)]
    program, rest = argv[0], list(argv[1:])
    if Path(program).name.startswith("python"):
        return [*head, *rest]  # memray takes the same "-m module" / "script" forms
    resolved = shutil.which(program)
    if resolved is None:
        raise HarnessError(f"cannot find {program!r} to run under memray")
    return [*head, resolved, *rest]  # console scripts are Python files


def peak_bytes(path: Path) -> int:
    """Heap high-water mark recorded in one capture file."""
    import memray  # lazy: keeps ``import harness.measure`` light

    return int(memray.FileReader(path).metadata.peak_memory)


def read_capture(path: Path) -> MemrayCapture:
    """Read the root capture at ``path`` and every ``path.<pid>`` child capture.

    Raises
    ------
    HarnessError
        If the capture file does not exist (the run failed before tracking).
    """
    if not path.is_file():
        raise HarnessError(f"no memray capture at {path}")
    children = sorted(p for p in path.parent.glob(f"{path.name}.*") if p.suffix[1:].isdigit())
    peaks = []
    for child in children:
        try:
            peaks.append((child, peak_bytes(child)))
        except OSError:
            continue  # empty aggregated capture of a child that called os._exit
    return MemrayCapture(path, peak_bytes(path), tuple(peaks))


@dataclass(frozen=True)
class FlameGraph:
    """A flame graph written by :func:`flamegraph`.

    Attributes
    ----------
    path
        The HTML file.
    native
        Whether it shows native (C/C++) frames; ``False`` after the fallback.
    note
        Why the fallback was taken, else empty.
    """

    path: Path
    native: bool
    note: str = ""


def _python_only_flamegraph(capture: Path, html: Path) -> None:
    """Flame graph of the high-water mark from Python frames only.

    memray 1.20's ``flamegraph`` command trips an assertion while merging
    Python and native frames of some torch captures (bloomberg/memray#686);
    the same reporter with ``native_traces=False`` reads the same capture.
    """
    import memray
    from memray.reporters.flamegraph import FlameGraphReporter

    reader = memray.FileReader(capture)
    reporter = FlameGraphReporter.from_snapshot(
        reader.get_high_watermark_allocation_records(merge_threads=True),
        memory_records=tuple(reader.get_memory_snapshots()),
        native_traces=False,
    )
    with html.open("w") as f:
        reporter.render(
            outfile=f, metadata=reader.metadata, show_memory_leaks=False,
            merge_threads=True, inverted=False,
        )  # fmt: skip


def flamegraph(capture: Path, html: Path) -> FlameGraph:
    """Write memray's flame graph of the high-water mark to ``html``.

    Tries ``memray flamegraph`` (with native frames when captured); if that
    fails, falls back to a Python-frames-only graph of the same capture.

    Raises
    ------
    HarnessError
        If neither way produces a graph.
    """
    argv = [sys.executable, "-m", "memray", "flamegraph", "--force", "-o", str(html), str(capture)]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode == 0:
        return FlameGraph(html, native=True)
    note = done.stderr.strip().splitlines()[-1:] or ["memray flamegraph failed"]
    try:
        _python_only_flamegraph(capture, html)
    except Exception as exc:
        raise HarnessError(f"memray flamegraph failed: {note[0]}; fallback: {exc}") from exc
    return FlameGraph(html, native=False, note=f"native flame graph failed ({note[0][:200]})")
