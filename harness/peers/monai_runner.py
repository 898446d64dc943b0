"""Segment one slide with MONAI's ``PatchInferer``; run with the MONAI peer python.

Usage (from the repository root)::

    peer/monai/bin/python harness/peers/monai_runner.py SLIDE.tiff --out OUT.zarr \\
        --model tiny-cnn --patch 256 --stride 128 --mpp 0.5 --merger avg|zarr

``PatchInferer`` with ``WSISlidingWindowSplitter(reader="OpenSlide")`` and
``AvgMerger`` (the whole canvas in RAM) or ``ZarrAvgMerger`` (on disk), running
our built-in model (:func:`harness.models.build_model`, so the same seeded
weights) on the CPU, with MONAI's defaults for everything not named here (no
prefetch thread, ``uint8`` counts, zarr's default codecs and chunks).

What is matched to our engine, and how:

* **Grid.** MONAI's splitter pads the end of each axis by
  ``(patch - length) mod stride`` and starts patches at ``0, s, 2s, ...`` over
  the padded length: the same starts as ours (until the slide is covered).
* **Resolution.** The splitter reads one whole pyramid level (``level=`` in its
  reader arguments; it cannot resample), so the runner picks the level whose
  mpp, as MONAI's OpenSlide reader reports it, equals ``--mpp`` and refuses a
  slide that has no such level.
* **Input.** Each uint8 patch goes through our :meth:`Preprocess.array`
  (``x / 255``), channels-last as our readers produce it, so the model sees
  bitwise our input wherever the patch lies inside the slide.

What is not matched (MONAI's conventions, measured in ``docs/monai.md``):
OpenSlide fills pixels outside the slide with transparent black, so the
off-grid edge patches see black padding where ours see white.

Run-time fixes the trial run showed are needed: ``PatchInferer`` leaves
autograd on (``ZarrAvgMerger`` then fails on ``Tensor.numpy()``), so it runs
under :func:`torch.inference_mode`; ``ZarrAvgMerger`` writes ``merged.zarr`` in
the working directory unless given ``store=``, and under zarr v3 leaves its
float32 value store in the temp folder after every run (it creates two
``TemporaryDirectory`` objects into one attribute; the first is finalised at
once and then re-created by the first write). The runner gives it a store and
a temp folder inside a scratch directory, measures what is left there after
MONAI is done, removes it, and reports both in its JSON record.

Writes ``OUT`` as a zarr v3 group laid out like ours
(:mod:`harness.output.zarr_store`): ``labels`` (argmax, uint8, fill 255) and,
with ``--probabilities``, ``probabilities`` (H, W, C) float32, read from MONAI's
merged canvas block of rows by block, so the runner adds little to MONAI's
peak. Prints one JSON line: timings, ``ru_maxrss`` and the leftover bytes.
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

# Run as a script by the peer python: make the repository importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from harness.output.zarr_store import ATTR, LABELS, NO_LABEL, PROBABILITIES

if TYPE_CHECKING:
    from collections.abc import Callable

    import numpy as np
    import torch
    from numpy.typing import NDArray

    from harness.models import ModelSpec

MERGERS = {"avg": "AvgMerger", "zarr": "ZarrAvgMerger"}
LEVEL_MPP_RTOL = 1e-3
"""How close a pyramid level's mpp must be to ``--mpp``: MONAI's splitter cannot resample."""


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("slide", type=Path)
    p.add_argument("--out", type=Path, required=True, help="output zarr group (replaced)")
    p.add_argument("--model", default="tiny-cnn")
    p.add_argument("--patch", type=int, default=256)
    p.add_argument("--stride", type=int, default=128)
    p.add_argument("--mpp", type=float, default=0.5)
    p.add_argument("--merger", choices=tuple(MERGERS), default="avg")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--chunk", type=int, default=256, help="output chunk side (ours: 256)")
    p.add_argument("--probabilities", action="store_true", help="also write probabilities")
    p.add_argument(
        "--scratch", type=Path, default=None, help="scratch parent (default: beside --out)"
    )
    args = p.parse_args(argv)
    if not 0 < args.stride <= args.patch:
        p.error(f"--stride must be in 1..{args.patch}, got {args.stride}")
    return args


@dataclass(frozen=True)
class Level:
    """The pyramid level MONAI will read: its index, mpp and ``(height, width)``."""

    index: int
    mpp: tuple[float, float]
    shape: tuple[int, int]


def pick_level(slide: Path, mpp: float) -> Level:
    """The pyramid level of ``slide`` whose mpp is ``mpp``, as MONAI's OpenSlide reader sees it.

    Exits with an error line when OpenSlide cannot open the slide or read its
    mpp, or when no level lies within :data:`LEVEL_MPP_RTOL` of ``mpp``.
    """
    from monai.data import WSIReader

    reader = WSIReader(backend="OpenSlide")
    try:
        wsi = reader.read(str(slide))
        n = int(reader.get_level_count(wsi))
        mpps = [tuple(float(m) for m in reader.get_mpp(wsi, k)) for k in range(n)]
    except Exception as exc:  # OpenSlide's and MONAI's errors have no common base
        sys.exit(f"error: MONAI's OpenSlide reader cannot read {slide} and its mpp: {exc}")
    fits = [k for k, m in enumerate(mpps) if all(abs(v - mpp) <= LEVEL_MPP_RTOL * mpp for v in m)]
    if not fits:
        have = ", ".join(f"{m[0]:.4g}" for m in mpps)
        sys.exit(
            f"error: {slide} has no pyramid level at mpp {mpp} (levels at {have}); "
            "MONAI's splitter reads whole levels and cannot resample"
        )
    shape = tuple(int(s) for s in reader.get_size(wsi, fits[0]))
    return Level(fits[0], (mpps[fits[0]][0], mpps[fits[0]][1]), (shape[0], shape[1]))


def dir_bytes(path: Path) -> int:
    """Apparent size in bytes of every file under ``path`` (0 when it does not exist)."""
    if not path.exists():
        return 0
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


@dataclass(frozen=True)
class Leftover:
    """What MONAI left in the scratch directory once it was done, before removal.

    Attributes
    ----------
    temp_bytes, temp_entries
        Bytes and top-level entries in the temp folder MONAI's merger was given
        (``ZarrAvgMerger``'s value and count stores).
    merged_store_bytes
        Bytes of MONAI's final merged store (``merged.zarr`` by default, in the
        working directory).
    removed_bytes
        Everything the runner then deleted.
    """

    temp_bytes: int
    temp_entries: tuple[str, ...]
    merged_store_bytes: int
    removed_bytes: int


def clean_scratch(scratch: Path) -> Leftover:
    """Measure what is left under ``scratch`` (``tmp/``, ``merged.zarr``), then delete it."""
    tmp = scratch / "tmp"
    entries = tuple(sorted(p.name for p in tmp.iterdir())) if tmp.exists() else ()
    temp, merged = dir_bytes(tmp), dir_bytes(scratch / "merged.zarr")
    total = dir_bytes(scratch)
    shutil.rmtree(scratch, ignore_errors=True)
    return Leftover(temp, entries, merged, total)


class _Counted:
    """The network MONAI calls: our module, counting the patches it sees."""

    def __init__(self, spec: ModelSpec) -> None:
        self.module, self.patches = spec.module, 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.patches += int(x.shape[0])
        out: torch.Tensor = self.module(x)
        return out


def _preprocessing(spec: ModelSpec) -> Callable[[torch.Tensor], torch.Tensor]:
    """Our loader's preprocessing on MONAI's uint8 NCHW batch, keeping our channels-last input."""
    import torch

    def run(patch: torch.Tensor) -> torch.Tensor:
        nhwc = patch.permute(0, 2, 3, 1).numpy()
        return torch.from_numpy(spec.preprocess.array(nhwc)).permute(0, 3, 1, 2)

    return run


def _inferer(args: argparse.Namespace, level: Level, spec: ModelSpec, scratch: Path) -> Any:
    from monai.inferers import PatchInferer, WSISlidingWindowSplitter

    splitter = WSISlidingWindowSplitter(
        patch_size=args.patch,
        overlap=args.patch - args.stride,
        reader="OpenSlide",
        level=level.index,
    )
    merger_kwargs: dict[str, Any] = {}
    if args.merger == "zarr":
        merger_kwargs["store"] = str(scratch / "merged.zarr")
    return PatchInferer(
        splitter=splitter,
        merger_cls=MERGERS[args.merger],
        batch_size=args.batch_size,
        preprocessing=_preprocessing(spec),
        **merger_kwargs,
    )


def _rows(merged: Any, y0: int, y1: int) -> NDArray[np.float32]:
    """Rows ``y0:y1`` of MONAI's ``(1, C, H, W)`` canvas (tensor or zarr array) as ``(C, h, W)``."""
    import numpy as np

    block = merged[0, :, y0:y1, :]
    return np.asarray(block.numpy() if hasattr(block, "numpy") else block, dtype=np.float32)


