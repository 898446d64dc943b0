"""``wsi-harness export``: through the real CLI entry point, on real zarr outputs."""

from __future__ import annotations

import gzip
import importlib.util
import json
import re

import numpy as np
import pytest
import zarr
from _export_outputs import known_map, write_output

from harness.cli import build_parser, main

HAS_GEOJSON = importlib.util.find_spec("harness.output.geojson") is not None
needs_geojson = pytest.mark.skipif(
    not HAS_GEOJSON, reason="harness/output/geojson.py (the GeoJSON exporter) has not landed yet"
)


@pytest.fixture
def output(tmp_path):
    labels, probs = known_map(80, 96)
    return write_output(tmp_path / "m.zarr", labels, probs), labels


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "Traceback" not in err[0]
    return err[0]


@pytest.mark.parametrize("version", ["0.5", "0.4"])
def test_export_ome_zarr_writes_the_label_image(tmp_path, output, version) -> None:
    src, labels = output
    dest = tmp_path / "a.ome.zarr"
    argv = ["export", str(src), "--ome-zarr", str(dest), "--ome-version", version, "--no-progress"]
    assert main(argv) == 0
    g = zarr.open_group(dest, mode="r")
    np.testing.assert_array_equal(g["labels/classes/0"][:], labels)
    assert g.info._zarr_format == (3 if version == "0.5" else 2)


def test_at_least_one_format_is_required(output, capsys) -> None:
    assert main(["export", str(output[0])]) == 2
    assert "--ome-zarr and/or --geojson" in _error_line(capsys)


def test_incomplete_output_is_refused_in_one_line(tmp_path, capsys) -> None:
    labels, probs = known_map(32, 32)
    src = write_output(tmp_path / "i.zarr", labels, probs, complete=False)
    dest = tmp_path / "a.ome.zarr"
    assert main(["export", str(src), "--ome-zarr", str(dest), "--no-progress"]) == 2
    assert "incomplete" in _error_line(capsys)
    assert not dest.exists() and not (tmp_path / "a.ome.zarr.partial").exists()


def test_existing_destination_needs_overwrite(tmp_path, output, capsys) -> None:
    src, _ = output
    dest = tmp_path / "a.ome.zarr"
    argv = ["export", str(src), "--ome-zarr", str(dest), "--no-progress"]
    assert main(argv) == 0
    capsys.readouterr()
    assert main(argv) == 2
    assert "--overwrite" in _error_line(capsys)
    assert main([*argv, "--overwrite"]) == 0


def test_every_option_shows_its_default_in_help() -> None:
    parser = build_parser()
    export = parser._subparsers._group_actions[0].choices["export"]  # type: ignore[union-attr]
    helps = {a.dest: a.help or "" for a in export._actions if a.option_strings and a.dest != "help"}
    text = export.format_help()
    assert {"ome_zarr", "ome_version", "geojson", "object_type", "min_area", "simplify"} <= set(
        helps
    )
    for dest in helps:
        flag = "--" + dest.replace("_", "-")
        assert re.search(re.escape(flag) + r".*?\(default: [^)]*\)", text, re.S), flag


@needs_geojson
def test_one_pass_writes_ome_zarr_and_geojson(tmp_path, output) -> None:
    src, labels = output
    ome, gj = tmp_path / "a.ome.zarr", tmp_path / "b.geojson.gz"
    argv = ["export", str(src), "--ome-zarr", str(ome), "--geojson", str(gj), "--no-progress"]
    assert main(argv) == 0
    np.testing.assert_array_equal(zarr.open_group(ome, mode="r")["labels/classes/0"][:], labels)
    with gzip.open(gj, "rt") as f:
        doc = json.load(f)
    assert doc["type"] == "FeatureCollection" and doc["features"]
    kinds = {f["properties"]["objectType"] for f in doc["features"]}
    assert kinds == {"annotation"}
