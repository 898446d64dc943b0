"""Patch batches in plan order, through a torch ``DataLoader``.

Each dataset item is one whole batch (consecutive plan indices), so worker
processes read whole batches in parallel while the main process runs the
model and merges, and batches still arrive in plan order.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from harness.errors import SlideError

if TYPE_CHECKING:
    from harness.plan import Plan
    from harness.slides.base import Slide

Batch = tuple[torch.Tensor, torch.Tensor]  # uint8 (N, h, w, 3), int64 plan indices (N,)


class PatchBatches(Dataset[Batch]):
    """Batch ``b`` holds plan patches ``b * batch_size ...`` read at the plan's mpp."""

    def __init__(self, slide: Slide, plan: Plan, batch_size: int) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.slide, self.plan, self.batch_size = slide, plan, batch_size

    def __len__(self) -> int:
        return -(-self.plan.n_patches // self.batch_size)

    def __getitem__(self, b: int) -> Batch:
        start = b * self.batch_size
        indices = np.arange(start, min(start + self.batch_size, self.plan.n_patches))
        ph, pw = self.plan.config.patch_hw
        out = np.empty((len(indices), ph, pw, 3), dtype=np.uint8)
        mpp = self.plan.config.mpp
        for k, i in enumerate(indices):
            box = self.plan.input_box(int(i))
            patch = self.slide.read(box, mpp)
            if patch.shape != (ph, pw, 3):
                raise SlideError(
                    f"slide read of {box} at mpp {mpp} gave {patch.shape}, expected {(ph, pw, 3)}"
                )
            out[k] = patch
        return torch.from_numpy(out), torch.from_numpy(indices)


def make_loader(
    slide: Slide, plan: Plan, batch_size: int, workers: int = 0, pin_memory: bool = False
) -> DataLoader[Batch]:
    """A loader yielding :data:`Batch` in plan order (``workers`` reader processes)."""
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    return DataLoader(
        PatchBatches(slide, plan, batch_size),
        batch_size=None,
        shuffle=False,
        num_workers=workers,
        pin_memory=pin_memory,
        prefetch_factor=2 if workers else None,
    )
