"""A run's ownership of its output: create, replace or resume, under one lock.

:func:`open_for_run` decides, before anything is written:

* **missing** (or an empty folder): create it, lock it, write the store with
  ``complete: false`` and the run's identity;
* **exists, complete**: with ``resume`` a no-op (the caller reports "already
  complete"); otherwise refused unless ``overwrite``;
* **exists, incomplete**: ``resume`` continues it when the recorded identity
  equals this run's (:func:`harness.identity.difference` names the first field that
  differs, and nothing is touched); ``overwrite`` replaces it;
* anything that is not a wsi-harness output is never deleted, and no output is
  ever created inside another one.

The lock (:class:`~harness.output.state.OutputLock`) is taken only after every
read-only check has passed, so a refused run leaves the output byte for byte as
it found it. :meth:`OutputSession.finish` marks the store complete, last of
all writes, then removes the run state (records, scratch, lock).
"""

from __future__ import annotations

import contextlib
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import hint
from harness.identity import difference
from harness.output._chunkfiles import remove_partials
from harness.output.base import OutputError, os_error
from harness.output.state import STATE_DIR, Holder, OutputLock, state_dir
from harness.output.zarr_store import ATTR, ZarrStore

COMPLETE_IGNORES = frozenset({("compute", "threads"), ("compute", "batch_size")})
"""Identity fields a complete output may differ in and still count as this run's result
(thread count and batch size change only the last bits, and nothing will be mixed)."""
SPILL_PREFIX = "wsi-harness-spill-"
"""Spill stores name their folders ``SPILL_PREFIX + run id + '-' + random``."""


@dataclass(frozen=True)
class StoreSpec:
    """What a fresh store looks like (shape, chunks, classes, dtype, its record)."""

    shape: tuple[int, int]
    chunk: tuple[int, int]
    channels: int
    meta: dict[str, Any]
    dtype: str = "float32"
    probabilities: bool = True


@dataclass
class OutputSession:
    """An output this run owns (or found complete, with nothing to do)."""

    store: ZarrStore
    lock: OutputLock | None
    resumed: bool
    already_complete: bool
    cleaned_partials: int = 0
    cleaned_spill: list[str] = field(default_factory=list)

    @property
    def root(self) -> Path:
        """The output folder."""
        return self.store.path

    def spill_root(self) -> Path:
        """The default scratch folder for raster-order spills, inside the output."""
        path = state_dir(self.root) / "spill"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def finish(self, record: dict[str, Any]) -> None:
        """Mark the output complete (last of all writes), then drop the run state."""
        self.store.mark_complete(record)
        self.close(remove_state=True)

    def close(self, remove_state: bool = False) -> None:
        """Release the lock; with ``remove_state`` also the records and scratch folders."""
        if remove_state:
            folder = state_dir(self.root)
            for sub in ("progress", "spill"):
                shutil.rmtree(folder / sub, ignore_errors=True)
        if self.lock is not None:
            self.lock.release(remove=remove_state)
            self.lock = None
        if remove_state:
            with contextlib.suppress(OSError):
                state_dir(self.root).rmdir()


def _inside_output(path: Path) -> Path | None:
    """The wsi-harness output that ``path`` would sit inside, if any."""
    for parent in path.resolve().parents:
        marker = parent / "zarr.json"
        if marker.is_file() and ATTR.encode() in marker.read_bytes():
            return parent
    return None


def _is_fresh(path: Path) -> bool:
    """Missing, or a folder with nothing but run state (a run that stopped before creating)."""
    if not path.exists():
        return True
    return path.is_dir() and all(p.name == STATE_DIR for p in path.iterdir())


