"""Built-in segmentation models and loading of user models.

This module imports only numpy and torch, so that a peer environment (for
example TIAToolbox's) can import the very same models and weights.

Every model maps a float batch ``(N, 3, h, w)`` (after :class:`Preprocess`)
to per-class probabilities ``(N, C, ho, wo)``; built-ins take ``out_size`` and
return the centred ``ho x wo`` window of their full-size prediction, so the
output patch may be smaller than the input patch.
"""

from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from harness.palette import PALETTE  # the synthetic slides draw around these colours
from harness.preprocess import BUILTIN_MODELS, Preprocess

if TYPE_CHECKING:
    from collections.abc import Callable


@dataclass(frozen=True)
class ModelSpec:
    """A model ready to run: the module, its class names and its preprocessing."""

    name: str
    module: nn.Module
    classes: tuple[str, ...]
    preprocess: Preprocess = field(default_factory=Preprocess)


def _centre_crop(x: torch.Tensor, out_size: tuple[int, int] | None) -> torch.Tensor:
    if out_size is None:
        return x
    h, w = x.shape[-2:]
    oh, ow = out_size
    if oh > h or ow > w:
        raise ValueError(f"output size {out_size} is larger than the input patch {(h, w)}")
    top, left = (h - oh) // 2, (w - ow) // 2
    return x[..., top : top + oh, left : left + ow]


class Passthrough(nn.Module):
    """Near-zero compute: the centred output window of the preprocessed input.

    Used to measure the harness machinery. Its three channels are the scaled
    RGB values (in ``[0, 1]`` with the default preprocessing), not normalised
    probabilities; every output pixel differs, so merge errors show up in
    comparisons.
    """

    def __init__(self, out_size: tuple[int, int] | None = None) -> None:
        super().__init__()
        self.out_size = out_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _centre_crop(x, self.out_size).contiguous()


WIDTH = 4
"""Hidden channels of :class:`TinyCNN`."""

_SEEDING = threading.Lock()
"""Held while a seeded model draws its weights from torch's global generator."""


class TinyCNN(nn.Module):
    """A seeded three-layer convolutional net of 275 parameters (3 -> 4 -> 4 -> 3 channels).

    The size of the tiny model TIAToolbox was measured with in the issue that set
    the side-by-side targets, so both engines run the same amount of model work.
    """

    def __init__(self, out_size: tuple[int, int] | None = None, seed: int = 0) -> None:
        super().__init__()
        self.out_size = out_size
        # The global generator is process-wide: a cohort builds models on several
        # threads at once, and interleaved draws gave each a different net.
        with _SEEDING, torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.body = nn.Sequential(
                nn.Conv2d(3, WIDTH, 3, padding=1),
                nn.ReLU(inplace=True),
                nn.Conv2d(WIDTH, WIDTH, 3, padding=1),
                nn.ReLU(inplace=True),
                nn.Conv2d(WIDTH, 3, 1),
            )
        # Preprocessed batches arrive channels-last (a view of NHWC pixels); oneDNN's
        # convolutions run about 1.7x faster on CPU when the weights match.
        self.to(memory_format=torch.channels_last)  # type: ignore[call-overload]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(_centre_crop(self.body(x), self.out_size), dim=1)


