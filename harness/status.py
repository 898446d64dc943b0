"""What state an output is in: complete or not, chunks final, patches left, identity.

:func:`output_status` reads an output without touching it (no lock taken) and
answers what a user asks before deciding to resume, wait or start over: is it
complete; if not, how many chunks are final out of how many the plan touches
and how many patches a resume would still run; who is writing it now (a live
lock) or left it (a stale one); what produced it (identity) and the provenance.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from harness.output.base import OutputError
from harness.output.state import Holder, OutputLock, read_records, state_dir
from harness.output.zarr_store import ZarrStore


@dataclass(frozen=True)
class OutputStatus:
    """An output's state (see the module docstring)."""

    path: str
    complete: bool
    chunks_final: int
    chunks_total: int
    patches_remaining: int | None
    writer: str | None  # "running: pid ... on host" / "stopped: pid ..." / None
    identity: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    result: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record."""
        return asdict(self)

    def lines(self) -> list[str]:
        """Human-readable summary, one fact a line."""
        state = "complete" if self.complete else "incomplete"
        out = [f"{self.path}: {state}",
               f"chunks final  {self.chunks_final:,} of {self.chunks_total:,}"]  # fmt: skip
        if self.patches_remaining is not None:
            out.append(f"patches left  {self.patches_remaining:,}")
        if self.writer:
            out.append(f"writer        {self.writer}")
        slide = self.identity.get("slide", {})
        model = self.identity.get("model", {})
        out.append(f"slide         {slide.get('spec') or self.provenance.get('source')}")
        weights = str(model.get("weights_sha256"))[:12]
        out.append(f"model         {model.get('name')} (weights sha256 {weights}…)")
        out.append(f"plan          {self.identity.get('plan')}")
        if self.provenance:
            out.append(f"host          {self.provenance.get('host')}")
        return out


def _writer(root: Path) -> str | None:
    lock_path = state_dir(root) / "lock"
    holder = Holder.read(lock_path)
    if holder is None:
        return None
    probe = OutputLock(root)
    try:
        probe.acquire(takeover=True)
    except OutputError:
        return f"running: {holder.describe()}"
    probe.release(remove=False)
    return f"stopped: {holder.describe()} (continue with --resume)"


def output_status(path: str | Path, with_patches: bool = True) -> OutputStatus:
    """The state of the output at ``path`` (reads only; plans only with ``with_patches``)."""
    root = Path(path)
    store = ZarrStore.open(root, writable=False)
    meta = store.meta
    total = store.grid[0] * store.grid[1]
    complete = bool(meta.get("complete"))
    if complete:
        touched = int(meta.get("chunks_written", 0))
        return OutputStatus(str(root), True, touched, touched, 0, None,
                            meta.get("identity", {}), meta.get("provenance", {}),
                            meta.get("result", {}))  # fmt: skip
    plan = _plan(meta, store) if with_patches else None
    if plan is not None:
        touched_mask = plan.expected > 0
        final = store.final_chunks(touched_mask)
        done = _rest_plan(meta, store, final)
        remaining = None if done is None else done.n_unique
        final_n, total_n = int(final.sum()), int(touched_mask.sum())
    else:
        final_n, total_n = int(read_records(root, total).sum()), total
        remaining = None
    return OutputStatus(str(root), False, final_n, total_n, remaining, _writer(root),
                        meta.get("identity", {}), meta.get("provenance", {}))  # fmt: skip


def recorded_plan(meta: dict[str, Any], done: Any = None, as_run: bool = False) -> Any:
    """The output's plan, rebuilt from its record (None when the slide cannot be reopened).

    ``as_run`` rebuilds it with the strips the run used (its recorded merge budget and
    order); otherwise one strip, which has the same patches and chunks.
    """
    from harness.errors import HarnessError
    from harness.mask import resolve_mask
    from harness.plan import PlanConfig, make_plan
    from harness.slides import open_slide

    source = meta.get("slide", {}).get("source")
    plan_dict = dict(meta.get("plan", {}))
    if not source or not plan_dict:
        return None
    try:
        slide = open_slide(source, mpp=meta.get("slide", {}).get("mpp"))
        pairs = {k: tuple(plan_dict[k]) for k in ("patch", "stride", "output_patch", "chunk")}
        order = plan_dict.get("order", "strips")
        cfg = PlanConfig(**pairs, mpp=plan_dict["mpp"], blend=plan_dict["blend"],
                         sigma=plan_dict["sigma"], order=order)  # fmt: skip
        setting = meta.get("provenance", {}).get("options", {}).get("mask")
        mask = resolve_mask(setting, slide) if isinstance(setting, str) else None
        channels = len(meta.get("classes", ())) or 1
        merge = int(meta.get("budget", {}).get("merge") or 2**40) if as_run else 2**40
        return make_plan(slide.shape, slide.mpp, cfg, channels, merge, strips=as_run,
                         tissue=mask, done=done)  # fmt: skip
    except (HarnessError, KeyError, TypeError, ValueError):
        return None


def kill_cost(path: str | Path, completed: int) -> tuple[int, int]:
    """``(redone, bound)`` for an output a kill left, in patch runs of the run's plan.

    ``completed`` is the progress bar's count at the kill: patches counted once
    each, in the strip holding their origin, including those final before the
    killed run started. A resume runs, in plan order, the entries touching a
    chunk that is not final, and the killed run's entries after its last one
    are exactly those (an entry not run yet keeps its chunks open); so the
    ``owned_kept - completed`` counted patches it had not reached are the
    resume's last counted entries, and every resume entry before them ran
    already: that count is ``redone`` (an upper bound: uncounted entries just
    before them are included). ``bound`` is :func:`harness.blocks.loss_bound`.
    (Counting distinct patches instead would call a strip's halo runs, which
    an uninterrupted run does too, lost work.)
    """
    from harness.blocks import loss_bound
    from harness.plan import owned_entries

    store = ZarrStore.open(Path(path), writable=False)
    meta = store.meta
    plan = recorded_plan(meta, as_run=True)
    if plan is None:
        raise ValueError(f"cannot rebuild the plan of {path}")
    rest = recorded_plan(meta, done=store.final_chunks(plan.expected > 0), as_run=True)
    counted = np.flatnonzero(owned_entries(rest))
    left = rest.owned_kept - completed
    if left <= 0:
        ran = rest.n_patches
    else:
        ran = int(counted[len(counted) - left]) if left <= len(counted) else 0
    return ran, loss_bound(plan)


def _plan(meta: dict[str, Any], store: ZarrStore, done: Any = None) -> Any:
    return recorded_plan(meta, done=done)


def _rest_plan(meta: dict[str, Any], store: ZarrStore, final: Any) -> Any:
    return _plan(meta, store, done=final)
