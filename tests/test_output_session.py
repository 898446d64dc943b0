"""Owning an output: never inside another output, never over a folder that is not ours."""

from __future__ import annotations

from typing import TYPE_CHECKING

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
