"""wsi-harness: bounded-memory semantic segmentation of whole-slide images.

The package root stays import-light (no torch, zarr or dask here) so that
``harness.models`` can be imported from a peer environment that lacks our
other dependencies.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
