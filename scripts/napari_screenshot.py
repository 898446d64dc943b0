"""Screenshot of an OME-Zarr export in napari, the way a user opens it (docs/viewers.md).

Opens ``A.ome.zarr`` with napari's own reader plugin (napari-ome-zarr) in a
real ``napari.Viewer`` without showing the window, makes the label layer
visible at 50 % opacity over the parent image, and saves the canvas.
Needs a Qt binding besides the ``viewers`` extra (``pip install pyqt5``);
headless machines: ``QT_QPA_PLATFORM=offscreen`` or run under ``xvfb-run``.

    python scripts/napari_screenshot.py A.ome.zarr docs/napari_overlay.png
"""

from __future__ import annotations

import argparse


def main() -> None:
    """Command line (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("ome_zarr")
    p.add_argument("png")
    p.add_argument("--size", type=int, nargs=2, default=(900, 900), metavar=("W", "H"))
    p.add_argument("--zoom", type=float, default=1.0, help="zoom after fitting the whole image")
    p.add_argument("--center", type=float, nargs=2, default=None, metavar=("Y_UM", "X_UM"))
    args = p.parse_args()

    import napari

    viewer = napari.Viewer(show=False)
    viewer.window.resize(*args.size)
    layers = viewer.open(args.ome_zarr, plugin="napari-ome-zarr")
    for layer in layers:
        if type(layer).__name__ == "Labels":
            layer.visible, layer.opacity = True, 0.5
    viewer.reset_view()
    viewer.camera.zoom *= args.zoom
    if args.center is not None:
        viewer.camera.center = tuple(args.center)
    viewer.scale_bar.visible = True
    viewer.screenshot(args.png, canvas_only=False)
    print(args.png, [layer.name for layer in layers])
    viewer.close()


if __name__ == "__main__":
    main()
