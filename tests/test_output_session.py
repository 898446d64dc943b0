"""Owning an output: never inside another output, never over a folder that is not ours."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pytest

from harness.output import OutputError, open_output
from harness.output.state import OutputLock
from harness.plan import PlanConfig
from harness.segment import segment

if TYPE_CHECKING:
    from pathlib import Path

CFG = PlanConfig(patch=48, output_patch=32, stride=16, chunk=32, mpp=0.5)


def _run(slide, out, **kw):  # type: ignore[no-untyped-def]
    return segment(slide, "passthrough", CFG, out, progress=False, **kw)


def test_an_output_inside_another_output_is_refused(noise_slide, tmp_path: Path) -> None:
    # GIVEN a complete output
    outer = tmp_path / "o.zarr"
    _run(noise_slide, outer)
    before = sorted(p.name for p in (outer / "labels").iterdir())
    # WHEN a run targets one of its arrays, even with overwrite
    with pytest.raises(OutputError, match="inside the wsi-harness output"):
        _run(noise_slide, outer / "labels", overwrite=True)
    # THEN nothing of it changed and it still opens complete
    assert sorted(p.name for p in (outer / "labels").iterdir()) == before
    assert open_output(outer).attrs["wsi_harness"]["complete"] is True


def test_overwrite_waits_for_no_one_but_refuses_a_live_writer(noise_slide, tmp_path: Path) -> None:
    # GIVEN an output whose lock another writer holds right now
    out = tmp_path / "o.zarr"
    _run(noise_slide, out)
    holder = OutputLock(out)
    holder.acquire(takeover=True)
    holder.record("someone")
    try:
        # WHEN this run tries to replace it
        with pytest.raises(OutputError, match="is being written by pid"):
            _run(noise_slide, out, overwrite=True)
    finally:
        holder.release()
    # THEN once the writer is gone, overwrite works
    assert _run(noise_slide, out, overwrite=True).chunks_written > 0


def test_an_empty_folder_is_used_and_a_stopped_runs_state_does_not_block(
    noise_slide, tmp_path: Path
) -> None:
    out = tmp_path / "o.zarr"
    (out / ".wsi-harness").mkdir(parents=True)  # a run that stopped before creating its store
    assert _run(noise_slide, out).chunks_written > 0
    assert not (out / ".wsi-harness").exists()


def test_progress_records_flush_in_the_background_and_fail_loudly(tmp_path: Path) -> None:
    import shutil
    import time

    from harness.output.state import ProgressRecord, read_records

    # GIVEN a record due at every mark
    record = ProgressRecord(tmp_path, "all", 8, interval_s=0.0)
    # WHEN chunks are marked, the background flush lists them without persist()
    record.mark(3)
    deadline = time.monotonic() + 10
    while not read_records(tmp_path, 8)[3] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert read_records(tmp_path, 8)[3]
    # AND persist() writes the rest synchronously
    record.mark(5)
    record.persist()
    assert list(np.flatnonzero(read_records(tmp_path, 8))) == [3, 5]
    # WHEN the record's folder becomes unwritable, the failure surfaces in the writer thread
    shutil.rmtree(record.path.parent)
    record.path.parent.write_text("not a folder")
    record.mark(6)
    with pytest.raises(OutputError, match="progress record"):
        if record._flusher is not None:
            record._flusher.join()
        record.mark(7)
