"""GeoJSON export: exact round trip, validity, one feature per region, bounded frontier, errors."""

from __future__ import annotations

import gzip
import json
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import shapely
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rasterio.features import rasterize
from scipy import ndimage

from harness.errors import ConfigError, HarnessError
from harness.output import NO_LABEL, OutputError
from harness.output.export import export, source_info
from harness.output.geojson import GeoJsonExporter, export_geojson
from harness.render import palette
from harness.testing.labelmaps import write_label_output

CLASSES = ("background", "stroma", "nuclei", "ink")


def _scene(h: int = 200, w: int = 328) -> np.ndarray:
    """Every hard case at once, crossing the seams of 64 px tiles of 32 px chunks."""
    lab = np.zeros((h, w), np.uint8)
    yy, xx = np.mgrid[:h, :w]
    r = np.hypot(yy - 100, xx - 100)
    lab[r < 90] = 1  # a disc over nine tiles ...
    lab[r < 60] = 2  # ... holding a ring of nuclei ...
    lab[r < 40] = 1  # ... holding stroma again (nested, not connected to the outer disc)
    lab[r < 12] = 3  # ... holding ink
    lab[58:70, 24:36] = 0  # a hole in the outer disc, across a tile seam
    lab[60:68, 60:68] = 0  # a hole in the nuclei ring, across a tile corner
    lab[100:140, 60:70] = NO_LABEL  # masked inside a region, across a seam
    lab[8:132, 198:254:4] = 1  # comb teeth down over two tile rows ...
    lab[128:132, 198:300] = 1  # ... joined by a spine in the third, across a tile column
    lab[140:196:4, 226:290] = 2  # teeth across a tile column, joined by a spine right of it
    lab[140:193, 286:290] = 2
    blocks = ((yy // 3 + xx // 3) % 2 == 0) & (xx >= 264) & (xx < 312) & (yy < 120)
    lab[blocks] = 2  # a 3 px checkerboard: regions touching at corners only
    lab[(yy % 2 == xx % 2) & (yy >= 150) & (xx >= 296) & (xx < 312)] = 3  # a 1 px one
    lab[:, 312:] = NO_LABEL  # a masked margin
    return lab


def _write(tmp: Path, lab: np.ndarray, chunk: int = 32, scale: float = 1.0, **kw) -> Path:
    return write_label_output(
        tmp / "out.zarr", lab, chunk=chunk, classes=kw.pop("classes", CLASSES),
        mpp=0.5 * scale, slide_mpp=0.5, **kw,
    )  # fmt: skip


def _load(path: Path) -> dict:
    if path.suffix == ".zip":  # one GeoJSON entry, as QuPath's reader expects
        with zipfile.ZipFile(path) as archive:
            (entry,) = archive.namelist()
            assert entry == Path(path.stem).with_suffix(".geojson").name
            return json.loads(archive.read(entry))
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return json.load(f)


def _by_class(doc: dict, scale: float) -> dict[str, list]:
    """Features per class name, as shapely geometries back at the processing resolution."""
    out: dict[str, list] = {}
    for feat in doc["features"]:
        geom = shapely.geometry.shape(feat["geometry"])
        geom = shapely.transform(geom, lambda xy: xy / scale)
        out.setdefault(feat["properties"]["classification"]["name"], []).append(geom)
    return out


def _check_exact(doc: dict, lab: np.ndarray, scale: float, classes=CLASSES) -> None:
    """Rasterised back, every class equals its pixels; one feature per 4-connected component."""
    geoms = _by_class(doc, scale)
    for k, name in enumerate(classes):
        want = lab == k
        got = geoms.get(name, [])
        back = rasterize(got, out_shape=lab.shape, dtype=np.uint8) if got else np.zeros_like(lab)
        assert np.array_equal(back.astype(bool), want), f"class {name} differs"
        assert len(got) == ndimage.label(want)[1], f"class {name}: regions split or joined"
    assert all(shapely.is_valid(g) for gs in geoms.values() for g in gs)


@pytest.mark.parametrize("scale", [pytest.param(1.0, id="scale1"), pytest.param(2.0, id="scale2"),
                                   pytest.param(0.3, id="scale0.3")])  # fmt: skip
@pytest.mark.parametrize(
    "compact", [pytest.param(50_000, id="held"), pytest.param(8, id="spilled")]
)
@pytest.mark.parametrize("suffix", [".geojson", ".geojson.gz", ".zip"])
def test_round_trip_is_exact(tmp_path, scale, compact, suffix) -> None:
    # GIVEN a label map with holes, nesting, diagonal contacts and masks over many seams
    lab = _scene()
    src = _write(tmp_path, lab, scale=scale)
    # WHEN it is exported in 64 px tiles (spilling final holes at once with a tiny threshold)
    dest = tmp_path / f"b{suffix}"
    stats = export_geojson(src, dest, tile=64, compact_vertices=compact)
    # THEN it parses, rasterises back to the label map and has one feature per region
    doc = _load(dest)
    _check_exact(doc, lab, scale)
    assert stats.features == len(doc["features"]) == sum(stats.per_class.values())
    assert (stats.spilled_holes > 0) == (compact == 8)
    assert not list(tmp_path.glob("*.partial"))


def test_features_follow_qupath_conventions(tmp_path) -> None:
    lab = _scene()
    src = _write(tmp_path, lab, scale=2.0, meta={"plan": {"patch": [256, 256]}})
    export_geojson(src, tmp_path / "b.geojson", tile=64, object_type="detection")
    doc = _load(tmp_path / "b.geojson")
    assert doc["type"] == "FeatureCollection"
    lut = palette(list(CLASSES))
    for feat in doc["features"]:
        props = feat["properties"]
        assert feat["type"] == "Feature" and feat["geometry"]["type"] == "Polygon"
        assert props["objectType"] == "detection"
        name = props["classification"]["name"]
        assert props["classification"]["color"] == lut[CLASSES.index(name)].tolist()
    xy = np.concatenate([shapely.get_coordinates(shapely.geometry.shape(f["geometry"]))
                         for f in doc["features"]])  # fmt: skip
    assert xy.max(axis=0).tolist() == [2 * 312, 2 * 200]  # level-0 px: the masked margin is out
    meta = doc["wsi_harness"]
    assert meta["model"] == "ground-truth" and meta["plan"] == {"patch": [256, 256]}
    assert meta["slide"]["mpp"] == 0.5 and meta["scale"] == 2.0 and meta["version"]


def test_classes_filter_and_min_area(tmp_path) -> None:
    lab = _scene()
    src = _write(tmp_path, lab, scale=2.0)
    stats = export_geojson(src, tmp_path / "b.geojson", tile=64, classes=["ink", "stroma"],
                           min_area=4 * 3)  # fmt: skip
    doc = _load(tmp_path / "b.geojson")
    geoms = _by_class(doc, 2.0)
    assert set(geoms) == {"ink", "stroma"} and set(stats.per_class) == {"ink", "stroma"}
    dropped = {}
    for name in ("ink", "stroma"):
        comp, n = ndimage.label(lab == CLASSES.index(name))
        sizes = np.bincount(comp.ravel())[1:]
        assert len(geoms[name]) == int((sizes * 4 >= 12).sum())
        assert sorted(g.area for g in geoms[name]) == sorted(sizes[sizes * 4 >= 12].tolist())
        dropped[name] = n - len(geoms[name])
    assert dropped["ink"] > 100 and dropped["stroma"] == 0  # the single ink pixels only


@pytest.mark.parametrize("compact", [50_000, 8])
def test_simplify_keeps_every_polygon_valid(tmp_path, compact) -> None:
    rng = np.random.default_rng(3)
    lab = ndimage.zoom(rng.integers(0, 3, (40, 52)).astype(np.uint8), 5, order=0)
    lab[ndimage.binary_dilation(rng.random(lab.shape) < 0.004, iterations=2)] = 2
    src = _write(tmp_path, lab)
    exact = export_geojson(src, tmp_path / "a.geojson", tile=64, compact_vertices=compact)
    simple = export_geojson(src, tmp_path / "b.geojson", tile=64, simplify=1.5,
                            compact_vertices=compact)  # fmt: skip
    a, b = _load(tmp_path / "a.geojson"), _load(tmp_path / "b.geojson")
    assert simple.per_class == exact.per_class  # simplification never drops or splits a region
    ga = [g for gs in _by_class(a, 1.0).values() for g in gs]
    gb = [g for gs in _by_class(b, 1.0).values() for g in gs]
    assert all(shapely.is_valid(gb))
    assert shapely.get_num_coordinates(gb).sum() < 0.8 * shapely.get_num_coordinates(ga).sum()
    assert abs(shapely.area(gb).sum() - lab.size) < 0.01 * lab.size


def _blobs(seed: int) -> np.ndarray:
    """Smooth tissue with small holes and islands: staircase rings a few pixels apart."""
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.random((96, 96)), 3)
    lab = (field > np.median(field)).astype(np.uint8)
    spots = ndimage.gaussian_filter(rng.random((96, 96)), 1.2)
    lab[(spots > np.quantile(spots, 0.93)) & (lab == 1)] = 0
    lab[(spots < np.quantile(spots, 0.05)) & (lab == 0)] = 1
    return lab


@pytest.mark.parametrize("seed", [1, 5, 35])
def test_spilled_holes_simplified_alone_stay_valid(tmp_path, seed) -> None:
    # GIVEN holes close to their region's outline, spilled at every tile (threshold 4)
    src = _write(tmp_path, _blobs(seed), chunk=16, classes=CLASSES[:3])
    # WHEN each spilled hole is simplified on its own (tolerance 2 px)
    stats = export_geojson(src, tmp_path / "b.geojson", tile=32, simplify=2.0, compact_vertices=4)
    # THEN holes within twice the tolerance of another ring stayed with their region:
    # every polygon is valid (without that margin, each of these seeds gives a crossing)
    geoms = [g for gs in _by_class(_load(tmp_path / "b.geojson"), 1.0).values() for g in gs]
    assert stats.spilled_holes > 0 and all(shapely.is_valid(geoms))


@st.composite
def label_maps(draw: st.DrawFn) -> tuple[np.ndarray, int, int]:
    """Small blocky maps (any of 3 classes or masked) with their chunk and tile sides."""
    h, w = draw(st.integers(1, 36)), draw(st.integers(1, 36))
    block = draw(st.integers(1, 4))
    cells = (-(-h // block), -(-w // block))
    values = draw(st.lists(st.sampled_from([0, 1, 2, NO_LABEL]), min_size=cells[0] * cells[1],
                           max_size=cells[0] * cells[1]))  # fmt: skip
    lab = np.kron(np.array(values, np.uint8).reshape(cells), np.ones((block, block), np.uint8))
    chunk = draw(st.integers(2, 8))
    return lab[:h, :w], chunk, chunk * draw(st.integers(1, 3))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=label_maps(), scale=st.sampled_from([1.0, 2.5]), compact=st.sampled_from([4, 10**6]))
def test_any_label_map_round_trips(case, scale, compact) -> None:
    lab, chunk, tile = case
    with tempfile.TemporaryDirectory() as tmp:
        src = _write(Path(tmp), lab, chunk=chunk, scale=scale, classes=CLASSES[:3])
        export_geojson(src, Path(tmp) / "b.geojson", tile=tile, compact_vertices=compact)
        _check_exact(_load(Path(tmp) / "b.geojson"), lab, scale, CLASSES[:3])


def _nuclei_column(height: int) -> np.ndarray:
    """A stroma band spanning the whole height, full of nuclei: one region, holes ~ height."""
    lab = np.zeros((height, 256), np.uint8)
    lab[:, 40:216] = 1
    yy, xx = np.mgrid[:height, 40:216]
    lab[:, 40:216][((yy % 12) < 5) & ((xx % 12) < 5) & (xx > 44) & (xx < 210)] = 2
    return lab


def test_frontier_stays_bounded_as_the_map_grows(tmp_path) -> None:
    # GIVEN one region spanning the map's height whose holes grow with the height (the
    # smaller map already holds 1,700 vertices, well past the first compaction at 200)
    peaks = {}
    for height in (256, 2048):
        for compact in (200, 10**9):
            src = write_label_output(tmp_path / f"{height}-{compact}.zarr", _nuclei_column(height),
                                     chunk=32, classes=CLASSES[:3])  # fmt: skip
            stats = export_geojson(src, tmp_path / f"{height}-{compact}.geojson", tile=64,
                                   compact_vertices=compact)  # fmt: skip
            peaks[height, compact] = stats.peak_open_vertices
    # THEN spilling final holes keeps the held vertices flat (8x the height, same peak) ...
    assert peaks[2048, 200] <= 1.1 * peaks[256, 200]
    # ... while holding every hole until the region closes grows with the map
    assert peaks[2048, 10**9] > 4 * peaks[256, 10**9]


def test_real_segmentation_output_round_trips(tmp_path) -> None:
    from harness.plan import PlanConfig
    from harness.segment import segment

    out = tmp_path / "seg.zarr"
    # A sparse slide, so that the tissue mask leaves chunks unwritten (label 255)
    segment("synthetic:1024,seed=1,tissue=0.2", "hne-colour",
            PlanConfig(patch=128, stride=64, mpp=1.0, chunk=64), out, mask="auto",
            progress=False)  # fmt: skip
    info = source_info(out)
    assert info.scale == 2.0
    export_geojson(out, tmp_path / "seg.geojson.gz", tile=64)
    lab = np.asarray(__import__("zarr").open_group(out, mode="r")["labels"][:])
    assert (lab == NO_LABEL).any()  # the tissue mask left areas uncovered
    _check_exact(_load(tmp_path / "seg.geojson.gz"), lab, 2.0, info.classes)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        pytest.param({"object_type": "cell"}, ConfigError, "object type", id="object-type"),
        pytest.param({"min_area": -1}, ConfigError, "min_area", id="negative-min-area"),
        pytest.param({"simplify": float("nan")}, ConfigError, "simplify", id="nan-simplify"),
        pytest.param({"classes": ["tumour"]}, ConfigError, "unknown class 'tumour'", id="class"),
        pytest.param({"classes": []}, ConfigError, "at least one", id="no-classes"),
    ],
)
def test_bad_options_are_refused_in_one_line(tmp_path, kwargs, error, match) -> None:
    src = _write(tmp_path, _scene())
    with pytest.raises(error, match=match) as caught:
        export_geojson(src, tmp_path / "b.geojson", **kwargs)
    assert "\n" not in str(caught.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.zarr"]


@pytest.mark.parametrize("case", ["exists", "no-folder", "is-folder"])
def test_bad_destinations_are_refused_in_one_line(tmp_path, case) -> None:
    src = _write(tmp_path, _scene())
    dest = {"exists": tmp_path / "b.geojson", "no-folder": tmp_path / "nowhere" / "b.geojson",
            "is-folder": tmp_path / "dir"}[case]  # fmt: skip
    if case == "exists":
        dest.write_text("keep me")
    if case == "is-folder":
        dest.mkdir()
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(OutputError) as caught:
        export_geojson(src, dest)
    assert "\n" not in str(caught.value) and isinstance(caught.value, HarnessError)
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    if case == "exists":
        assert dest.read_text() == "keep me"


class _PartialSize:
    """A consumer beside the exporter that notes the size of its partial file before each tile."""

    wants_probabilities = False

    def __init__(self, partial: Path) -> None:
        self.partial, self.sizes = partial, []

    def tile(self, box, labels, probs) -> None:
        self.sizes.append(self.partial.stat().st_size if self.partial.exists() else 0)

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


@pytest.mark.parametrize("suffix", [".geojson", ".geojson.gz", ".zip"])
def test_failed_export_leaves_nothing_and_keeps_the_old_file(tmp_path, suffix) -> None:
    # GIVEN an existing export and a map whose last tile holds a label with no class
    lab = _scene()
    lab[lab == 3] = 1
    lab[192:, 320:] = 7
    src = _write(tmp_path, lab, classes=CLASSES[:3])
    dest = tmp_path / f"b{suffix}"
    dest.write_bytes(b"old")
    watch = _PartialSize(tmp_path / f"b{suffix}.partial")
    exporter = GeoJsonExporter(source_info(src), dest, overwrite=True)
    # WHEN the export fails at the last tile, with features already written
    with pytest.raises(OutputError, match="label 7 in tile") as caught:
        export(src, [watch, exporter], tile=64)
    # THEN the error is one line, the partial file is gone and the old export untouched
    assert "\n" not in str(caught.value)
    if suffix == ".geojson":  # (gzip holds its output back in zlib's buffers)
        assert watch.sizes[-1] > 2**15
    with pytest.raises(OutputError, match="has not finished"):
        _ = exporter.stats
    assert dest.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == [dest.name, "out.zarr"]


_WRITE_CAPPED = """
import resource, signal, sys
from harness.errors import HarnessError
from harness.output.geojson import export_geojson
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the cap then fail with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (2**16, 2**16))
try:
    export_geojson(sys.argv[1], sys.argv[2], tile=64)
except HarnessError as exc:
    print(exc)
"""


def test_a_failed_write_is_one_line_and_leaves_nothing(tmp_path) -> None:
    import subprocess
    import sys

    # GIVEN a process that may not write files past 64 KiB (the export is ~180 KiB)
    src = _write(tmp_path, _scene())
    dest = tmp_path / "b.geojson"
    # WHEN it exports
    run = subprocess.run([sys.executable, "-c", _WRITE_CAPPED, str(src), str(dest)],
                         capture_output=True, text=True, timeout=120, check=True)  # fmt: skip
    # THEN the error names the file in one line and the partial file is gone
    assert run.stdout.count("\n") == 1 and "cannot write output" in run.stdout
    assert "b.geojson.partial" in run.stdout and "File too large" in run.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.zarr"]


def test_overwrite_replaces_a_finished_export(tmp_path) -> None:
    src = _write(tmp_path, _scene())
    dest = tmp_path / "b.geojson"
    dest.write_text("old")
    export_geojson(src, dest, tile=64, overwrite=True)
    assert _load(dest)["type"] == "FeatureCollection"


def test_incomplete_output_is_refused(tmp_path) -> None:
    import zarr

    src = _write(tmp_path, _scene())
    group = zarr.open_group(src, mode="r+")
    group.attrs["wsi_harness"] = {**dict(group.attrs["wsi_harness"]), "complete": False}
    with pytest.raises(OutputError, match="incomplete"):
        export_geojson(src, tmp_path / "b.geojson")
    assert not (tmp_path / "b.geojson").exists()


def test_tiles_out_of_raster_order_are_refused(tmp_path) -> None:
    src = _write(tmp_path, _scene())
    exporter = GeoJsonExporter(source_info(src), tmp_path / "b.geojson")
    with pytest.raises(ValueError, match="raster order"):
        exporter.tile((0, 64, 64, 128), np.zeros((64, 64), np.uint8), None)
    exporter.abort()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.zarr"]


def test_exporter_shares_a_pass_with_other_consumers(tmp_path) -> None:
    src = _write(tmp_path, _scene())
    info = source_info(src)
    first = GeoJsonExporter(info, tmp_path / "a.geojson")
    second = GeoJsonExporter(info, tmp_path / "b.geojson.gz", classes=["nuclei"])
    export(src, [first, second], tile=64)
    assert first.stats.per_class["nuclei"] == second.stats.features > 0
    assert not first.wants_probabilities
