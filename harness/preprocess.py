"""Model input preprocessing and the built-in model names, without importing torch.

Kept apart from :mod:`harness.models` so that run configuration and the CLI
(:mod:`harness.config`) can validate options without paying for ``import torch``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch
    from numpy.typing import NDArray

BUILTIN_MODELS: tuple[str, ...] = ("passthrough", "tiny-cnn", "hne-colour")
"""Names of the built-in models (:mod:`harness.models` builds them)."""


@dataclass(frozen=True)
class Preprocess:
    """Explicit input scaling: ``(pixel * scale - mean) / std`` per channel."""

    scale: float = 1.0 / 255.0
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def __post_init__(self) -> None:
        if not self.scale > 0:
            raise ValueError(f"preprocess scale must be > 0, got {self.scale}")
        if any(not s > 0 for s in self.std):
            raise ValueError(f"preprocess std must be > 0 per channel, got {self.std}")

    @property
    def normalises(self) -> bool:
        """Whether mean/std do anything beyond the scaling."""
        return self.mean != (0.0, 0.0, 0.0) or self.std != (1.0, 1.0, 1.0)

    def array(self, batch: NDArray[np.uint8]) -> NDArray[np.float32]:
        """The same arithmetic on a uint8 ``(N, h, w, 3)`` array, bitwise, kept channels-last.

        ``torch.from_numpy(result).permute(0, 3, 1, 2)`` equals ``self(batch)``.
        One float32 pass instead of torch's cast and multiply over a permuted
        view (about 4x faster on CPU), and it runs wherever the batch is read.
        """
        x = np.multiply(batch, np.float32(self.scale), dtype=np.float32)
        if self.normalises:
            x -= np.asarray(self.mean, dtype=np.float32)
            x /= np.asarray(self.std, dtype=np.float32)
        return x

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        """Turn a uint8 ``(N, h, w, 3)`` batch into float32 ``(N, 3, h, w)``."""
        import torch

        x = batch.permute(0, 3, 1, 2).to(torch.float32).mul_(self.scale)
        if self.normalises:
            mean = torch.tensor(self.mean, dtype=torch.float32, device=x.device)
            std = torch.tensor(self.std, dtype=torch.float32, device=x.device)
            x = (x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
        return x
