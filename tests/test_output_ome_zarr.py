"""OME-Zarr export: NGFF validity, exact level 0, pyramid values, one write per block, safety."""

from __future__ import annotations

import collections
import warnings

import numpy as np
import pytest
import zarr
from _export_outputs import known_map, write_output
from zarr.storage import LocalStore

from harness.errors import ConfigError
from harness.output import OutputError
from harness.output.export import export, source_info
from harness.output.ome_zarr import OmeZarrExporter


def _export(src, dest, tile: int | None = None, **kwargs) -> zarr.Group:
    exp = OmeZarrExporter(source_info(src), dest, **kwargs)
    export(src, [exp], tile=tile or exp.block)
    return zarr.open_group(dest, mode="r")


def _models(version: str):
    if version == "0.5":
        from ome_zarr_models.v05.image import Image
        from ome_zarr_models.v05.image_label import ImageLabel
    else:
        from ome_zarr_models.v04.image import Image
        from ome_zarr_models.v04.image_label import ImageLabel
    return Image, ImageLabel


def _ome(group: zarr.Group, version: str) -> dict:
    attrs = group.attrs.asdict()
    return attrs["ome"] if version == "0.5" else attrs


@pytest.fixture(scope="module")
def segmented(tmp_path_factory):
    """A real segmentation with masked (uncovered) background, several chunks across."""
    from harness.plan import PlanConfig
    from harness.segment import segment

    out = tmp_path_factory.mktemp("seg") / "s.zarr"
    config = PlanConfig(patch=64, stride=32, mpp=0.5, chunk=64)
    segment("synthetic:512,seed=3", "hne-colour", config, out, mask="auto", progress=False)
    return out


@pytest.mark.parametrize("version", ["0.5", "0.4"])
def test_export_validates_and_level0_equals_the_output(tmp_path, segmented, version) -> None:
    # GIVEN a real segmentation output WHEN it is exported as OME-Zarr
    g = _export(segmented, tmp_path / "a.ome.zarr", version=version, chunk=32, shard=128)
    src = zarr.open_group(segmented, mode="r")
    # THEN ome-zarr-models accepts the image and its label image
    Image, ImageLabel = _models(version)
    Image.from_zarr(g)
    ImageLabel.from_zarr(g["labels/classes"])
    assert g.info._zarr_format == (3 if version == "0.5" else 2)
    # AND level 0 is the output exactly: labels as they are, probabilities as (c, y, x)
    labels = src["labels"][:]
    assert (labels == 255).any() and (labels < 3).any()
    np.testing.assert_array_equal(g["labels/classes/0"][:], labels)
    want = np.moveaxis(src["probabilities"][:], -1, 0)
    np.testing.assert_array_equal(g["0"][:], want)  # NaN == NaN for assert_array_equal
    # AND the metadata: micrometre scales from the processing mpp, level 0 at the origin
    ms = _ome(g, version)["multiscales"][0]
    level0 = ms["datasets"][0]["coordinateTransformations"]
    assert level0 == [
        {"type": "scale", "scale": [1.0, 0.5, 0.5]},
        {"type": "translation", "translation": [0.0, 0.0, 0.0]},
    ]
    assert [a.get("unit") for a in ms["axes"]] == [None, "micrometer", "micrometer"]
    label_meta = _ome(g["labels/classes"], version)["image-label"]
    colours = {c["label-value"]: c["rgba"] for c in label_meta["colors"]}
    assert colours[255][3] == 0 and colours[1] == [232, 120, 170, 255]
    names = {p["label-value"]: p["class"] for p in label_meta["properties"]}
    assert names == {0: "background", 1: "stroma", 2: "nuclei", 255: "uncovered"}
    # AND provenance from the run's record
    prov = g.attrs["wsi_harness"]
    assert prov["run"]["model"] == "hne-colour" and prov["run"]["plan"]["chunk"] == [64, 64]


