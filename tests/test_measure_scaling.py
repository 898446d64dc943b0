"""Tests for harness.measure.scaling: the growth decision, records, files, one real study."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest

from harness.cli import main
from harness.errors import ConfigError
from harness.measure.plots import plot_scaling
from harness.measure.scaling import (
    ScalingConfig,
    ScalingRecord,
    format_table,
    growth_verdict,
    parse_growth,
    predict_dense_peak,
    segment_command_available,
    study_exit_code,
    write_json,
)

if TYPE_CHECKING:
    from pathlib import Path

MiB = 2**20


def _ok(size: int, peak_mib: float, engine: str = "streaming") -> ScalingRecord:
    return ScalingRecord(size, engine, "ok", peak_rss_bytes=int(peak_mib * MiB), wall_s=1.0)


@pytest.mark.parametrize(
    ("records", "limit", "passed"),
    [
        pytest.param([_ok(4096, 500), _ok(65536, 510)], 0.05, True, id="2%-under-5%"),
        pytest.param([_ok(4096, 500), _ok(65536, 530)], 0.05, False, id="6%-over-5%"),
        pytest.param([_ok(4096, 500), _ok(65536, 525)], 0.05, True, id="exactly-5%"),
        pytest.param([_ok(65536, 510), _ok(4096, 500)], 0.05, True, id="order-free"),
        pytest.param(
            [_ok(4096, 500), _ok(16384, 900), _ok(65536, 510)], 0.05, True, id="ends-only"
        ),
        pytest.param([_ok(4096, 500), _ok(65536, 400)], 0.0, True, id="shrinking"),
        pytest.param([_ok(4096, 500), _ok(65536, 9000)], None, True, id="no-limit"),
        pytest.param(
            [_ok(4096, 500), _ok(65536, 510), _ok(65536, 5000, "dense")],
            0.05,
            True,
            id="dense-ignored",
        ),
    ],
)
def test_growth_verdict(records: list[ScalingRecord], limit: float | None, passed: bool) -> None:
    verdict = growth_verdict(records, limit)
    assert verdict is not None
    assert verdict.passed is passed
    assert verdict.smallest_size == 4096 and verdict.largest_size == 65536


@pytest.mark.parametrize(
    "records",
    [
        pytest.param([], id="none"),
        pytest.param([_ok(4096, 500)], id="one-size"),
        pytest.param([_ok(4096, 500), ScalingRecord(65536, "streaming", "failed")], id="failed"),
        pytest.param([_ok(4096, 500), _ok(4096, 600)], id="same-size"),
    ],
)
def test_growth_verdict_needs_two_sizes(records: list[ScalingRecord]) -> None:
    assert growth_verdict(records, 0.05) is None


def test_growth_fails_the_cli_decision() -> None:
    verdict = growth_verdict([_ok(4096, 500), _ok(65536, 600)], 0.05)
    assert verdict is not None
    assert verdict.growth == pytest.approx(0.2)
    assert "FAIL" in verdict.describe()


@pytest.mark.parametrize(
    ("records", "limit", "code"),
    [
        pytest.param([_ok(4096, 500), _ok(65536, 510)], 0.05, 0, id="pass"),
        pytest.param([_ok(4096, 500), _ok(65536, 600)], 0.05, 1, id="growth"),
        pytest.param(
            [_ok(4096, 500), ScalingRecord(8192, "dense", "failed")], None, 1, id="failed-run"
        ),
        pytest.param(
            [_ok(4096, 500), ScalingRecord(65536, "dense", "skipped")], None, 0, id="skip-is-fine"
        ),
        pytest.param([_ok(4096, 500)], 0.05, 0, id="unchecked"),
    ],
)
def test_study_exit_code(records: list[ScalingRecord], limit: float | None, code: int) -> None:
    assert study_exit_code(records, growth_verdict(records, limit)) == code


@pytest.mark.parametrize(
    ("text", "value"),
    [("5%", 0.05), ("0.05", 0.05), ("0", 0.0), ("12.5%", 0.125)],
)
def test_parse_growth(text: str, value: float) -> None:
    assert parse_growth(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["five", "-1%", ""])
def test_parse_growth_rejects(text: str) -> None:
    with pytest.raises(ConfigError, match="max growth"):
        parse_growth(text)


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"sizes": ()}, id="no-sizes"),
        pytest.param({"sizes": (0,)}, id="zero-size"),
        pytest.param({"engines": ("fast",)}, id="engine"),
        pytest.param({"ram_share": 1.5}, id="ram-share"),
        pytest.param({"max_growth": -0.1}, id="growth"),
    ],
)
def test_config_validation(kwargs: dict[str, object], tmp_path: Path) -> None:
    args: dict[str, object] = {"sizes": (1024,), "out_dir": tmp_path, **kwargs}
    with pytest.raises(ConfigError):
        ScalingConfig(**args)  # type: ignore[arg-type]


def test_dense_prediction_is_16_bytes_per_output_pixel() -> None:
    assert predict_dense_peak(4096, 300 * MiB) == 300 * MiB + 16 * 4096 * 4096
    assert predict_dense_peak(4096, 0, scale=0.25) == 4 * 4096 * 4096


def test_json_table_and_png_are_written(tmp_path: Path) -> None:
    records = [
        _ok(1024, 400),
        _ok(4096, 410),
        _ok(1024, 420, "dense"),
        ScalingRecord(65536, "dense", "skipped", predicted_peak_bytes=70 * 2**30, reason="big"),
    ]
    verdict = growth_verdict(records, 0.05)
    doc = json.loads(write_json(records, verdict, tmp_path / "scaling.json").read_text())
    assert [r["status"] for r in doc["records"]] == ["ok", "ok", "ok", "skipped"]
    assert doc["growth"]["passed"] is True
    png = plot_scaling(records, 256 * MiB, tmp_path / "scaling.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = format_table(records)
    assert "skipped" in table and "~71680.0" in table


def test_cli_skips_dense_predicted_over_ram_share(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN a dense run and a safe share so small any prediction exceeds it
    argv = ["scaling", "--sizes", "4096", "--engine", "dense", "--ram-share", "1e-9",
            "--out", str(tmp_path)]  # fmt: skip
    # WHEN the study runs, THEN nothing is attempted and the skip is reported with its figure
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "skipped: predicted" in out
    doc = json.loads((tmp_path / "scaling.json").read_text())
    assert doc["records"][0]["predicted_peak_bytes"] >= 16 * 4096 * 4096 * 0.25
    assert (tmp_path / "scaling.png").is_file()


def test_cli_rejects_bad_growth(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["scaling", "--sizes", "1024", "--max-growth", "lots", "--out", str(tmp_path)]) == 2
    assert "max growth" in capsys.readouterr().err


def test_tiny_real_scaling_study(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("harness.segment")
    if not segment_command_available():
        pytest.skip("wsi-harness segment is not registered yet")
    # GIVEN two tiny slides, streaming, with a generous growth limit
    argv = ["scaling", "--sizes", "1024,2048", "--engine", "streaming", "--budget", "128MB",
            "--out", str(tmp_path), "--max-growth", "50%"]  # fmt: skip
    # WHEN the study runs
    code = main(argv)
    out = capsys.readouterr().out
    # THEN both runs succeeded, the files exist and the verdict is printed
    assert code == 0, out
    doc = json.loads((tmp_path / "scaling.json").read_text())
    assert [(r["size"], r["status"]) for r in doc["records"]] == [(1024, "ok"), (2048, "ok")]
    for record in doc["records"]:
        assert record["peak_rss_bytes"] >= record["ru_maxrss_bytes"] * 0.95
        assert record["segment"]["engine"] == "streaming"
        assert record["megapixels_per_s"] > 0
    assert (tmp_path / "scaling.png").is_file()
    assert "growth 1024 -> 2048" in out
    assert not (tmp_path / "runs" / "streaming-1024.zarr").exists()  # outputs removed


def test_tiny_study_exit_code_follows_verdict(tmp_path: Path) -> None:
    pytest.importorskip("harness.segment")
    if not segment_command_available():
        pytest.skip("wsi-harness segment is not registered yet")
    # GIVEN a real study with no growth allowed at all
    argv = ["scaling", "--sizes", "512,2048", "--engine", "streaming", "--out", str(tmp_path),
            "--max-growth", "0%", "--budget", "128MB"]  # fmt: skip
    # THEN the exit status is the verdict recorded in scaling.json
    code = main(argv)
    doc = json.loads((tmp_path / "scaling.json").read_text())
    assert code == (0 if doc["growth"]["passed"] else 1)


_USER_ENGINE = '''
import numpy as np, tifffile, zarr

def segment(slide, out, model, patch, stride, mpp, batch_size):
    """A user's engine: threshold the slide's base level into a labels array."""
    image = tifffile.imread(slide, level=0)
    group = zarr.open_group(str(out), mode="w")
    group.create_array("labels", data=(image.mean(axis=2) < 200).astype("uint8"))
    return {"engine": "threshold", "pixels": int(image.shape[0] * image.shape[1])}
'''


def test_scaling_measures_a_user_engine_on_tiffs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN a user's engine module in the working directory, named module:callable
    (tmp_path / "userengine.py").write_text(_USER_ENGINE)
    monkeypatch.chdir(tmp_path)
    argv = ["scaling", "--sizes", "512,1024", "--engine", "userengine:segment", "--out", "rep"]
    # WHEN the study runs it (a file-reading engine: pyramidal TIFFs are written first)
    code = main(argv)
    out = capsys.readouterr().out
    # THEN each size ran in a fresh process on its TIFF, recorded under the engine's name
    assert code == 0, out
    doc = json.loads((tmp_path / "rep" / "scaling.json").read_text())
    records = doc["records"]
    assert [(r["engine"], r["size"], r["status"]) for r in records] == [
        ("userengine:segment", 512, "ok"), ("userengine:segment", 1024, "ok")
    ]  # fmt: skip
    assert [r["segment"]["pixels"] for r in records] == [512 * 512, 1024 * 1024]
    assert all(r["peak_rss_bytes"] > 0 for r in records)
    assert (tmp_path / "rep" / "slides" / "synthetic-1024.tiff").is_file()
    assert "userengine:segment peak RSS growth 512 -> 1024" in out


def test_scaling_skips_a_peer_without_its_venv(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN the MONAI peer pointed at a python that does not exist
    monkeypatch.setenv("WSI_HARNESS_PEER_MONAI", str(tmp_path / "no" / "python"))
    # WHEN a study asks for it THEN it is skipped, saying how to build the peer
    assert main(["scaling", "--sizes", "512", "--engine", "monai", "--out", str(tmp_path)]) == 0
    doc = json.loads((tmp_path / "scaling.json").read_text())
    assert doc["records"][0]["status"] == "skipped"
    assert "scripts/peer_env.sh monai" in doc["records"][0]["reason"]


def test_scaling_refuses_an_unknown_engine(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    assert main(["scaling", "--sizes", "512", "--engine", "fast", "--out", str(tmp_path)]) == 2
    assert "unknown engine 'fast'" in capsys.readouterr().err