class HneColour(nn.Module):
    """Nearest-palette-colour classifier that really segments synthetic H&E.

    Logits are ``-k * |x - c|^2`` for each palette colour ``c``; the ``|x|^2``
    term is shared by every class, so it is a 1x1 convolution plus softmax.
    """

    def __init__(self, out_size: tuple[int, int] | None = None, sharpness: float = 20.0) -> None:
        super().__init__()
        self.out_size = out_size
        centres = torch.tensor(list(PALETTE.values()), dtype=torch.float32) / 255.0
        self.head = nn.Conv2d(3, len(PALETTE), 1)
        assert self.head.bias is not None
        with torch.no_grad():
            self.head.weight.copy_((2.0 * sharpness * centres).view(len(PALETTE), 3, 1, 1))
            self.head.bias.copy_(-sharpness * (centres**2).sum(dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.head(_centre_crop(x, self.out_size)), dim=1)


_BUILDERS: dict[str, Callable[[tuple[int, int] | None], nn.Module]] = {
    "passthrough": Passthrough,
    "tiny-cnn": TinyCNN,
    "hne-colour": HneColour,
}
_CLASSES: dict[str, tuple[str, ...]] = {
    "passthrough": ("red", "green", "blue"),
    "tiny-cnn": ("class0", "class1", "class2"),
    "hne-colour": tuple(PALETTE),
}

assert tuple(_BUILDERS) == BUILTIN_MODELS, "harness.preprocess.BUILTIN_MODELS is the name list"


def build_model(name: str, out_size: tuple[int, int] | None = None) -> ModelSpec:
    """Build a built-in model by name, in eval mode."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown model {name!r}; built-in models are {', '.join(BUILTIN_MODELS)}")
    module = _BUILDERS[name](out_size).eval()
    return ModelSpec(name=name, module=module, classes=_CLASSES[name])


def load_model(
    model: str | Path | nn.Module,
    out_size: tuple[int, int] | None = None,
    classes: tuple[str, ...] | None = None,
    preprocess: Preprocess | None = None,
) -> ModelSpec:
    """Resolve a built-in name, a model file or an ``nn.Module`` to a spec.

    Model files are ``torch.export`` programs (``.pt2``, the format torch now
    recommends) or TorchScript archives (any other suffix).

    User modules must already produce the configured output patch; class names
    default to ``class0..`` and are filled in by :func:`probe` when unknown.
    """
    pre = preprocess or Preprocess()
    if isinstance(model, nn.Module):
        return ModelSpec("custom", model.eval(), classes or (), pre)
    if str(model) in _BUILDERS:
        spec = build_model(str(model), out_size)
        return ModelSpec(spec.name, spec.module, classes or spec.classes, pre)
    path = Path(model)
    if not path.is_file():
        raise ValueError(
            f"model {str(model)!r} is neither a built-in ({', '.join(BUILTIN_MODELS)}) "
            "nor an existing model file (torch.export .pt2 or TorchScript)"
        )
    module = _load_file(path)
    return ModelSpec(path.stem, module, classes or (), pre)


def _load_file(path: Path) -> nn.Module:
    """Load a ``torch.export`` program (``.pt2``) or a TorchScript file (anything else)."""
    try:
        if path.suffix == ".pt2":
            # Exported programs are traced in eval mode and refuse .eval() itself.
            return torch.export.load(str(path)).module()
        with warnings.catch_warnings():
            # torch 2.13 deprecates TorchScript; users' existing archives must still load.
            warnings.simplefilter("ignore", DeprecationWarning)
            loaded: nn.Module = torch.jit.load(str(path), map_location="cpu")  # type: ignore[no-untyped-call]
        return loaded.eval()
    except Exception as exc:  # torch raises RuntimeError, pickle or zip errors alike
        raise ValueError(f"could not load model file {path}: {exc}") from exc


def probe(spec: ModelSpec, patch: tuple[int, int], device: str = "cpu") -> tuple[int, int, int]:
    """Run one white patch through the model and return its ``(C, ho, wo)``."""
    white = torch.full((1, patch[0], patch[1], 3), 255, dtype=torch.uint8)
    with torch.inference_mode():
        out = spec.module.to(device)(spec.preprocess(white.to(device)))
    if out.ndim != 4 or out.shape[0] != 1:
        raise ValueError(
            f"model output must be (N, C, h, w); a batch of 1 gave shape {tuple(out.shape)}"
        )
    c, ho, wo = (int(s) for s in out.shape[1:])
    return c, ho, wo


def seeded_probabilities(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Deterministic random probabilities (softmax over axis 1); for tests and benchmarks."""
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal(shape).astype(np.float32)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs: np.ndarray = (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
    return probs
