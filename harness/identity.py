"""What produced an output: the identity a resume must match, and the provenance users read.

The **identity** (stored as ``attrs["wsi_harness"]["identity"]``) holds everything
that changes the bits of the result:

* ``slide`` -- a ``synthetic:`` slide's canonical spec; a file's size and a
  content fingerprint (sha256 of its first and last MiB: the TIFF header, the
  first tiles and the directory of the last pages), its level-0 shape and mpp;
* ``model`` -- the built-in name and a sha256 of its weights (a model file's
  own sha256 besides), class names, preprocessing and activation;
* ``plan`` -- patch, output patch, stride, chunk, mpp, blend and sigma (not
  ``order`` or the budget: every order and strip width gives the same bits);
* ``mask`` -- the setting and a sha256 of the resolved mask;
* ``output`` -- dtype and whether probabilities are stored;
* ``compute`` -- device kind, torch version, torch thread count and batch size
  (a GPU, another oneDNN build, thread count or batch size picks other kernels
  that round differently; every batch is padded to the batch size, see
  :func:`harness.inference._padded`), and the harness version.

**Provenance** (source path, mtime, mask, budget, timestamps, host) is recorded
beside it and never compared: moving or copying a slide does not block a resume.
:func:`difference` names the first field that differs, in words.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from harness import __version__

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from harness.config import RunConfig
    from harness.models import ModelSpec
    from harness.slides.base import Slide

FINGERPRINT_BYTES = 1 << 20
"""Bytes hashed from each end of a slide file."""

_LABELS = {
    ("model", "weights_sha256"): "model weights",
    ("model", "file_sha256"): "model file",
    ("slide", "fingerprint"): "slide content",
    ("slide", "spec"): "synthetic slide",
    ("mask", "sha256"): "mask",
    ("output", "dtype"): "output dtype",
    ("output", "probabilities"): "stored probabilities",
    ("compute", "harness"): "harness version",
    ("compute", "torch"): "torch version",
    ("compute", "device"): "device",
    ("compute", "threads"): "torch threads",
    ("compute", "batch_size"): "batch size",
}


def file_fingerprint(path: Path) -> str:
    """sha256 of a file's size, first and last :data:`FINGERPRINT_BYTES`."""
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with path.open("rb") as f:
        h.update(f.read(FINGERPRINT_BYTES))
        if size > FINGERPRINT_BYTES:
            f.seek(max(FINGERPRINT_BYTES, size - FINGERPRINT_BYTES))
            h.update(f.read(FINGERPRINT_BYTES))
    return h.hexdigest()


def file_sha256(path: Path) -> str:
    """sha256 of a whole file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def array_sha256(array: NDArray[Any]) -> str:
    """sha256 of an array's shape, dtype and bytes."""
    h = hashlib.sha256(f"{array.shape}{array.dtype}".encode())
    h.update(np.ascontiguousarray(array).tobytes())
    return h.hexdigest()


def slide_identity(slide: Slide) -> dict[str, Any]:
    """What makes this slide's pixels what they are (see the module docstring)."""
    base = {"shape": list(slide.shape), "mpp": slide.mpp}
    spec = getattr(slide, "spec", None)
    if isinstance(spec, str):
        return {"kind": "synthetic", "spec": spec, **base}
    path = getattr(slide, "path", None)
    if isinstance(path, Path) and path.is_file():
        return {"kind": type(slide).__name__, "size": path.stat().st_size,
                "fingerprint": file_fingerprint(path), **base}  # fmt: skip
    image = getattr(slide, "image", None)
    if isinstance(image, np.ndarray):
        return {"kind": type(slide).__name__, "fingerprint": array_sha256(image), **base}
    return {"kind": type(slide).__name__, "fingerprint": None, **base}


def slide_source(slide: Slide) -> str | None:
    """A spec or path that reopens the slide elsewhere (a worker, an exporter), if any."""
    spec = getattr(slide, "spec", None)
    if isinstance(spec, str):
        return spec
    path = getattr(slide, "path", None)
    return str(Path(path).resolve()) if isinstance(path, Path) else None


