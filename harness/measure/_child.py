"""Child side of :func:`harness.measure.run_callable` (``python -m harness.measure._child``).

Kept free of heavy imports so the child's baseline is the workload's own.
"""

from __future__ import annotations

import contextlib
import pickle
import sys
import traceback
from pathlib import Path
from typing import Any

from harness.measure.runner import write_baseline


def _tracking(memray_file: Path | None) -> contextlib.AbstractContextManager[Any]:
    if memray_file is None:
        return contextlib.nullcontext()
    import memray

    return memray.Tracker(memray_file, native_traces=True, follow_fork=True)


def main(argv: list[str]) -> int:
    """Load the pickled call in ``argv[0]``, run it, pickle its result to ``argv[1]``."""
    payload, result = Path(argv[0]), Path(argv[1])
    with payload.open("rb") as f:
        header = pickle.load(f)
        sys.path[:] = header["sys_path"]
        fn, args, kwargs = pickle.load(f)  # imports fn's module
    write_baseline()
    try:
        with _tracking(header["memray_file"]):
            value = fn(*args, **kwargs)
    except Exception:
        traceback.print_exc()
        return 1
    with result.open("wb") as f:
        pickle.dump(value, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
