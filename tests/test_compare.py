"""``compare``: tile by tile, in memory independent of the outputs' size."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from harness.compare import compare_outputs
from harness.testing.labelmaps import write_label_output

WIDE = (512, 65536)  # 33 Mpx of labels: the old 1024-row bands held all of it several times


def _stripes(box: tuple[int, int, int, int]) -> np.ndarray:
    y0, y1, x0, x1 = box
    xs = np.arange(x0, x1)
    return np.broadcast_to(((xs // 100) % 3).astype(np.uint8), (y1 - y0, x1 - x0)).copy()


@pytest.fixture(scope="module")
def wide_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("compare")

    def other(box: tuple[int, int, int, int]) -> np.ndarray:
        lab = _stripes(box)
        if box[0] == 0 and box[2] <= 40_000 < box[3]:  # one pixel differs, far along
            lab[0, 40_000 - box[2]] = (lab[0, 40_000 - box[2]] + 1) % 3
        return lab

    a = write_label_output(root / "a.zarr", _stripes, shape=WIDE)
    b = write_label_output(root / "b.zarr", other, shape=WIDE)
    return a, b


def test_tiles_find_one_pixel_in_33_million(wide_pair: tuple[Path, Path]) -> None:
    cmp = compare_outputs(*wide_pair)
    assert not cmp.bitwise_equal and not cmp.probabilities_compared
    assert round((1 - cmp.label_agreement) * WIDE[0] * WIDE[1]) == 1
    assert cmp.coverage_mismatch_px == 0
    assert compare_outputs(wide_pair[0], wide_pair[0]).bitwise_equal


@pytest.mark.memory
@pytest.mark.limit_memory("24 MB")
def test_compare_memory_does_not_follow_the_width(wide_pair: tuple[Path, Path]) -> None:
    # 1024 x 1024 tiles: about 1 MiB of labels a side at a time, not 512 x 65536 rows
    assert compare_outputs(*wide_pair).label_agreement < 1


@pytest.fixture(scope="module")
def full_and_labels_only(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from harness.config import RunConfig
    from harness.plan import PlanConfig
    from harness.segment import segment

    root = tmp_path_factory.mktemp("kinds")
    plan = PlanConfig(patch=64, stride=32, chunk=64, mpp=0.5)
    outs = []
    for name, probabilities in (("full.zarr", True), ("labels.zarr", False)):
        run = RunConfig(plan=plan, model="tiny-cnn", probabilities=probabilities, progress=False)
        outs.append(segment("synthetic:256,seed=1", out=root / name, run=run).output)
    return Path(outs[0]), Path(outs[1])


def test_labels_only_against_full_says_probabilities_were_not_compared(
    full_and_labels_only: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    from harness.cli import main

    full, labels = full_and_labels_only
    assert main(["compare", str(full), str(labels)]) == 0
    line = capsys.readouterr().out
    assert "probabilities NOT compared" in line and f"{labels} holds labels only" in line
    # JSON stays strict (no NaN) and names what was compared
    assert main(["compare", str(full), str(labels), "--json"]) == 0
    record = json.loads(capsys.readouterr().out, parse_constant=_reject)
    assert record["compared"] == ["labels"] and record["max_abs_diff"] is None
    assert record["labels_only"] == [str(labels)]
    assert main(["compare", str(full), str(full), "--json"]) == 0
    record = json.loads(capsys.readouterr().out, parse_constant=_reject)
    assert record["compared"] == ["probabilities", "labels"] and record["max_abs_diff"] == 0


def _reject(constant: str) -> None:
    raise AssertionError(f"not strict JSON: {constant}")


@pytest.mark.parametrize("atol", ["nan", "inf", "-inf", "-0.1", "x"])
def test_atol_must_be_a_finite_number_at_least_0(
    full_and_labels_only: tuple[Path, Path], atol: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from harness.cli import main

    full = str(full_and_labels_only[0])
    assert main(["compare", full, full, f"--atol={atol}"]) == 2
    assert "--atol" in capsys.readouterr().err
