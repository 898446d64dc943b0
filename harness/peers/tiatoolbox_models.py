"""Our built-in models wrapped for TIAToolbox's model interface (``ModelABC``).

Imports only numpy, torch, TIAToolbox and :mod:`harness.models`, so it runs in
the peer virtualenv built by ``scripts/peer_env.sh tiatoolbox``. The wrapped
module is the very one :func:`harness.models.build_model` returns (seeded, so
the weights are identical) and the input scaling is our :class:`Preprocess`
(``x / 255``), applied inside :meth:`HarnessModel.infer_batch` exactly as our
engine applies it.

TIAToolbox's engine feeds ``infer_batch`` a uint8 NHWC batch and expects
NHWC float probabilities back; ``postproc`` turns the merged probabilities
into labels by argmax over the class axis.
"""

from __future__ import annotations

import numpy as np
import torch
from tiatoolbox.models.models_abc import ModelABC

from harness.models import BUILTIN_MODELS, ModelSpec, build_model


class HarnessModel(ModelABC):
    """A :class:`harness.models.ModelSpec` presented as a TIAToolbox model.

    Parameters
    ----------
    spec
        The built model, its class names and its preprocessing.
    """

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        self.net = spec.module
        self.preprocess = spec.preprocess
        self.class_dict = dict(enumerate(spec.classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Probabilities ``(N, C, h, w)`` for a preprocessed ``(N, 3, H, W)`` batch."""
        return self.net(x)

    @staticmethod
    def infer_batch(
        model: torch.nn.Module, batch_data: np.ndarray | torch.Tensor, *, device: str
    ) -> np.ndarray:
        """Run one uint8 NHWC batch and return float32 NHWC probabilities.

        ``model`` may arrive wrapped in ``DataParallel``; the preprocessing is
        taken from the unwrapped :class:`HarnessModel`.
        """
        inner = model.module if isinstance(model, torch.nn.DataParallel) else model
        batch = torch.as_tensor(batch_data)
        model.eval()
        with torch.inference_mode():
            x = inner.preprocess(batch.to(device))
            probs = model(x)
        return probs.permute(0, 2, 3, 1).contiguous().cpu().numpy()

    @staticmethod
    def preproc(image: np.ndarray) -> np.ndarray:
        """Leave patches as uint8; scaling happens in :meth:`infer_batch`."""
        return image

    @staticmethod
    def postproc(image: np.ndarray) -> np.ndarray:
        """Labels from probabilities: argmax over the last (class) axis."""
        return np.argmax(image, axis=-1)


def build_tiatoolbox_model(name: str, out_size: tuple[int, int] | None = None) -> HarnessModel:
    """Build built-in model ``name`` (see :data:`BUILTIN_MODELS`) for TIAToolbox.

    Parameters
    ----------
    name
        ``passthrough``, ``tiny-cnn`` or ``hne-colour``.
    out_size
        Output patch ``(h, w)`` when smaller than the input patch (centre crop).
    """
    if name not in BUILTIN_MODELS:
        raise ValueError(f"unknown model {name!r}; built-in models are {', '.join(BUILTIN_MODELS)}")
    return HarnessModel(build_model(name, out_size)).eval()