def labels_of(block: NDArray[np.float32]) -> NDArray[np.uint8]:
    """Argmax over the class axis (first maximum on ties, as ours); NaN pixels get ``NO_LABEL``."""
    import numpy as np

    labels: NDArray[np.uint8] = np.argmax(block, axis=0).astype(np.uint8)
    labels[np.isnan(block).any(axis=0)] = NO_LABEL
    return labels


def _create_output(
    args: argparse.Namespace, shape: tuple[int, int, int], meta: dict[str, Any]
) -> Any:
    import zarr
    from zarr.codecs import BloscCodec

    if args.out.exists():
        if not (args.out / "zarr.json").exists():
            sys.exit(
                f"error: output {args.out} exists and is not a zarr store; refusing to delete it"
            )
        shutil.rmtree(args.out)
    c, h, w = shape
    compress = BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")
    group = zarr.open_group(str(args.out), mode="w-", zarr_format=3)
    chunk = (args.chunk, args.chunk)
    group.create_array(
        LABELS, shape=(h, w), chunks=chunk, dtype="uint8", fill_value=NO_LABEL,
        compressors=compress, dimension_names=("y", "x"),
    )  # fmt: skip
    if args.probabilities:
        group.create_array(
            PROBABILITIES, shape=(h, w, c), chunks=(*chunk, c), dtype="float32",
            fill_value=float("nan"), compressors=compress, dimension_names=("y", "x", "class"),
        )  # fmt: skip
    group.attrs[ATTR] = {**meta, "complete": False}
    return group


