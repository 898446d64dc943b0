"""One budget for the whole run: split ``--budget`` between everything the run allocates.

``RunConfig.budget`` bounds what a run allocates **above its baseline** (RSS
after imports and model load). :func:`split` divides it, before inference:

``batch``
    One batch in flight, *measured* from a probe batch at the configured
    batch size (:func:`measure_batch`: input, float input, the model's
    activations, the output and its numpy copy), plus the loader
    (:func:`loader_bytes`): the ring of uint8 batch slots its readers fill
    ahead (``2 x workers`` batches, reused, in shared memory for reader
    processes) and each reader's working memory (:data:`READER_BYTES`).
``cache``
    The slide's read cache (``TiffSlide`` tiles, ``SyntheticSlide`` blocks: the
    band the reads sweep, :meth:`~harness.plan.Plan.read_band`, capped; with
    reader processes the sum of each one's band, :func:`harness.loader.cache_need`;
    0 for slides without one).
``queue``
    Final chunks waiting for the writer thread (its queue depth, plus the one
    being encoded), probabilities and labels.
``plan``
    The plan's held arrays and its build-time transients.
``slack``
    Heap slack the allocator may keep before :class:`~harness._malloc.HeapTrimmer`
    trims (:func:`heap_slack_for`: a sixteenth of the budget, 8 to 32 MiB), plus
    :data:`FIXED_BYTES` for thread stacks, codec and interpreter bookkeeping
    (measured: see ``docs/budget.md``).
``merge``
    The rest: the streaming merger's live chunk buffers (its ledger never
    exceeds it).

When the rest is below what the merger needs (the chunks one patch touches)
the run first shrinks what it can -- the batch size (halved down to 1) and the
tile cache (down to two tile rows) -- and says so in :attr:`BudgetSplit.notes`;
if even that does not fit it refuses before inference with one line naming
the part that does not fit.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness._malloc import SLACK, SLACK_ENV, default_slack
from harness.errors import ConfigError
from harness.plan import grid_count, min_budget, output_shape, strip_chunks_for
from harness.slides.base import CachedSlide
from harness.units import format_bytes

if TYPE_CHECKING:
    from harness.config import RunConfig
    from harness.models import ModelSpec
    from harness.plan import PlanConfig
    from harness.slides.base import Slide

FIXED_BYTES = 28 * 2**20
"""Allocations that do not scale with anything we choose: thread stacks, codec and
reader buffers, the per-chunk finalise arrays, interpreter objects. Measured: RSS above
the baseline minus merge peak, batch, queue, plan and heap slack, 16384² passthrough and
tiny-cnn at 128 MB (``docs/budget.md``): 23-30 MiB."""
MIN_HEAP_SLACK = 8 * 2**20
"""Smallest heap slack: trimming more often than this costs more than it returns."""
QUEUE_DEPTH = 4
PLAN_BYTES_PER_ENTRY = 64
"""Peak bytes per patch while a plan is built (int64 transients; 8 are held)."""
PLAN_BYTES_PER_CHUNK = 14
"""Bytes per output chunk of the plan's grid tables (expected counts, masks, records)."""
READER_BYTES = 16 * 2**20
"""Working memory of one patch reader besides its cache share: the block or tile being
made, its patch copies, and for a reader process its copy of the plan and its view of the
ring. Measured (VmHWM minus RSS after start-up, minus the cache share): 11-14 MiB per
reader process, synthetic 4096², patch 256, batch 8 (``docs/loader.md``)."""
MAX_PATCH_SHARE = 0.5
"""A single patch's input (uint8 + float32) may use at most this share of the budget."""


