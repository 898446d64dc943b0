"""The synthetic H&E palette, shared by the slide generator and the ``hne-colour`` model.

Kept free of torch and numpy imports so slide code can use it without loading torch.
"""

from __future__ import annotations

#: Mean RGB colours of background (glass), stroma and nuclei.
PALETTE: dict[str, tuple[int, int, int]] = {
    "background": (242, 240, 245),
    "stroma": (225, 140, 180),
    "nuclei": (85, 50, 135),
}
