"""Patch batches in plan order, through a torch ``DataLoader``.

Each dataset item is one whole batch (consecutive plan indices), so worker
processes read whole batches in parallel while the main process runs the
model and merges, and batches still arrive in plan order. On the CPU the
reader also applies the model's preprocessing (:meth:`Preprocess.array`).
(A read-ahead thread for ``workers=0`` was tried: no gain measured on 2 cores,
where the model already keeps both busy.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from harness.errors import SlideError
from harness.interrupt import ignore_sigint_in_worker

if TYPE_CHECKING:
    from harness.plan import Plan
    from harness.preprocess import Preprocess
    from harness.slides.base import Slide

Batch = tuple[torch.Tensor, torch.Tensor]  # pixels (N, h, w, 3), int64 plan indices (N,)


class PatchBatches(Dataset[Batch]):
    """Batch ``b`` holds plan patches ``b * batch_size ...`` read at the plan's mpp.

    Items are uint8 ``(N, h, w, 3)``, or with ``preprocess`` the model's float32
    input kept channels-last (``Preprocess.array``), so the reader does that work.
    """

    def __init__(
        self, slide: Slide, plan: Plan, batch_size: int, preprocess: Preprocess | None = None
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.slide, self.plan, self.batch_size = slide, plan, batch_size
        self.preprocess = preprocess

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
        pixels = out if self.preprocess is None else self.preprocess.array(out)
        return torch.from_numpy(pixels), torch.from_numpy(indices)


def make_loader(
    slide: Slide,
    plan: Plan,
    batch_size: int,
    workers: int = 0,
    pin_memory: bool = False,
    preprocess: Preprocess | None = None,
) -> DataLoader[Batch]:
    """A loader yielding :data:`Batch` in plan order (``workers`` reader processes).

    With ``preprocess`` the readers also turn pixels into the model's input.
    """
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    return DataLoader(
        PatchBatches(slide, plan, batch_size, preprocess),
        batch_size=None,
        shuffle=False,
        num_workers=workers,
        pin_memory=pin_memory,
        prefetch_factor=2 if workers else None,
        worker_init_fn=ignore_sigint_in_worker if workers else None,
    )
