"""The model side of a run: load, probe, and run batches with their outputs checked.

A model's output is checked, not trusted. After the optional activation
(:class:`~harness.config.Activation`), every batch must be a real
``(N, C, oh, ow)`` tensor of finite values, and with ``activation=none`` its
values must be probabilities: in ``[0, 1]`` within the tolerance
(``check="range"``), and with ``check="simplex"`` summing to 1 over the
classes. Anything else -- logits stored as probabilities, uint8 x 255, a
tuple, zero channels, a model that raises on batch 5, a ``torch.export``
program traced with a fixed batch size -- stops the run with one line naming
the model, the batch and what was wrong.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from harness.config import Activation
from harness.errors import ConfigError, HarnessError
from harness.models import ModelSpec, load_model

if TYPE_CHECKING:
    from pathlib import Path

    from numpy.typing import NDArray
    from torch import nn

    from harness.config import RunConfig
    from harness.plan import PlanConfig

DYNAMIC_BATCH_HINT = (
    "export it with a dynamic batch dimension: torch.export.export(model, (x,), "
    "dynamic_shapes=({0: torch.export.Dim('batch')},))"
)


class ModelOutputError(HarnessError):
    """The model failed, or produced output the plan cannot use."""


def load(run: RunConfig, model: str | Path | nn.Module | ModelSpec | None = None) -> ModelSpec:
    """The run's model as a :class:`ModelSpec` (``model`` overrides ``run.model``)."""
    if isinstance(model, ModelSpec):
        return model
    try:
        return load_model(model if model is not None else run.model, out_size=run.plan.out_hw,
                          classes=run.classes, preprocess=run.preprocess)  # fmt: skip
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc


def cached(run: RunConfig) -> tuple[ModelSpec, int]:
    """Load and prepare ``run``'s model once per process (dask workers run many blocks)."""
    key = (run.model, run.plan.patch_hw, run.plan.out_hw, run.device, run.classes, run.preprocess)
    if key not in _MODELS:
        if len(_MODELS) >= 2:
            _MODELS.clear()
        spec = load(run)
        _MODELS[key] = spec, prepare(spec, run.plan, run.device)
    return _MODELS[key]


_MODELS: dict[tuple[Any, ...], tuple[ModelSpec, int]] = {}


