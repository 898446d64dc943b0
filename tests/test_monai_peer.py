"""Tests for the MONAI peer runner (harness/peers/monai_runner.py).

The runner's helpers are tested here in ``.venv``; the tests marked
``needs_monai`` run the runner itself in the MONAI peer virtualenv and skip,
saying why, when it is absent (``scripts/peer_env.sh monai`` builds it).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from harness.output.zarr_store import NO_LABEL
from harness.peers.compare import compare_outputs, harness_starts, open_output
from harness.peers.monai_runner import clean_scratch, dir_bytes, labels_of

REPO = Path(__file__).resolve().parents[1]
MONAI_PYTHON = REPO / "peer" / "monai" / "bin" / "python"
RUNNER = REPO / "harness" / "peers" / "monai_runner.py"
EDGE = 2
"""tiny-cnn's receptive-field radius: how far MONAI's black padding reaches into the slide."""

needs_monai = pytest.mark.skipif(
    not MONAI_PYTHON.is_file(),
    reason=f"MONAI peer venv absent ({MONAI_PYTHON}); build it with scripts/peer_env.sh monai",
)


# --- helpers, no peer needed --------------------------------------------------


def test_labels_of_takes_the_first_maximum_and_marks_nan():
    # GIVEN three classes with a tie (pixel 0), a clear winner (pixel 1) and a NaN (pixel 2)
    block = np.array([[[0.4, 0.1, np.nan]], [[0.4, 0.2, 0.5]], [[0.2, 0.7, 0.5]]], np.float32)
    # WHEN labelled THEN ties go to the first class, as ours, and NaN to NO_LABEL
    assert labels_of(block).tolist() == [[0, 2, NO_LABEL]]


def test_clean_scratch_measures_then_removes(tmp_path):
    # GIVEN a scratch dir with a leftover temp store and a merged store, as MONAI leaves them
    scratch = tmp_path / "scratch"
    (scratch / "tmp" / "tmpabc" / "c").mkdir(parents=True)
    (scratch / "tmp" / "tmpabc" / "c" / "0").write_bytes(b"x" * 1000)
    (scratch / "merged.zarr").mkdir()
    (scratch / "merged.zarr" / "zarr.json").write_bytes(b"y" * 300)
    # WHEN cleaned THEN each part is measured and everything is gone
    left = clean_scratch(scratch)
    assert (left.temp_bytes, left.temp_entries, left.merged_store_bytes) == (1000, ("tmpabc",), 300)
    assert left.removed_bytes == 1300
    assert not scratch.exists()
    assert dir_bytes(scratch) == 0


# --- the runner in the peer venv -----------------------------------------------


SIDE = (1000, 1100)  # (h, w): both axes off the stride grid, so both edges are padded


@pytest.fixture(scope="module")
def slide_and_ours(tmp_path_factory):
    """A small JPEG BigTIFF and our engine's output on it (tiny-cnn, patch 256, stride 128)."""
    from harness.plan import PlanConfig
    from harness.segment import segment
    from harness.slides import SyntheticSlide, write_tiff

    d = tmp_path_factory.mktemp("monai")
    path = write_tiff(SyntheticSlide(*SIDE, mpp=0.5, seed=3), d / "s.tiff", progress=False)
    out = d / "ours.zarr"
    segment(path, "tiny-cnn", PlanConfig(patch=256, stride=128, mpp=0.5), out, progress=False)
    return path, out


def _run(slide: Path, out: Path, cwd: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    argv = [str(MONAI_PYTHON), str(RUNNER), str(slide), "--out", str(out), "--model", "tiny-cnn"]
    argv += ["--patch", "256", "--stride", "128", "--mpp", "0.5", *extra]
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=600, check=False)


@needs_monai
@pytest.mark.parametrize("merger", ["avg", "zarr"])
def test_monai_agrees_with_ours_and_leaves_nothing(slide_and_ours, tmp_path, merger):
    slide, ours = slide_and_ours
    cwd, scratch = tmp_path / "cwd", tmp_path / "scratch"
    cwd.mkdir()
    # WHEN MONAI segments the same slide with the same model and grid
    done = _run(slide, tmp_path / "monai.zarr", cwd, "--merger", merger, "--probabilities",
                "--scratch", str(scratch))  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    # THEN it ran our grid: as many patches as our plan places
    assert report["patches"] == harness_starts(SIDE[0], 256, 128) * harness_starts(
        SIDE[1], 256, 128
    )
    # AND the labels agree on the common grid
    mine, theirs = open_output(ours, "labels"), open_output(Path(report["output"]), "labels")
    agreement = compare_outputs(mine, theirs, out=256, stride=128)
    assert agreement.shape_peer == agreement.shape_ours == SIDE
    assert agreement.common.label_agreement >= 0.999
    # AND probabilities differ only where MONAI's black padding reaches (the last EDGE rows/cols)
    diff = np.abs(mine.probabilities[:] - theirs.probabilities[:]).max(axis=-1)
    assert float(diff[:-EDGE, :-EDGE].max()) <= 1e-6
    assert float(diff[-EDGE:, :].max()) > 0  # the padding convention does show
    # AND nothing is left behind: not in the working dir, not in the scratch parent
    assert list(cwd.iterdir()) == []
    assert list(scratch.iterdir()) == []
    left = report["leftover"]
    if merger == "zarr":
        # MONAI 1.6.1 under zarr v3 leaves its value store in the temp folder; the
        # runner found it and removed it (a MONAI fix would show here: update docs/monai.md).
        assert left["temp_bytes"] > 0 and len(left["temp_entries"]) == 1
        assert left["merged_store_bytes"] > 0
        assert left["removed_bytes"] >= left["temp_bytes"] + left["merged_store_bytes"]
    else:
        assert left == {"temp_bytes": 0, "temp_entries": [], "merged_store_bytes": 0,
                        "removed_bytes": 0}  # fmt: skip


@needs_monai
def test_runner_refuses_a_resolution_the_slide_lacks(slide_and_ours, tmp_path):
    # GIVEN a slide with levels at 0.5 and 1.0 mpp WHEN asked for 0.7 mpp
    slide, _ = slide_and_ours
    done = subprocess.run(
        [str(MONAI_PYTHON), str(RUNNER), str(slide), "--out", str(tmp_path / "m.zarr"),
         "--mpp", "0.7", "--scratch", str(tmp_path)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    # THEN it says why (MONAI's splitter cannot resample) and leaves no scratch behind
    assert done.returncode != 0
    assert "no pyramid level at mpp 0.7" in done.stderr
    assert not (tmp_path / "m.zarr").exists()
    assert [p.name for p in tmp_path.iterdir()] == []
