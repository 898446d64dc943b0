"""NGFF metadata of an OME-Zarr export, written by ome-zarr-py (``ome_zarr.writer``).

Kept apart from :mod:`harness.output.ome_zarr` so the data path (blocks,
pyramids, commit) reads on its own. ome-zarr-py validates what it writes
(axes, one scale per level, matching dimensions) and puts it where each
version wants it: ``attrs["ome"]`` with a top-level version on zarr v3 (0.5),
``attrs["multiscales"]`` with per-entry versions on zarr v2 (0.4).
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

from harness.output.zarr_store import NO_LABEL

if TYPE_CHECKING:
    from ome_zarr.format import Format

    from harness.output.ome_zarr import OmeZarrExporter

_SPACE_UNITS = {"y": "micrometer", "x": "micrometer"}


def _writer() -> Any:
    """``ome_zarr.writer``, imported quietly.

    Its module body builds a deprecated ``Scaler()`` as a default argument
    (ome-zarr-py 0.18), which warns on import whether or not it is used;
    we never use it (our pyramids are built block by block).
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Call to deprecated class Scaler", DeprecationWarning)
        import ome_zarr.writer

    return ome_zarr.writer


def _format(version: str) -> Format:
    from ome_zarr.format import FormatV04, FormatV05

    return FormatV05() if version == "0.5" else FormatV04()


def _hex(rgb: Any) -> str:
    return "".join(f"{int(v):02X}" for v in rgb[:3])


def _datasets(exp: OmeZarrExporter, reducer: str, ndim: int) -> list[dict[str, Any]]:
    return [
        {"path": str(k), "coordinateTransformations": exp.transforms(k, reducer, ndim)}
        for k in range(len(exp.shapes))
    ]


def _omero(exp: OmeZarrExporter) -> dict[str, Any]:
    """Display hints (channel names, colours, windows) napari and OMERO read."""
    from harness.render import palette

    if exp.kind == "probabilities":
        lut = palette(list(exp.info.classes))
        names = list(exp.info.classes)
        colours = [_hex(lut[k]) for k in range(len(names))]
        window = {"min": 0.0, "max": 1.0, "start": 0.0, "end": 1.0}
    elif exp.kind == "slide":
        names, colours = ["red", "green", "blue"], ["FF0000", "00FF00", "0000FF"]
        window = {"min": 0.0, "max": 255.0, "start": 0.0, "end": 255.0}
    else:
        names, colours = ["blank"], ["FFFFFF"]
        window = {"min": 0.0, "max": 255.0, "start": 0.0, "end": 255.0}
    channels = [
        {"label": n, "color": c, "window": dict(window), "active": True}
        for n, c in zip(names, colours, strict=True)
    ]
    return {"channels": channels, "rdefs": {"model": "color"}}


def write_image_metadata(exp: OmeZarrExporter, reducer: str) -> None:
    """``multiscales`` (+ ``omero``) of the parent image at the root."""
    _writer().write_multiscales_metadata(
        exp.root,
        _datasets(exp, reducer, 3),
        fmt=_format(exp.version),
        axes=[{"name": "c", "type": "channel"}, {"name": "y", "type": "space"},
              {"name": "x", "type": "space"}],
        axes_units=_SPACE_UNITS,
        name=exp.kind,
        metadata={"omero": _omero(exp)},
    )  # fmt: skip


def write_labels_metadata(exp: OmeZarrExporter, reducer: str) -> None:
    """``multiscales`` of the label image, and its ``image-label`` colours and class names."""
    writer = _writer()
    import zarr

    from harness.output.ome_zarr import LABEL_NAME, UNCOVERED_RGBA
    from harness.render import palette

    fmt = _format(exp.version)
    labels = exp.root["labels"]
    assert isinstance(labels, zarr.Group)
    writer.write_multiscales_metadata(
        labels[LABEL_NAME],
        _datasets(exp, reducer, 2),
        fmt=fmt,
        axes=[{"name": "y", "type": "space"}, {"name": "x", "type": "space"}],
        axes_units=_SPACE_UNITS,
        name=LABEL_NAME,
    )
    classes = list(exp.info.classes)
    lut = palette(classes)
    colors = [{"label-value": k, "rgba": [*map(int, lut[k]), 255]} for k in range(len(classes))]
    colors.append({"label-value": NO_LABEL, "rgba": list(UNCOVERED_RGBA)})
    props = [{"label-value": k, "class": name} for k, name in enumerate(classes)]
    props.append({"label-value": NO_LABEL, "class": "uncovered"})
    writer.write_label_metadata(
        labels, LABEL_NAME, colors=colors, properties=props, fmt=fmt, source={"image": "../../"}
    )
    if exp.version == "0.5":
        # ome-zarr-py 0.18 writes the labels list without the version every 0.5 group's
        # "ome" attribute must carry (ome-zarr-models refuses the image without it).
        writer.add_metadata(labels, {"version": fmt.version}, fmt=fmt)
