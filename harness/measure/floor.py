"""The floor of a run: each part of the work measured alone, beside the end-to-end run.

A segmentation must at least read every slide pixel once, preprocess every
patch, run the model on every batch, add every patch output into its chunks,
finalise every chunk and write it. :func:`measure_floor` times each of these
alone, in this process, on the run's own slide, model and geometry, then runs
the real thing (:func:`harness.segment.segment`) and reports the ratio of the
two, in wall and in CPU time (``os.times``: every thread of this process, and
reader processes once reaped). A ratio near 1 means the machinery (loader,
hand-offs, bookkeeping, writer thread) costs little beyond the work itself;
with reader processes or threads the wall ratio can fall below 1, the parts
overlapping.

The parts
---------
``read_once``
    Every slide pixel the kept patches cover, read once at the run's mpp in
    blocks of :data:`~harness.slides._blockcache.BLOCK_HW` samples, with the
    slide's read cache off: what a perfect cache would leave of the reads.
``preprocess``
    The model's preprocessing of every batch into one reused float buffer
    (:func:`harness.loader.preprocess_into`), on one real batch of the slide.
``forward``
    :func:`harness.inference.infer` of every batch (model, activation, the
    output check), on that batch.
``merge_adds``
    :class:`~harness.merge.StreamingMerger` adds of every patch (one strip, no
    budget limit: each patch once), its finalised chunks dropped, less the
    ``finalise`` part, which the merger does inside its adds.
``finalise``
    :func:`harness.merge.finalise` of every output chunk once.
``write``
    One whole-chunk write of every output chunk into a fresh zarr store.

Rounds
------
On a shared machine one run's CPU seconds move by 10-20 % with the
neighbours (the end-to-end run's system time alone varied 5-13 s between
identical 16384² runs here), more than the gaps this report is for. With
``rounds=N`` the parts and the end-to-end run are measured N times,
interleaved (parts, run, parts, run, ...), so slow spells hit both sides; the
report gives each part's median, the end-to-end median, and every round's own
ratio, whose spread is the noise.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from numpy.typing import NDArray

    from harness.config import RunConfig
    from harness.models import ModelSpec
    from harness.plan import Plan
    from harness.slides.base import Slide

PARTS = ("read_once", "preprocess", "forward", "merge_adds", "finalise", "write")


@dataclass(frozen=True)
class Part:
    """One measured piece: wall and CPU seconds (``sys_s`` of that CPU in the kernel), its work."""

    name: str
    wall_s: float
    cpu_s: float
    work: str
    sys_s: float = 0.0


@dataclass(frozen=True)
class FloorReport:
    """The parts alone, their sum (the floor) and the end-to-end run, for one configuration."""

    slide: str
    model: str
    workers: int
    batch_size: int
    patches: int
    parts: tuple[Part, ...]
    end_to_end: Part
    round_ratios: tuple[tuple[float, float], ...] = ()
    """``(wall, CPU)`` ratio of each round, when measured over several (the medians above)."""

    @property
    def floor_wall_s(self) -> float:
        """Wall seconds of the parts one after another."""
        return sum(p.wall_s for p in self.parts)

    @property
    def floor_cpu_s(self) -> float:
        """CPU seconds of the parts."""
        return sum(p.cpu_s for p in self.parts)

    @property
    def floor_sys_s(self) -> float:
        """System (kernel) CPU seconds of the parts."""
        return sum(p.sys_s for p in self.parts)

    @property
    def wall_ratio(self) -> float:
        """End-to-end wall over the floor's wall."""
        return self.end_to_end.wall_s / max(self.floor_wall_s, 1e-9)

    @property
    def cpu_ratio(self) -> float:
        """End-to-end CPU over the floor's CPU."""
        return self.end_to_end.cpu_s / max(self.floor_cpu_s, 1e-9)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record (``--json``)."""
        out = asdict(self)
        out.update(floor_wall_s=self.floor_wall_s, floor_cpu_s=self.floor_cpu_s,
                   floor_sys_s=self.floor_sys_s,
                   wall_ratio=self.wall_ratio, cpu_ratio=self.cpu_ratio)  # fmt: skip
        return out

    def table(self) -> str:
        """The report as an aligned text table."""
        head = (f"floor of {self.slide}: model {self.model}, batch {self.batch_size}, "
                f"workers {self.workers}, {self.patches:,} patches")  # fmt: skip
        rows = [(p.name, p.wall_s, p.cpu_s, p.sys_s, p.work) for p in self.parts]
        rows += [("floor (sum)", self.floor_wall_s, self.floor_cpu_s, self.floor_sys_s,
                  "the parts one by one"),
                 (self.end_to_end.name, self.end_to_end.wall_s, self.end_to_end.cpu_s,
                  self.end_to_end.sys_s, self.end_to_end.work)]  # fmt: skip
        lines = [head, f"{'part':<12} {'wall s':>8} {'CPU s':>8} {'of it sys':>9}  what"]
        lines += [f"{n:<12} {w:>8.2f} {c:>8.2f} {k:>9.2f}  {what}" for n, w, c, k, what in rows]
        lines.append(f"{'ratio':<12} {self.wall_ratio:>7.2f}x {self.cpu_ratio:>7.2f}x  "
                     "end to end / floor")  # fmt: skip
        if len(self.round_ratios) > 1:
            each = ", ".join(f"{w:.2f}x / {c:.2f}x" for w, c in self.round_ratios)
            lines.append(f"medians of {len(self.round_ratios)} interleaved rounds; "
                         f"each round's wall / CPU ratio: {each}")  # fmt: skip
        return "\n".join(lines)


def timed(fn: Callable[[], Any]) -> tuple[float, float, float, Any]:
    """``(wall s, CPU s, system s, result)`` of ``fn()``.

    CPU counts every thread and reaped children; system is the kernel's share of it.
    """
    t0, c0, s0 = time.perf_counter(), _cpu(), _sys()
    result = fn()
    return time.perf_counter() - t0, _cpu() - c0, _sys() - s0, result


def _cpu() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _sys() -> float:
    t = os.times()
    return t.system + t.children_system


def measure_floor(slide: str, run: RunConfig, scratch: Path, rounds: int = 1) -> FloorReport:
    """Measure every part of ``run`` on ``slide`` alone, then the run end to end.

    ``scratch`` receives the outputs (the floor's write and the end-to-end run).
    With ``rounds > 1`` both are measured that many times, interleaved, and the
    report holds the medians (see the module notes).
    """
    from harness.inference import load, prepare
    from harness.plan import make_plan
    from harness.slides import open_slide

    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    parts_slide = open_slide(slide, mpp=run.slide_mpp)
    spec = load(run)
    channels = prepare(spec, run.plan, run.device)
    plan = make_plan(parts_slide.shape, parts_slide.mpp, run.plan, channels, 2**50,
                     _mask(run, parts_slide), strips=False)  # fmt: skip
    measured = []
    for r in range(rounds):
        tag = "" if rounds == 1 else f"-{r + 1}"
        measured.append((_parts(parts_slide, plan, spec, run, scratch, tag),
                         _end_to_end(slide, run, scratch, tag)))  # fmt: skip
    reports = [FloorReport(slide, spec.name, run.workers, run.batch_size, plan.n_patches,
                           tuple(parts), e2e) for parts, e2e in measured]  # fmt: skip
    return combine(reports)


def combine(reports: list[FloorReport]) -> FloorReport:
    """Rounds of one configuration as one report: per-part medians, and each round's ratios."""
    if len(reports) == 1:
        return reports[0]
    first = reports[0]
    return FloorReport(
        first.slide, first.model, first.workers, first.batch_size, first.patches,
        tuple(_median([r.parts[i] for r in reports]) for i in range(len(first.parts))),
        _median([r.end_to_end for r in reports]),
        tuple((r.wall_ratio, r.cpu_ratio) for r in reports),
    )  # fmt: skip


def _median(parts: list[Part]) -> Part:
    """One part of several rounds: median wall and median CPU (the first round's description)."""
    return Part(parts[0].name, float(np.median([p.wall_s for p in parts])),
                float(np.median([p.cpu_s for p in parts])), parts[0].work,
                float(np.median([p.sys_s for p in parts])))  # fmt: skip


def _mask(run: RunConfig, slide: Slide) -> NDArray[np.bool_] | None:
    from harness.mask import resolve_mask

    return resolve_mask(run.mask, slide)


def _parts(
    slide: Slide, plan: Plan, spec: ModelSpec, run: RunConfig, scratch: Path, tag: str = ""
) -> list[Part]:
    """Every part of :data:`PARTS`, in order, each timed alone (imports and warm-up before)."""
    import harness.loader
    import harness.merge
    import harness.output  # noqa: F401  (zarr: its import is no part of a write)

    wall, cpu, ks, px = timed(lambda: read_once(slide, plan))
    parts = [Part("read_once", wall, cpu, f"{px / 1e6:,.1f} Mpx in blocks, cache off", ks)]
    batch = _real_batch(slide, plan, run.batch_size)
    n = math.ceil(plan.n_patches / run.batch_size)
    wall, cpu, ks, x = timed(lambda: preprocess_all(spec, batch, n))
    parts.append(Part("preprocess", wall, cpu, f"{n:,} batches into one buffer", ks))
    _warm(spec, x, run, plan.channels)
    wall, cpu, ks, probs = timed(lambda: forward_all(spec, x, run, plan.channels, n))
    parts.append(Part("forward", wall, cpu, f"{n:,} batches of {run.batch_size}", ks))
    fin_wall, fin_cpu, fin_sys, (probs_hwc, labels) = timed(lambda: finalise_all(plan, probs))
    wall, cpu, ks, _ = timed(lambda: merge_all(plan, probs, run.batch_size))
    # Noise can make a tiny run's merger faster than its finalise alone: never below 0.
    parts.append(
        Part(
            "merge_adds",
            max(0.0, wall - fin_wall),
            max(0.0, cpu - fin_cpu),
            f"{plan.n_patches:,} patches (merger {wall:.2f} s wall less finalise)",
            max(0.0, ks - fin_sys),
        )
    )
    parts.append(Part("finalise", fin_wall, fin_cpu, f"{_touched(plan):,} chunks", fin_sys))
    out = scratch / f"floor{tag}.zarr"
    wall, cpu, ks, _ = timed(lambda: write_all(plan, run, probs_hwc, labels, out))
    parts.append(Part("write", wall, cpu, f"{_touched(plan):,} chunks, {run.dtype}", ks))
    return parts


def _end_to_end(slide: str, run: RunConfig, scratch: Path, tag: str = "") -> Part:
    from harness.segment import segment

    out = scratch / f"end-to-end{tag}.zarr"
    wall, cpu, ks, result = timed(
        lambda: segment(slide, out=out, run=run.replace(overwrite=True, progress=False))
    )
    return Part("end to end", wall, cpu, f"segment: {result.patch_runs:,} patch runs", ks)


def read_once(slide: Slide, plan: Plan) -> int:
    """Read every block of samples a kept patch covers, once, with the read cache off.

    Returns the pixels read (at the run's mpp).
    """
    from harness.slides._blockcache import BLOCK_HW
    from harness.slides.base import CachedSlide

    if isinstance(slide, CachedSlide):
        slide.resize_cache(0)
    (bh, bw), s = BLOCK_HW, plan.scale
    step_h, step_w = max(1, round(bh * s)), max(1, round(bw * s))
    touched = _blocks_touched(slide, plan, (step_h, step_w))
    pixels = 0
    for by, bx in zip(*np.nonzero(touched), strict=True):
        x, y = int(bx) * step_w, int(by) * step_h
        w, h = min(step_w, slide.shape[1] - x), min(step_h, slide.shape[0] - y)
        block = slide.read((x, y, w, h), plan.config.mpp)
        pixels += block.shape[0] * block.shape[1]
    return pixels


def _blocks_touched(slide: Slide, plan: Plan, step: tuple[int, int]) -> NDArray[np.bool_]:
    """Level-0 blocks of ``step`` px that some kept patch's input box overlaps."""
    rows, cols = (math.ceil(n / k) for n, k in zip(slide.shape, step, strict=True))
    touched = np.zeros((rows, cols), dtype=bool)
    for i in range(plan.n_patches):
        x, y, w, h = plan.input_box(i)
        y0, y1 = max(0, y // step[0]), min(rows, (y + h - 1) // step[0] + 1)
        x0, x1 = max(0, x // step[1]), min(cols, (x + w - 1) // step[1] + 1)
        touched[y0:y1, x0:x1] = True
    return touched


def _real_batch(slide: Slide, plan: Plan, batch_size: int) -> NDArray[np.uint8]:
    """One batch of real patches from the middle of the plan (tissue, not glass)."""
    from harness._readers import fill

    ph, pw = plan.config.patch_hw
    batch = np.empty((batch_size, ph, pw, 3), dtype=np.uint8)
    start = (plan.n_patches // 2) // batch_size * batch_size
    entries = np.arange(start, min(start + batch_size, plan.n_patches))
    fill(slide, plan, entries, batch)
    batch[len(entries) :] = batch[len(entries) - 1]
    return batch


def preprocess_all(spec: ModelSpec, batch: NDArray[np.uint8], n: int) -> NDArray[np.float32]:
    """``n`` batches of preprocessing into one reused buffer (the loader's own arithmetic)."""
    from harness.loader import preprocess_into

    buffer = np.empty(batch.shape, dtype=np.float32)
    for _ in range(n):
        preprocess_into(spec.preprocess, batch, buffer)
    return buffer


def forward_all(
    spec: ModelSpec, x: NDArray[np.float32], run: RunConfig, channels: int, n: int
) -> NDArray[np.float32]:
    """``n`` batches through the model, activated and checked as a run does."""
    import torch

    from harness.inference import infer

    pixels = torch.from_numpy(x)
    out = infer(spec, pixels, run, channels, 0)
    for b in range(1, n):
        out = infer(spec, pixels, run, channels, b)
    return out


def _warm(spec: ModelSpec, x: NDArray[np.float32], run: RunConfig, channels: int) -> None:
    """One untimed batch: the model's first call at this batch size picks its kernels."""
    forward_all(spec, x, run, channels, 1)


def merge_all(plan: Plan, probs: NDArray[np.float32], batch_size: int) -> int:
    """Add every patch of ``plan`` (each the output ``probs``) into a streaming merger."""
    from harness.merge import StreamingMerger

    merger = StreamingMerger(plan, _DropSink(), 2**50)
    try:
        for start in range(0, plan.n_patches, batch_size):
            idx = np.arange(start, min(start + batch_size, plan.n_patches))
            merger.add(probs[: len(idx)], idx)
        return merger.finish().chunks_written
    finally:
        merger.close()


class _DropSink:
    """A chunk sink that drops every chunk: the merge alone."""

    def write_chunk(self, box: Any, probs: Any, labels: Any) -> None:
        """Forget the chunk."""


def finalise_all(
    plan: Plan, probs: NDArray[np.float32]
) -> tuple[NDArray[np.float32], NDArray[np.uint8]]:
    """:func:`~harness.merge.finalise` of every touched chunk; returns a whole chunk's result."""
    from harness.merge import finalise

    (ch, cw), c = plan.config.chunk_hw, plan.channels
    sums = np.resize(probs[0] * np.float32(2), (c, ch, cw)).astype(np.float32)
    weights = np.full((ch, cw), 2, dtype=np.float32)
    for chunk in np.flatnonzero(plan.expected):
        y0, y1, x0, x1 = plan.chunk_box(int(chunk))
        finalise(sums[:, : y1 - y0, : x1 - x0], weights[: y1 - y0, : x1 - x0])
    whole, labels = finalise(sums, weights)
    return np.ascontiguousarray(whole), labels


def write_all(
    plan: Plan, run: RunConfig, probs: NDArray[np.float32], labels: NDArray[np.uint8],
    out: Path,
) -> int:  # fmt: skip
    """Write every touched chunk once into a fresh store at ``out``."""
    import shutil

    from harness.output import ChunkWriter, ZarrStore

    shutil.rmtree(out, ignore_errors=True)
    store = ZarrStore.create(out, plan.out_shape, plan.config.chunk_hw, plan.channels,
                             {"floor": True}, run.dtype, run.probabilities)  # fmt: skip
    writer = ChunkWriter(store)
    for chunk in np.flatnonzero(plan.expected):
        y0, y1, x0, x1 = plan.chunk_box(int(chunk))
        writer.write_chunk((y0, y1, x0, x1), probs[: y1 - y0, : x1 - x0],
                           labels[: y1 - y0, : x1 - x0])  # fmt: skip
    return writer.chunks_written


def _touched(plan: Plan) -> int:
    return int(np.count_nonzero(plan.expected))