@dataclass(frozen=True)
class BudgetSplit:
    """How the run budget is divided (bytes), and what was shrunk to make it fit."""

    total: int
    batch: int
    cache: int
    queue: int
    plan: int
    slack: int
    merge: int
    batch_size: int
    cache_bytes: int | None = None  # the tile-cache size to set (None: the slide has none)
    heap_slack: int = SLACK  # what HeapTrimmer lets the heap grow before it trims
    notes: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record (also in the output's attributes and ``--json``)."""
        out = asdict(self)
        out["notes"] = list(self.notes)
        return out

    def __str__(self) -> str:
        names = ("merge", "batch", "cache", "queue", "plan", "slack")
        parts = ", ".join(f"{k} {format_bytes(getattr(self, k))}" for k in names)
        return f"budget {format_bytes(self.total)}: {parts}"


def _status_bytes(field_name: str) -> int:
    text = Path("/proc/self/status").read_text()
    m = re.search(rf"^{field_name}:\s+(\d+) kB", text, re.MULTILINE)
    if m is None:
        raise OSError(f"no {field_name} in /proc/self/status")
    return int(m.group(1)) * 1024


def measure_batch(spec: ModelSpec, config: PlanConfig, batch_size: int, device: str) -> int:
    """Peak RSS one probe batch adds (Linux: the kernel's high-water mark, reset first).

    Falls back to an estimate (input, float input, output, 4x for activations)
    where ``/proc/self/clear_refs`` is not writable.
    """
    import numpy as np
    import torch

    from harness.inference import _forward

    ph, pw = config.patch_hw
    try:
        Path("/proc/self/clear_refs").write_text("5")
        before = _status_bytes("VmRSS")
    except OSError:
        return estimate_batch(config, batch_size, 3)
    white = np.full((batch_size, ph, pw, 3), 255, dtype=np.uint8)
    with torch.inference_mode():
        x = torch.from_numpy(spec.preprocess.array(white)).permute(0, 3, 1, 2).to(device)
        y = np.asarray(_forward(spec, x, 0).to(torch.float32).cpu().numpy())
    del white, x, y
    return max(0, _status_bytes("VmHWM") - before)


def estimate_batch(config: PlanConfig, batch_size: int, channels: int) -> int:
    """Input uint8 + float32, output float32 and a numpy copy, activations 4x the input."""
    (ph, pw), (oh, ow) = config.patch_hw, config.out_hw
    return batch_size * (ph * pw * 3 * (1 + 4 + 16) + oh * ow * channels * 8)


def check_sizes(slide: Slide, config: PlanConfig, budget: int) -> None:
    """Refuse, before anything is allocated, runs whose patch or plan cannot fit the budget."""
    (ph, pw), (ch, cw) = config.patch_hw, config.chunk_hw
    patch_bytes = ph * pw * 3 * 5
    if patch_bytes > MAX_PATCH_SHARE * budget:
        raise ConfigError(
            f"one {ph}x{pw} input patch needs {format_bytes(patch_bytes)} (uint8 + float32), more "
            f"than half the {format_bytes(budget)} budget; use a smaller --patch or a larger "
            "--budget"
        )
    h, w = output_shape(slide.shape, slide.mpp, config.mpp)
    chunks = math.ceil(h / ch) * math.ceil(w / cw)
    table = chunks * PLAN_BYTES_PER_CHUNK
    if table > budget // 4:
        raise ConfigError(
            f"the output is {h:,} x {w:,} px at mpp {config.mpp or slide.mpp:g}: {chunks:,} "
            f"chunks of {ch}x{cw}, whose tables alone need {format_bytes(table)}, more than a "
            f"quarter of the {format_bytes(budget)} budget; use a coarser --mpp, a larger "
            "--chunk or a larger --budget"
        )


def plan_bytes(slide: Slide, config: PlanConfig) -> int:
    """Peak bytes of building the whole output's plan (entries and grid tables)."""
    h, w = output_shape(slide.shape, slide.mpp, config.mpp)
    (oh, ow), (sh, sw), (ch, cw) = config.out_hw, config.stride_hw, config.chunk_hw
    entries = grid_count(h, oh, sh) * grid_count(w, ow, sw)
    chunks = math.ceil(h / ch) * math.ceil(w / cw)
    return entries * PLAN_BYTES_PER_ENTRY + chunks * PLAN_BYTES_PER_CHUNK


def queue_bytes(config: PlanConfig, channels: int, probabilities: bool) -> int:
    """Chunks waiting for (or inside) the writer: probabilities float32 + labels uint8."""
    ch, cw = config.chunk_hw
    per_chunk = ch * cw * ((channels * 4 * 2 if probabilities else 0) + 1 + channels * 4)
    return (QUEUE_DEPTH + 2) * per_chunk


def _cache_bytes(
    slide: Slide, config: PlanConfig, merge_hint: int, channels: int, batch_size: int,
    workers: int,
) -> int | None:  # fmt: skip
    """Read-cache bytes the sweep needs (None when the slide keeps no cache)."""
    from harness.loader import cache_need

    if not isinstance(slide, CachedSlide):
        return None
    # The band the reads sweep depends on the strip width, itself from the merge share.
    out = output_shape(slide.shape, slide.mpp, config.mpp)
    strip = strip_chunks_for(config, out, channels, merge_hint)
    # Reader processes own column ranges from the strip's first patch, halo included.
    width = strip * config.chunk_hw[1]
    halo = config.out_hw[1] if workers > 1 and width < out[1] else 0
    return cache_need(slide, config, min(width, out[1]) + halo, batch_size, workers)


def split(run: RunConfig, slide: Slide, spec: ModelSpec, channels: int) -> BudgetSplit:
    """Divide ``run.budget`` (see the module docstring); shrink or refuse when it is short."""
    cfg, total = run.plan, run.budget
    check_sizes(slide, cfg, total)
    notes: list[str] = []
    batch_size = run.batch_size
    per_batch = measure_batch(spec, cfg, batch_size, run.device)
    heap_slack = heap_slack_for(total)
    fixed = dict(queue=queue_bytes(cfg, channels, run.probabilities),
                 plan=plan_bytes(slide, cfg), slack=heap_slack + FIXED_BYTES)  # fmt: skip
    need = min_budget(cfg, channels)
    received = loader_bytes(cfg, batch_size, run.workers)
    rest = total - sum(fixed.values()) - per_batch - received
    cache = _cache_bytes(slide, cfg, max(rest, need), channels, batch_size, run.workers)
    while rest - (cache or 0) < need and batch_size > 1:
        batch_size = max(1, batch_size // 2)
        per_batch = measure_batch(spec, cfg, batch_size, run.device)
        received = loader_bytes(cfg, batch_size, run.workers)
        rest = total - sum(fixed.values()) - per_batch - received
        notes.append(f"batch size lowered to {batch_size} to fit the budget")
    if cache is not None and rest - cache < need:
        smallest = _cache_bytes(slide, cfg, need, channels, batch_size, run.workers) or 0
        cache = min(cache, max(smallest, rest - need))
        notes.append(f"tile cache lowered to {format_bytes(cache)} to fit the budget")
    merge = rest - (cache or 0)
    if run.merge_budget is not None:
        merge = run.merge_budget
    elif merge < need:
        worst = max([("batch", per_batch + received), *fixed.items()], key=lambda kv: kv[1])
        raise ConfigError(
            f"budget {format_bytes(total)} is too small: after the {worst[0]} "
            f"({format_bytes(worst[1])}) and the rest, {format_bytes(max(merge, 0))} is left "
            f"for merge buffers, which need {format_bytes(need)}; raise --budget to at least "
            f"{format_bytes(total - merge + need)}"
        )
    return BudgetSplit(total=total, batch=per_batch + received, cache=cache or 0,
                       queue=fixed["queue"], plan=fixed["plan"], slack=fixed["slack"],
                       merge=merge, batch_size=batch_size, cache_bytes=cache,
                       heap_slack=heap_slack, notes=tuple(notes))  # fmt: skip


def heap_slack_for(total: int) -> int:
    """Heap growth the trimmer allows: a sixteenth of the budget, 8 to 32 MiB.

    ``$WSI_HARNESS_HEAP_SLACK`` overrides it (see :mod:`harness._malloc`).
    """
    import os

    if os.environ.get(SLACK_ENV):
        return default_slack()
    return min(SLACK, max(MIN_HEAP_SLACK, total // 16))


def loader_bytes(config: PlanConfig, batch_size: int, workers: int) -> int:
    """The loader's ring of uint8 batch slots, plus :data:`READER_BYTES` per reader."""
    from harness.loader import ring_bytes

    return ring_bytes(config, batch_size, workers) + workers * READER_BYTES


def with_batch_size(run: RunConfig, split_: BudgetSplit) -> RunConfig:
    """``run`` with the batch size the split settled on."""
    return run if split_.batch_size == run.batch_size else run.replace(batch_size=split_.batch_size)


def shrink_note(split_: BudgetSplit) -> str | None:
    """One line for the user when the split shrank something."""
    return "; ".join(split_.notes) if split_.notes else None