def write_output(args: argparse.Namespace, merged: Any, meta: dict[str, Any]) -> dict[str, Any]:
    """Write labels (and probabilities) from ``merged`` block of rows by block; describe them."""
    _, c, h, w = (int(s) for s in merged.shape)
    group = _create_output(args, (c, h, w), meta)
    for y0 in range(0, h, args.chunk):
        y1 = min(h, y0 + args.chunk)
        block = _rows(merged, y0, y1)
        group[LABELS][y0:y1, :] = labels_of(block)
        if args.probabilities:
            group[PROBABILITIES][y0:y1, :, :] = block.transpose(1, 2, 0)
    group.attrs[ATTR] = {**meta, "complete": True}
    return {name: {"shape": list(a.shape), "dtype": str(a.dtype)} for name, a in group.arrays()}


def _maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _meta(
    args: argparse.Namespace, spec: ModelSpec, level: Level, versions: dict[str, str]
) -> dict[str, Any]:
    from harness import __version__

    return {
        "version": __version__,
        "engine": "monai",
        "merger": MERGERS[args.merger],
        "mpp": args.mpp,
        "classes": list(spec.classes),
        "model": args.model,
        "plan": {"patch": args.patch, "stride": args.stride, "batch_size": args.batch_size},
        "slide": {"path": str(args.slide), "shape": list(level.shape), "level": level.index,
                  "mpp": list(level.mpp), "type": "openslide"},
        **versions,
    }  # fmt: skip


def _run(args: argparse.Namespace, scratch: Path, t0: float) -> dict[str, Any]:
    import monai
    import torch
    import zarr

    from harness.models import build_model

    t1 = time.perf_counter()
    spec = build_model(args.model)
    spec.module.eval()
    level = pick_level(args.slide, args.mpp)
    network = _Counted(spec)
    inferer = _inferer(args, level, spec, scratch)
    t2 = time.perf_counter()
    with torch.inference_mode():
        merged = inferer(str(args.slide), network)
    t3 = time.perf_counter()
    rss_inference = _maxrss_bytes()
    versions = {"monai_version": monai.__version__, "torch_version": torch.__version__,
                "zarr_version": zarr.__version__}  # fmt: skip
    arrays = write_output(args, merged, _meta(args, spec, level, versions))
    t4 = time.perf_counter()
    return {
        "engine": "monai", "merger": MERGERS[args.merger], **versions,
        "output": str(args.out), "arrays": arrays, "level": asdict(level),
        "patches": network.patches, "torch_threads": torch.get_num_threads(),
        "import_s": t1 - t0, "model_s": t2 - t1, "inference_s": t3 - t2, "write_s": t4 - t3,
        "ru_maxrss_inference_bytes": rss_inference,
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Segment ``args.slide`` with MONAI and report timings, peak and leftover bytes."""
    args = _parse(argv)
    t0 = time.perf_counter()
    args.out = args.out.resolve()
    parent = (args.scratch or args.out.parent).resolve()
    parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{args.out.name}.monai-", dir=parent))
    (scratch / "tmp").mkdir()
    # ZarrAvgMerger's temporary stores go where tempfile puts them: here, so they can be
    # measured and removed. Process-wide on purpose: this script is the entry point.
    tempfile.tempdir = str(scratch / "tmp")
    try:
        report = _run(args, scratch, t0)
        gc.collect()  # let MONAI's mergers (and their TemporaryDirectory finalisers) go first
        t5 = time.perf_counter()
    finally:
        leftover = clean_scratch(scratch)
    report["leftover"] = asdict(leftover)
    report["cleanup_s"] = time.perf_counter() - t5
    report["ru_maxrss_bytes"] = _maxrss_bytes()
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
