"""napari opens our OME-Zarr with its own reader plugin (napari-ome-zarr), headless.

``ViewerModel`` is napari's viewer without a window (no Qt, no OpenGL): opening
a path through it runs the same npe2 reader discovery and layer construction
as File > Open in the application. Needs the ``viewers`` extra (``make setup``
installs it); CI must not skip, so a missing napari fails there.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from _export_outputs import known_map, write_output

from harness.output.export import export, source_info
from harness.output.ome_zarr import OmeZarrExporter

if not os.environ.get("CI"):
    pytest.importorskip(
        "napari", reason="napari is in the viewers extra: pip install -e .[viewers]"
    )
    pytest.importorskip("napari_ome_zarr", reason="napari-ome-zarr is in the viewers extra")

pytestmark = [
    # napari 0.9 / npe2 still use pydantic v1-style APIs that warn under pydantic 2.12,
    # which is not ours to fix.
    pytest.mark.filterwarnings("ignore::DeprecationWarning:pydantic.*"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning:npe2.*"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning:napari.*"),
    pytest.mark.filterwarnings("ignore:.*json_encoders.*is deprecated"),
    pytest.mark.filterwarnings("ignore:Using extra keyword arguments on `Field`"),
    # Our label colours cover every value the map holds (classes and 255); NGFF has no
    # way to name napari's "default" colour, which is all this warning is about.
    pytest.mark.filterwarnings("ignore:color_dict did not provide a default color:UserWarning"),
]


@pytest.fixture(scope="module")
def viewer_model():
    from napari.components import ViewerModel
    from napari.plugins import _initialize_plugins

    _initialize_plugins()  # what napari.Viewer() does first: discover npe2 plugins
    return ViewerModel


@pytest.mark.parametrize("version", ["0.5", "0.4"])
def test_napari_ome_zarr_opens_image_and_labels(tmp_path, viewer_model, version) -> None:
    # GIVEN a 100 x 140 output at 0.5 mpp exported as OME-Zarr (16 px chunks: 5 levels)
    labels, probs = known_map(100, 140)
    src = write_output(tmp_path / "m.zarr", labels, probs, mpp=0.5)
    dest = tmp_path / "a.ome.zarr"
    exp = OmeZarrExporter(source_info(src), dest, version=version, chunk=16, shard=32)
    export(src, [exp], tile=exp.block)
    # WHEN napari opens it with napari-ome-zarr
    viewer = viewer_model()
    layers = viewer.open(str(dest), plugin="napari-ome-zarr")
    # THEN one image layer per class (the probabilities) and one labels layer
    kinds = sorted(type(layer).__name__ for layer in layers)
    assert kinds == ["Image", "Image", "Image", "Labels"]
    shapes = [(100, 140), (50, 70), (25, 35), (13, 18), (7, 9)]
    for layer in layers:
        assert layer.multiscale
        assert [tuple(level.shape) for level in layer.data] == shapes
        np.testing.assert_allclose(layer.scale, [0.5, 0.5])  # micrometres per pixel
        np.testing.assert_allclose(layer.translate, [0.0, 0.0])
    (lab,) = [layer for layer in layers if type(layer).__name__ == "Labels"]
    np.testing.assert_array_equal(np.asarray(lab.data[0]), labels)
    names = [layer.name for layer in layers if type(layer).__name__ == "Image"]
    assert names == ["probabilities: background", "probabilities: stroma", "probabilities: nuclei"]
    rgba = np.asarray(lab.colormap.map(np.array([2, 255])))
    assert tuple(np.round(rgba[0][:3] * 255)) == (70, 40, 140) and rgba[1][3] == 0