def weights_sha256(spec: ModelSpec) -> str:
    """sha256 over the model's parameters and buffers (names, dtypes, shapes, values)."""
    import torch

    h = hashlib.sha256()
    state = spec.module.state_dict()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        if t.numel():  # raw bytes, whatever the dtype (bfloat16 has no numpy view)
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def model_identity(spec: ModelSpec, config: RunConfig) -> dict[str, Any]:
    """Name, weights hash (and file hash), classes, preprocessing and activation."""
    import dataclasses

    out: dict[str, Any] = {"name": spec.name, "weights_sha256": weights_sha256(spec)}
    if not config.model_is_builtin and Path(config.model).is_file():
        out["file_sha256"] = file_sha256(Path(config.model))
    out["classes"] = list(spec.classes)
    out["preprocess"] = dataclasses.asdict(spec.preprocess)
    out["activation"] = str(config.activation)
    return out


def mask_identity(setting: object, mask: NDArray[np.bool_] | None) -> dict[str, Any]:
    """The mask setting (as given) and a hash of the mask it resolved to."""
    text = setting if setting is None or isinstance(setting, str) else "array"
    return {"setting": text, "sha256": None if mask is None else array_sha256(mask)}


def run_identity(
    slide: Slide,
    spec: ModelSpec,
    config: RunConfig,
    mask: NDArray[np.bool_] | None,
    threads: int | None = None,
) -> dict[str, Any]:
    """The identity record of a run (see the module docstring).

    ``threads`` is the torch intra-op thread count the patches run with (default:
    this process's): oneDNN's convolutions sum in an order that depends on it,
    so runs with different counts differ in the last bits (about 3e-8).
    """
    import torch

    plan = {k: v for k, v in config.plan.to_dict().items() if k != "order"}
    record = {
        "slide": slide_identity(slide),
        "model": model_identity(spec, config),
        "plan": plan,
        "mask": mask_identity(config.mask, mask),
        "output": {"dtype": config.dtype, "probabilities": config.probabilities},
        "compute": {
            "device": config.device.split(":")[0],
            "torch": torch.__version__,
            "threads": threads if threads is not None else torch.get_num_threads(),
            "batch_size": config.batch_size,
            "harness": __version__,
        },
    }
    # As stored (JSON: tuples become lists), so a recorded identity compares equal.
    normal: dict[str, Any] = json.loads(json.dumps(record))
    return normal


def provenance(slide: Slide, config: RunConfig) -> dict[str, Any]:
    """What a user expects to find: where, when, by whom, with which options."""
    path = getattr(slide, "path", None)
    mtime = Path(path).stat().st_mtime if isinstance(path, Path) and path.exists() else None
    return {
        "source": slide_source(slide),
        "source_mtime": mtime,
        "options": config.summary(),
        "host": socket.gethostname(),
        "user": os.environ.get("USER"),
        "python": platform.python_version(),
        "started": time.time(),
    }


def _short(value: object) -> str:
    text = str(value)
    if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in text):
        return text[:8] + "…"
    return text if len(text) <= 60 else text[:57] + "..."


def difference(
    recorded: dict[str, Any],
    given: dict[str, Any],
    ignore: frozenset[tuple[str, str]] = frozenset(),
) -> str | None:
    """The first field that differs, in words (None when equal; ``ignore``: (section, key))."""
    for section in dict.fromkeys([*recorded, *given]):
        a, b = recorded.get(section), given.get(section)
        if a == b:
            continue
        if not isinstance(a, dict) or not isinstance(b, dict):
            return f"{section} differs: {_short(a)} recorded, {_short(b)} given"
        for key in dict.fromkeys([*a, *b]):
            if a.get(key) != b.get(key) and (section, key) not in ignore:
                label = _LABELS.get((section, key), f"{section} {key}")
                verb = "differ" if label.endswith("weights") else "differs"
                prefix = "sha256 " if key.endswith("sha256") or key == "fingerprint" else ""
                return (
                    f"{label} {verb}: {prefix}"
                    f"{_short(a.get(key))} recorded, {prefix}{_short(b.get(key))} given"
                )
    return None