def _mode_ref(a: np.ndarray) -> np.ndarray:
    """Independent reference: majority of each 2 x 2 block's real pixels, ties to the lowest."""
    h, w = a.shape
    out = np.empty((-(-h // 2), -(-w // 2)), np.uint8)
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            values, counts = np.unique(a[2 * i : 2 * i + 2, 2 * j : 2 * j + 2], return_counts=True)
            out[i, j] = values[counts == counts.max()].min()
    return out


def _nanmean_ref(a: np.ndarray) -> np.ndarray:
    c, h, w = a.shape
    out = np.empty((c, -(-h // 2), -(-w // 2)), np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN blocks: NaN is the answer
        for i in range(out.shape[1]):
            for j in range(out.shape[2]):
                block = a[:, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2].reshape(c, -1)
                out[:, i, j] = np.nanmean(block.astype(np.float64), axis=1)
    return out


def test_pyramid_levels_have_the_right_shapes_and_values(tmp_path) -> None:
    # GIVEN a known 50 x 70 map (odd level sizes, an uncovered corner, NaN there)
    labels, probs = known_map(50, 70)
    src = write_output(tmp_path / "m.zarr", labels, probs)
    # WHEN exported with 16 px chunks in 32 px shards
    g = _export(src, tmp_path / "m.ome.zarr", chunk=16, shard=32)
    # THEN levels halve (rounding up) until one chunk holds a level
    shapes = [g["labels/classes"][str(k)].shape for k in range(4)]
    assert shapes == [(50, 70), (25, 35), (13, 18), (7, 9)] and "4" not in g["labels/classes"]
    assert [g[str(k)].shape for k in range(4)] == [(3, *s) for s in shapes]
    # AND each level is the mode (labels) / NaN-ignoring mean (probabilities) of the one below
    lab, pr = labels, np.moveaxis(probs, -1, 0)
    for k in range(1, 4):
        lab, pr = _mode_ref(lab), _nanmean_ref(pr)
        np.testing.assert_array_equal(g["labels/classes"][str(k)][:], lab)
        np.testing.assert_allclose(g[str(k)][:], pr, rtol=1e-6)
        assert np.isnan(g[str(k)][:]).any() == np.isnan(pr).any()
    # AND each level's transform moves it to the centre of the pixels it summarises
    ct = g.attrs["ome"]["multiscales"][0]["datasets"][2]["coordinateTransformations"]
    assert ct == [
        {"type": "scale", "scale": [1.0, 2.0, 2.0]},
        {"type": "translation", "translation": [0.0, 0.75, 0.75]},
    ]


def test_nearest_label_pyramid_keeps_top_left_pixels(tmp_path) -> None:
    labels, probs = known_map(40, 36, seed=2)
    src = write_output(tmp_path / "m.zarr", labels, probs)
    g = _export(src, tmp_path / "n.ome.zarr", chunk=16, shard=16, label_downsample="nearest")
    np.testing.assert_array_equal(g["labels/classes/1"][:], labels[::2, ::2])
    np.testing.assert_array_equal(g["labels/classes/2"][:], labels[::4, ::4])
    ds = g["labels/classes"].attrs["ome"]["multiscales"][0]["datasets"]
    assert ds[2]["coordinateTransformations"][1]["translation"] == [0.0, 0.0]


META = (".json", ".zarray", ".zattrs", ".zgroup")


class CountingStore:
    """Counts real LocalStore writes and reads per key (wraps the methods, keeps them working)."""

    def __init__(self, monkeypatch) -> None:
        self.sets: collections.Counter[str] = collections.Counter()
        self.read_before_set: list[str] = []
        real_set, real_get = LocalStore.set, LocalStore.get

        async def counting_set(store, key, value):
            self.sets[f"{store.root}/{key}"] += 1
            return await real_set(store, key, value)

        async def counting_get(store, key, *args, **kwargs):
            name = f"{store.root}/{key}"
            found = await real_get(store, key, *args, **kwargs)
            # zarr's sharding codec probes a shard before writing it, even a whole one; a
            # probe that finds data would mean a read-modify-write.
            if found is not None and not name.endswith(META) and not self.sets[name]:
                self.read_before_set.append(name)
            return found

        monkeypatch.setattr(LocalStore, "set", counting_set)
        monkeypatch.setattr(LocalStore, "get", counting_get)

    def chunk_writes(self) -> dict[str, int]:
        return {k: n for k, n in self.sets.items() if not k.endswith(META)}


@pytest.mark.parametrize(
    ("version", "tile"),
    [
        pytest.param("0.5", 32, id="0.5-tiles-are-shards"),
        pytest.param("0.5", 16, id="0.5-tiles-quarter-shards"),
        pytest.param("0.4", 16, id="0.4-chunks"),
    ],
)
def test_every_level_block_is_written_exactly_once(tmp_path, monkeypatch, version, tile) -> None:
    # GIVEN a known 70 x 90 map, and a store that counts its writes
    labels, probs = known_map(70, 90, seed=1)
    src = write_output(tmp_path / "m.zarr", labels, probs)
    info = source_info(src)
    counter = CountingStore(monkeypatch)
    # WHEN it is exported (tiles equal to the write blocks, or smaller ones assembled)
    exp = OmeZarrExporter(info, tmp_path / "c.ome.zarr", version=version, chunk=16, shard=32)
    export(src, [exp], tile=tile)
    # THEN every chunk/shard key of every level was stored once, never read back before it
    writes = counter.chunk_writes()
    ours = {k: n for k, n in writes.items() if ".ome.zarr.partial/" in k}
    assert ours and set(ours.values()) == {1}
    assert not [k for k in counter.read_before_set if ".ome.zarr.partial/" in k]
    # AND level 0 holds one key per non-empty block: 3 x 3 blocks of 32 (v2: 5 x 6 of 16)
    level0 = [k for k in ours if "/labels/classes/0/" in k]
    block = 32 if version == "0.5" else 16
    nonempty = sum(
        bool((labels[y : y + block, x : x + block] != 255).any())
        for y in range(0, 70, block) for x in range(0, 90, block)
    )  # fmt: skip
    assert len(level0) == nonempty
    g = zarr.open_group(tmp_path / "c.ome.zarr", mode="r")
    np.testing.assert_array_equal(g["labels/classes/0"][:], labels)


def test_uncovered_blocks_are_not_written(tmp_path) -> None:
    labels, probs = known_map(64, 64)
    labels[:32, :] = 255
    probs[:32, :] = np.nan
    src = write_output(tmp_path / "m.zarr", labels, probs)
    _export(src, tmp_path / "s.ome.zarr", chunk=16, shard=32)
    shards = sorted(p.name for p in (tmp_path / "s.ome.zarr/labels/classes/0/c").iterdir())
    assert shards == ["1"]  # only the second shard row exists
    g = zarr.open_group(tmp_path / "s.ome.zarr", mode="r")
    np.testing.assert_array_equal(g["labels/classes/0"][:], labels)


def test_labels_only_output_gets_the_slide_as_parent_image(tmp_path) -> None:
    from harness.output.slide_source import read_output_grid
    from harness.slides import open_slide

    # GIVEN a labels-only output that records its slide source
    spec = "synthetic:96x80,seed=4"
    labels, _ = known_map(80, 96)
    src = write_output(tmp_path / "l.zarr", labels, source=spec)
    # WHEN exported THEN the parent image is the slide's RGB on the output grid
    g = _export(src, tmp_path / "l.ome.zarr", chunk=16, shard=32)
    slide = open_slide(spec)
    rgb = np.moveaxis(read_output_grid(slide, (0, 80, 0, 96), 0.5), -1, 0)
    np.testing.assert_array_equal(g["0"][:], rgb)
    assert g.attrs["wsi_harness"]["image"] == "slide" and g["0"].dtype == np.uint8
    np.testing.assert_array_equal(g["labels/classes/0"][:], labels)
    from ome_zarr_models.v05.image import Image

    Image.from_zarr(g)


def test_labels_only_without_source_gets_a_blank_parent_or_a_clear_error(tmp_path) -> None:
    labels, _ = known_map(40, 40)
    src = write_output(tmp_path / "l.zarr", labels)
    g = _export(src, tmp_path / "b.ome.zarr", chunk=16, shard=16)
    assert g.attrs["wsi_harness"]["image"] == "blank" and g["0"].shape == (1, 40, 40)
    assert not (tmp_path / "b.ome.zarr/0/c").exists()  # all fill: no chunk files
    with pytest.raises(OutputError, match="does not record its slide source"):
        OmeZarrExporter(source_info(src), tmp_path / "x.ome.zarr", parent="slide")


def test_incomplete_output_is_refused(tmp_path) -> None:
    labels, probs = known_map(32, 32)
    src = write_output(tmp_path / "i.zarr", labels, probs, complete=False)
    with pytest.raises(OutputError, match="incomplete"):
        source_info(src)


def test_existing_destination_is_refused_without_overwrite(tmp_path) -> None:
    labels, probs = known_map(32, 32)
    src = write_output(tmp_path / "m.zarr", labels, probs)
    dest = tmp_path / "d.ome.zarr"
    _export(src, dest, chunk=16, shard=16)
    with pytest.raises(OutputError, match="already exists"):
        OmeZarrExporter(source_info(src), dest)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    with pytest.raises(OutputError, match="not a zarr store"):
        OmeZarrExporter(source_info(src), tmp_path / "notes", overwrite=True)
    labels2, probs2 = known_map(32, 32, seed=9)
    src2 = write_output(tmp_path / "m2.zarr", labels2, probs2)
    g = _export(src2, dest, chunk=16, shard=16, overwrite=True)
    np.testing.assert_array_equal(g["labels/classes/0"][:], labels2)


class FailOnSecondTile:
    """A format whose writer fails part-way (as a full disk would)."""

    wants_probabilities = False

    def __init__(self) -> None:
        self.tiles = 0

    def tile(self, box, labels, probs) -> None:
        self.tiles += 1
        if self.tiles == 2:
            raise OSError(28, "No space left on device")

    def close(self) -> None: ...

    def abort(self) -> None: ...


def test_a_failing_export_leaves_no_complete_looking_output(tmp_path) -> None:
    # GIVEN an existing export, and a pass in which another format fails part-way
    labels, probs = known_map(64, 64)
    src = write_output(tmp_path / "m.zarr", labels, probs)
    dest = tmp_path / "f.ome.zarr"
    _export(src, dest, chunk=16, shard=16)
    before = sorted(p.relative_to(dest) for p in dest.rglob("*"))
    exp = OmeZarrExporter(source_info(src), dest, chunk=16, shard=16, overwrite=True)
    with pytest.raises(OSError, match="No space"):
        export(src, [exp, FailOnSecondTile()], tile=16)
    # THEN the partial export is gone and the old one is untouched
    assert not (tmp_path / "f.ome.zarr.partial").exists()
    assert sorted(p.relative_to(dest) for p in dest.rglob("*")) == before
    # AND a failed first export leaves nothing at all
    exp = OmeZarrExporter(source_info(src), tmp_path / "g.ome.zarr", chunk=16, shard=16)
    with pytest.raises(OSError):
        export(src, [exp, FailOnSecondTile()], tile=16)
    assert not (tmp_path / "g.ome.zarr").exists()
    assert not (tmp_path / "g.ome.zarr.partial").exists()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"version": "0.6"}, "version", id="version"),
        pytest.param({"chunk": 15}, "even", id="odd-chunk"),
        pytest.param({"chunk": 32, "shard": 48}, "multiple", id="shard-not-multiple"),
        pytest.param({"label_downsample": "mean"}, "downsample", id="label-mean"),
    ],
)
def test_bad_options_are_one_line_errors(tmp_path, kwargs, message) -> None:
    labels, probs = known_map(32, 32)
    src = write_output(tmp_path / "m.zarr", labels, probs)
    with pytest.raises(ConfigError, match=message):
        OmeZarrExporter(source_info(src), tmp_path / "o.ome.zarr", **kwargs)
    assert not (tmp_path / "o.ome.zarr.partial").exists()