def open_for_run(
    path: str | Path,
    spec: StoreSpec,
    identity: dict[str, Any],
    *,
    overwrite: bool = False,
    resume: bool = False,
    run_id: str = "",
    spill: tuple[str, ...] = (),
) -> OutputSession:
    """Open ``path`` for this run (see the module docstring); refuse with one line."""
    path = Path(path)
    if (outer := _inside_output(path)) is not None:
        raise OutputError(f"{path} is inside the wsi-harness output {outer}; choose another path")
    if _is_fresh(path):
        return _create(path, spec, identity, run_id, spill)
    if not (path / "zarr.json").is_file():
        raise OutputError(f"output {path} exists and is not a zarr store; refusing to touch it")
    store = ZarrStore.open(path, writable=False)
    meta = store.meta
    if resume:
        recorded = meta.get("identity")
        if not isinstance(recorded, dict):
            raise OutputError(f"output {path} records no identity, so it cannot be resumed")
        if meta.get("complete"):
            # Nothing will be mixed: only what the result is *of* must match.
            if (diff := difference(recorded, identity, ignore=COMPLETE_IGNORES)) is not None:
                raise OutputError(f"{path} is complete but {diff}; pass {hint('overwrite')} "
                                  "to recompute it")  # fmt: skip
            return OutputSession(store, None, resumed=True, already_complete=True)
        if (diff := difference(recorded, identity)) is not None:
            raise OutputError(f"cannot resume {path}: {diff}; nothing was changed")
        return _resume(path, run_id, spill)
    if not overwrite:
        raise OutputError(
            f"output {path} already exists; pass {hint('overwrite')} to replace it"
            + ("" if meta.get("complete") else f" or {hint('resume')} to continue it")
        )
    return _replace(path, spec, identity, run_id, spill)


def _create(
    path: Path, spec: StoreSpec, identity: dict[str, Any], run_id: str, spill: tuple[str, ...]
) -> OutputSession:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create output directory {path}: {exc.strerror}") from exc
    # The lock first: of two runs racing to create one output, the second finds it
    # held (or, once the first has finished creating, finds a store) and refuses.
    lock = OutputLock(path)
    lock.acquire(takeover=True)
    try:
        if (path / "zarr.json").exists():
            raise OutputError(f"output {path} was just created by another run")
        lock.record(run_id, spill)
        store = ZarrStore.create(path, spec.shape, spec.chunk, spec.channels,
                                 _meta(spec, identity), spec.dtype, spec.probabilities)  # fmt: skip
    except BaseException:
        lock.release(remove=False)
        raise
    return OutputSession(store, lock, resumed=False, already_complete=False)


def _replace(
    path: Path, spec: StoreSpec, identity: dict[str, Any], run_id: str, spill: tuple[str, ...]
) -> OutputSession:
    lock = OutputLock(path)
    lock.acquire(takeover=True)
    try:
        for child in path.iterdir():
            if child.name == STATE_DIR:
                for inner in child.iterdir():
                    if inner.name != "lock":
                        _remove(inner)
            else:
                _remove(child)
        lock.record(run_id, spill)
        store = ZarrStore.create(path, spec.shape, spec.chunk, spec.channels,
                                 _meta(spec, identity), spec.dtype, spec.probabilities)  # fmt: skip
    except OSError as exc:
        lock.release(remove=False)
        raise os_error(path, exc, "replace") from exc
    return OutputSession(store, lock, resumed=False, already_complete=False)


def _resume(path: Path, run_id: str, spill: tuple[str, ...]) -> OutputSession:
    lock = OutputLock(path)
    previous = lock.acquire(takeover=True)
    cleaned = _remove_spill(previous) if previous else []
    default_spill = state_dir(path) / "spill"
    if default_spill.exists():
        shutil.rmtree(default_spill, ignore_errors=True)
        cleaned.append(str(default_spill))
    partials = remove_partials(path)
    lock.record(run_id, spill)
    store = ZarrStore.open(path)
    resumes = list(store.meta.get("resumes", []))
    store.update_meta(resumes=[*resumes, {"at": time.time(), "partials_removed": partials}])
    return OutputSession(store, lock, resumed=True, already_complete=False,
                         cleaned_partials=partials, cleaned_spill=cleaned)  # fmt: skip


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    else:
        p.unlink()


def _remove_spill(previous: Holder) -> list[str]:
    """Remove a stopped run's spill scratch: only folders its spill stores named."""
    removed = []
    for root in previous.spill:
        for folder in Path(root).glob(f"{SPILL_PREFIX}{previous.run_id}-*"):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(str(folder))
    return removed


def _meta(spec: StoreSpec, identity: dict[str, Any]) -> dict[str, Any]:
    return {**spec.meta, "identity": identity, "started": time.time()}