def prepare(spec: ModelSpec, config: PlanConfig, device: str) -> int:
    """Move the model to ``device``, probe one patch, return its channel count."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but CUDA is not available here")
    spec.module.to(device)
    white = torch.full((1, *config.patch_hw, 3), 255, dtype=torch.uint8, device=device)
    with torch.inference_mode():
        out = _forward(spec, spec.preprocess(white), 0)
    if out.ndim != 4 or out.shape[0] != 1:
        raise ModelOutputError(
            f"model {spec.name}: output must be (N, C, h, w); a batch of 1 gave {tuple(out.shape)}"
        )
    channels, ho, wo = (int(s) for s in out.shape[1:])
    if channels < 1:
        raise ModelOutputError(f"model {spec.name} returned 0 channels")
    if channels > 255:
        raise ModelOutputError(f"model {spec.name} returned {channels} channels; at most 255")
    if (ho, wo) != config.out_hw:
        raise ModelOutputError(
            f"model {spec.name} outputs {ho}x{wo} patches for {config.patch_hw} inputs, but the "
            f"plan expects output_patch {config.out_hw}; set output_patch to match the model"
        )
    if spec.classes and len(spec.classes) != channels:
        raise ModelOutputError(
            f"model {spec.name} outputs {channels} channels but has {len(spec.classes)} classes"
        )
    return channels


def _forward(spec: ModelSpec, x: torch.Tensor, batch: int) -> torch.Tensor:
    """Call the model; its own failures become one line naming the model and batch."""
    try:
        y = spec.module(x)
    except Exception as exc:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        hint = ""
        if "guard" in str(exc).lower() or "specializ" in str(exc).lower():
            hint = f"; the program was traced with a fixed batch size: {DYNAMIC_BATCH_HINT}"
        raise ModelOutputError(
            f"model {spec.name} failed on batch {batch} of shape {tuple(x.shape)}: "
            f"{type(exc).__name__}: {text[:200]}{hint}"
        ) from exc
    if not isinstance(y, torch.Tensor):
        raise ModelOutputError(
            f"model {spec.name} returned a {type(y).__name__} on batch {batch}; it must return "
            "one tensor (N, C, h, w) (wrap it to pick the segmentation output)"
        )
    if y.is_complex():
        raise ModelOutputError(f"model {spec.name} returned complex values on batch {batch}")
    return y


def infer(
    spec: ModelSpec, pixels: torch.Tensor, run: RunConfig, channels: int, batch: int
) -> NDArray[np.float32]:
    """One batch through the model, activated and checked (see the module docstring)."""
    n = pixels.shape[0]
    with torch.inference_mode():
        x = _padded(pixels, run.batch_size).to(run.device, non_blocking=True)
        # Float batches come preprocessed by the reader (channels-last float32).
        x = spec.preprocess(x) if x.dtype == torch.uint8 else x.permute(0, 3, 1, 2)
        y = _forward(spec, x, batch)[:n]
        expected = (n, channels, *run.plan.out_hw)
        if tuple(y.shape) != expected:
            raise ModelOutputError(
                f"model {spec.name} returned {tuple(y.shape)} on batch {batch}, expected {expected}"
            )
        if run.activation is Activation.SOFTMAX:
            y = torch.softmax(y.to(torch.float32), dim=1)
        elif run.activation is Activation.SIGMOID:
            y = torch.sigmoid(y.to(torch.float32))
        out = np.asarray(y.to(torch.float32).cpu().numpy())
    check_probabilities(out, spec.name, batch, run)
    return out


def _padded(pixels: torch.Tensor, batch_size: int) -> torch.Tensor:
    """A short batch padded to ``batch_size`` with copies of its last patch.

    oneDNN picks its convolution kernel by batch size (measured with tiny-cnn at
    64 px, one thread: batches of 2-15 agree bitwise, 1 and 16+ differ by 6e-8),
    so the same patch could come out differently in the short last batch of a
    block, a strip or a resumed run. At a fixed batch size the result of a patch
    does not depend on its neighbours in the batch, so padding every batch to
    the configured size makes each patch's output independent of the partition.
    """
    n = pixels.shape[0]
    if n >= batch_size:
        return pixels
    return torch.cat([pixels, pixels[-1:].expand(batch_size - n, *pixels.shape[1:])])


def check_probabilities(out: NDArray[np.float32], name: str, batch: int, run: RunConfig) -> None:
    """Finite everywhere; with ``activation=none``, probabilities within the tolerance."""
    # A sum is NaN/inf when any element is: one reduction costs a fraction of an
    # elementwise isfinite pass, which runs only to rule out a float32 overflow.
    if not np.isfinite(out.sum()) and not np.isfinite(out).all():
        raise ModelOutputError(f"model {name} returned NaN or inf on batch {batch}")
    if run.activation is not Activation.NONE or run.check == "off":
        return
    tol = run.tolerance
    lo, hi = float(out.min()), float(out.max())
    if lo < -tol or hi > 1 + tol:
        raise ModelOutputError(
            f"model {name} returned values in [{lo:.4g}, {hi:.4g}] on batch {batch}, not "
            "probabilities in [0, 1]; if it returns logits pass --activation softmax or "
            "sigmoid, or --check off to store its values as they are"
        )
    if run.check == "simplex":
        sums = out.sum(axis=1, dtype=np.float64)
        worst = float(np.abs(sums - 1.0).max())
        if worst > tol:
            raise ModelOutputError(
                f"model {name}'s channels sum to 1 +- {worst:.3g} on batch {batch} (tolerance "
                f"{tol:g}); pass --activation softmax for logits or --check range"
            )


def describe(spec: ModelSpec) -> dict[str, Any]:
    """Name and parameter count (for the result record)."""
    return {"name": spec.name, "parameters": sum(p.numel() for p in spec.module.parameters())}
