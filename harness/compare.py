"""Compare two segmentation outputs chunk by chunk (bounded memory)."""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from harness.errors import HarnessError
from harness.output import NO_LABEL, open_output, output_array

if TYPE_CHECKING:
    from pathlib import Path


@dataclass(frozen=True)
class Comparison:
    """How far apart two outputs are."""

    shape: tuple[int, ...]
    max_abs_diff: float  # over pixels both cover; NaN-vs-number counts as coverage mismatch
    bitwise_equal: bool
    coverage_mismatch_px: int  # pixels covered in one output and not the other
    label_agreement: float  # share of pixels both cover with the same label
    probabilities_compared: bool = True  # False where an output holds labels only
    labels_only: tuple[str, ...] = ()  # the outputs without probabilities

    def within(self, atol: float) -> bool:
        """Same coverage and probabilities within ``atol`` (labels equal, without them)."""
        if not self.probabilities_compared:
            return self.coverage_mismatch_px == 0 and self.label_agreement == 1.0
        return self.coverage_mismatch_px == 0 and self.max_abs_diff <= atol

    @property
    def compared(self) -> tuple[str, ...]:
        """What the figures cover: probabilities only where both outputs hold them."""
        return ("probabilities", "labels") if self.probabilities_compared else ("labels",)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record (strict JSON: ``max_abs_diff`` is null when not compared)."""
        record = asdict(self)
        if math.isnan(self.max_abs_diff):
            record["max_abs_diff"] = None
        record["compared"] = list(self.compared)
        return record

    def describe(self) -> str:
        """One line saying what was compared, what was not (and why), and the figures."""
        if self.probabilities_compared:
            head = (
                f"compared probabilities and labels: max abs difference "
                f"{self.max_abs_diff:.3g}, probabilities bitwise equal: {self.bitwise_equal}"
            )
        else:
            verb = "holds" if len(self.labels_only) == 1 else "hold"
            head = (f"compared labels only, probabilities NOT compared ("
                    f"{' and '.join(self.labels_only)} {verb} labels only): "
                    f"labels bitwise equal: {self.bitwise_equal}")  # fmt: skip
        return (f"{head}, coverage mismatch {self.coverage_mismatch_px} px, "
                f"label agreement {100 * self.label_agreement:.4f} %")  # fmt: skip


def compare_outputs(a: str | Path, b: str | Path, tile: int = 1024) -> Comparison:
    """Compare the ``probabilities`` and ``labels`` of outputs ``a`` and ``b``, tile by tile.

    Tiles are ``tile`` x ``tile`` pixels (rounded up to whole label chunks), so
    memory is a few tiles' worth, whatever the outputs' size. Coverage is where
    a pixel has values (probabilities not NaN; labels not ``NO_LABEL`` where
    an output holds labels only, when ``max_abs_diff`` is NaN and
    ``probabilities_compared`` is False).
    """
    ga, gb = open_output(a), open_output(b)
    la_all, lb_all = output_array(ga, "labels"), output_array(gb, "labels")
    if la_all.shape != lb_all.shape:
        raise HarnessError(f"outputs differ in shape: {la_all.shape} vs {lb_all.shape}")
    with_probs = "probabilities" in ga and "probabilities" in gb
    pa = output_array(ga, "probabilities") if with_probs else None
    pb = output_array(gb, "probabilities") if with_probs else None
    if pa is not None and pb is not None and pa.shape != pb.shape:
        raise HarnessError(f"outputs differ in shape: {pa.shape} vs {pb.shape}")
    th, tw = (-(-tile // c) * c for c in la_all.chunks[:2])
    worst, equal, mismatch, agree, both = 0.0, True, 0, 0, 0
    h, w = la_all.shape[:2]
    for y, x in itertools.product(range(0, h, th), range(0, w, tw)):
        box = (slice(y, y + th), slice(x, x + tw))
        la, lb = np.asarray(la_all[box]), np.asarray(lb_all[box])
        if pa is not None and pb is not None:
            xa, xb = np.asarray(pa[box]), np.asarray(pb[box])
            equal = equal and np.array_equal(xa, xb, equal_nan=True)
            ok = ~(np.isnan(xa) | np.isnan(xb))
            if ok.any():
                worst = max(worst, float(np.abs(xa[ok].astype(np.float64) - xb[ok]).max()))
            na, nb = np.isnan(xa).all(axis=-1), np.isnan(xb).all(axis=-1)
        else:
            equal = equal and np.array_equal(la, lb)
            na, nb = la == NO_LABEL, lb == NO_LABEL
        mismatch += int(np.count_nonzero(na != nb))
        covered = (la != NO_LABEL) & (lb != NO_LABEL)
        both += int(np.count_nonzero(covered))
        agree += int(np.count_nonzero(covered & (la == lb)))
    return Comparison(
        shape=tuple(la_all.shape if pa is None else pa.shape),
        max_abs_diff=worst if with_probs else float("nan"),
        bitwise_equal=equal,
        coverage_mismatch_px=mismatch,
        label_agreement=agree / both if both else 1.0,
        probabilities_compared=with_probs,
        labels_only=tuple(str(p) for p, g in ((a, ga), (b, gb)) if "probabilities" not in g),
    )
