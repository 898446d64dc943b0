"""The patch plan: grid, tissue filtering, processing order and chunk bookkeeping.

Everything the streaming merger needs to know is decided here, before any
inference runs: which patches run and in what order, which output chunks each
patch touches, how many patches touch each chunk (``expected``), and when each
chunk is next used (the CSR table ``use_ptr``/``use_patch``), which makes
optimal (furthest-next-use) eviction possible. The vectorised grid arithmetic
behind these tables lives in :mod:`harness._plangrid`.

Grid convention
---------------
Coordinates are output pixels at the processing resolution ``mpp``. Output
patches start at ``0, s, 2s, ...`` along each axis until the slide is covered;
the last one may extend past the slide edge, where the input is padded with
white and the output is cropped. The output patch is centred in the input
patch, so input boxes start ``(patch - output_patch) // 2`` before the output
box (negative coordinates read as white padding).

Order
-----
Column strips of ``strip_chunks`` chunk columns, raster order inside a strip.
A patch whose output crosses a strip edge runs once in each strip it touches
and adds only into that strip's chunks (halo patches), so every chunk
receives its patches in raster order whatever the strip width: streaming
results equal the one-strip dense reference bitwise, and strips never spill.
When the whole slide width fits the budget there is one strip.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Literal

import numpy as np

from harness._plangrid import _block_entries, _keep_pairs, _Layout, _owned, _pairs, _uses
from harness._plangrid import grid_count as grid_count
from harness._plangrid import grid_origins as grid_origins
from harness.errors import ConfigError

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from harness.slides.base import Box

Pair = tuple[int, int]
Window = tuple[int, int, int, int]  # (y0, y1, x0, x1) in output pixels
Blend = Literal["mean", "gaussian"]
Order = Literal["strips", "raster"]
ACCUMULATOR_BYTES = 4  # float32 sums and float32 weights
BAND_SHARE = 0.9  # share of the budget the raster band of a strip may use; rest is slack


def _pair(value: int | Pair, name: str) -> Pair:
    hw = (value, value) if isinstance(value, int) else tuple(value)
    if len(hw) != 2 or any(not isinstance(v, int | np.integer) or v < 1 for v in hw):
        raise ConfigError(f"{name} must be a positive integer or (height, width), got {value!r}")
    return int(hw[0]), int(hw[1])


@dataclass(frozen=True)
class PlanConfig:
    """Patch geometry at the processing resolution; validated on construction.

    Parameters
    ----------
    patch
        Input patch ``(h, w)`` (or one int for square) fed to the model.
    stride
        Step between patch origins; must not exceed the output patch (gaps).
    mpp
        Processing resolution in microns per pixel; ``None`` means level 0.
    output_patch
        Model output patch, centred in the input patch; defaults to ``patch``.
    chunk
        Output chunk ``(h, w)``: the unit of merging, writing and eviction.
    blend
        ``"mean"`` averages overlapping outputs; ``"gaussian"`` weights each
        output by a 2-D gaussian window of ``sigma`` x output patch size.
    order
        ``"strips"`` (default) sizes column strips to the budget and re-runs
        halo patches, so nothing spills; ``"raster"`` runs every patch once in
        raster order and spills partial chunks when the band does not fit
        (worth it only when the model is far dearer than disk traffic).
    """

    patch: int | Pair = 256
    stride: int | Pair = 128
    mpp: float | None = 0.5
    output_patch: int | Pair | None = None
    chunk: int | Pair = 256
    blend: Blend = "mean"
    sigma: float = 0.25
    order: Order = "strips"

    def __post_init__(self) -> None:
        patch = _pair(self.patch, "patch")
        out = patch if self.output_patch is None else _pair(self.output_patch, "output_patch")
        stride = _pair(self.stride, "stride")
        chunk = _pair(self.chunk, "chunk")
        if out[0] > patch[0] or out[1] > patch[1]:
            raise ConfigError(f"output_patch {out} is larger than the input patch {patch}")
        if stride[0] > out[0] or stride[1] > out[1]:
            raise ConfigError(
                f"stride {stride} is larger than the output patch {out}: it would leave "
                "unsegmented gaps; use a stride of at most the output patch size"
            )
        if self.mpp is not None and not (math.isfinite(self.mpp) and self.mpp > 0):
            raise ConfigError(f"mpp must be a positive number, got {self.mpp}")
        if self.blend not in ("mean", "gaussian"):
            raise ConfigError(f"blend must be 'mean' or 'gaussian', got {self.blend!r}")
        if self.order not in ("strips", "raster"):
            raise ConfigError(f"order must be 'strips' or 'raster', got {self.order!r}")
        if not 0 < self.sigma <= 10:
            raise ConfigError(f"sigma must be in (0, 10], got {self.sigma}")
        for name, value in (("patch", patch), ("output_patch", out), ("stride", stride)):
            object.__setattr__(self, name, value)
        object.__setattr__(self, "chunk", chunk)

    @property
    def patch_hw(self) -> Pair:
        """Input patch ``(h, w)``."""
        return _pair(self.patch, "patch")

    @property
    def out_hw(self) -> Pair:
        """Output patch ``(h, w)``."""
        return _pair(self.output_patch if self.output_patch is not None else self.patch, "out")

    @property
    def stride_hw(self) -> Pair:
        """Stride ``(h, w)``."""
        return _pair(self.stride, "stride")

    @property
    def chunk_hw(self) -> Pair:
        """Output chunk ``(h, w)``."""
        return _pair(self.chunk, "chunk")

    def to_dict(self) -> dict[str, object]:
        """JSON-ready parameters, as recorded in the output attributes."""
        return {
            "patch": list(self.patch_hw),
            "output_patch": list(self.out_hw),
            "stride": list(self.stride_hw),
            "chunk": list(self.chunk_hw),
            "mpp": self.mpp,
            "blend": self.blend,
            "sigma": self.sigma,
            "order": self.order,
        }


@dataclass(frozen=True)
class PlanSummary:
    """What a run will cost, stated before inference."""

    patches: int
    patch_runs: int
    patches_masked_out: int
    chunks_touched: int
    chunk_grid: Pair
    chunk_bytes: int
    strips: int
    budget_bytes: int
    expected_peak_live_bytes: int
    expected_spill_bytes: int

    def __str__(self) -> str:
        mib = 2**20
        return (
            f"{self.patches} patches ({self.patch_runs} runs with strip halos, "
            f"{self.patches_masked_out} masked out), "
            f"{self.chunks_touched}/{self.chunk_grid[0] * self.chunk_grid[1]} chunks touched, "
            f"{self.strips} strip(s); budget {self.budget_bytes / mib:.1f} MiB, expected peak "
            f"live {self.expected_peak_live_bytes / mib:.1f} MiB, expected spill "
            f"{self.expected_spill_bytes / mib:.1f} MiB"
        )


@dataclass(frozen=True)
class Region:
    """A block of whole output chunks: chunk rows ``r0:r1``, chunk columns ``c0:c1``.

    The unit of work (:func:`harness.blocks.run_block`): a block runs, in plan
    order, every patch whose output touches one of its chunks and writes only
    its own chunks, so any partition gives the same additions per chunk.
    """

    r0: int
    r1: int
    c0: int
    c1: int

    def __post_init__(self) -> None:
        if not (0 <= self.r0 < self.r1 and 0 <= self.c0 < self.c1):
            raise ConfigError(f"empty or negative block {self}")

    @classmethod
    def whole(cls, grid: Pair) -> Region:
        """Every chunk of a ``(rows, cols)`` grid."""
        return cls(0, grid[0], 0, grid[1])

    @property
    def key(self) -> str:
        """A file-name-safe name, ``r0-r1_c0-c1``."""
        return f"{self.r0}-{self.r1}_{self.c0}-{self.c1}"

    @property
    def n_chunks(self) -> int:
        """Chunks in the block."""
        return (self.r1 - self.r0) * (self.c1 - self.c0)

    def window(self, chunk_hw: Pair, out_shape: Pair) -> Window:
        """``(y0, y1, x0, x1)`` in output pixels, clipped to the output."""
        (ch, cw), (h, w) = chunk_hw, out_shape
        return self.r0 * ch, min(self.r1 * ch, h), self.c0 * cw, min(self.c1 * cw, w)

    def mask(self, grid: Pair) -> NDArray[np.bool_]:
        """Row-major boolean over the chunk grid: True inside the block."""
        m = np.zeros(grid, dtype=bool)
        m[self.r0 : self.r1, self.c0 : self.c1] = True
        return m.ravel()

    def to_list(self) -> list[int]:
        """``[r0, r1, c0, c1]`` (JSON)."""
        return [self.r0, self.r1, self.c0, self.c1]


@dataclass(frozen=True, eq=False)
class Plan:
    """A fixed processing plan for one slide (see the module docstring).

    Only what a run needs for its whole length is held: the entries' origins
    and each chunk's patch count (about 2.3 MB at 64k x 64k). Which chunks an
    entry touches is arithmetic; the next-use table that eviction needs is
    built on first use (:attr:`uses`), which only raster order calls for.
    """

    config: PlanConfig
    slide_shape: Pair
    slide_mpp: float
    out_shape: Pair
    channels: int
    origins: NDArray[np.int32]  # (n, 2) output-box origins (y, x), in processing order
    strip_starts: NDArray[np.int64]  # entries of strip s: strip_starts[s]:strip_starts[s+1]
    expected: NDArray[np.int32]  # patches touching each chunk id (row-major chunk grid)
    strip_chunks: int
    n_unique: int  # distinct grid patches (entries minus halo re-runs)
    patches_masked_out: int = 0
    window: NDArray[np.float32] | None = field(default=None, repr=False)
    region: Region | None = None  # the block planned (None: the whole output)
    todo: NDArray[np.bool_] | None = field(default=None, repr=False)  # chunks to write
    patches_done: int = 0  # kept patches skipped because all their chunks are final
    strip_col0: int = 0  # chunk column where strip 0 starts (the block's first column)
    owned_kept: int = 0  # kept patches whose origin chunk is in the block (progress units)

    @property
    def n_patches(self) -> int:
        """Number of patch runs, halo patches at strip edges counted once per strip."""
        return int(self.origins.shape[0])

    @property
    def chunk_grid(self) -> Pair:
        """Chunk rows and columns of the output."""
        ch, cw = self.config.chunk_hw
        return -(-self.out_shape[0] // ch), -(-self.out_shape[1] // cw)

    @property
    def scale(self) -> float:
        """Level-0 pixels per output pixel."""
        return (self.config.mpp or self.slide_mpp) / self.slide_mpp

    def chunks_of(self, i: int) -> list[int]:
        """Chunk ids entry ``i`` adds into (its strip's share), row-major."""
        (oh, ow), (ch, cw) = self.config.out_hw, self.config.chunk_hw
        (h, w), ncols = self.out_shape, self.chunk_grid[1]
        y, x = (int(v) for v in self.origins[i])
        s = int(np.searchsorted(self.strip_starts, i, side="right")) - 1
        first = self.strip_col0 + s * self.strip_chunks
        lo = max(x // cw, first)
        hi = min((min(x + ow, w) - 1) // cw, first + self.strip_chunks - 1)
        rows = range(y // ch, (min(y + oh, h) - 1) // ch + 1)
        ids = [r * ncols + c for r in rows for c in range(lo, hi + 1)]
        return ids if self.todo is None else [c for c in ids if self.todo[c]]

    def pairs(self) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
        """CSR of every entry's chunks (``ptr``, ``chunk``), vectorised; built on demand."""
        strip = np.repeat(np.arange(len(self.strip_starts) - 1), np.diff(self.strip_starts))
        ptr, chunk = _pairs(self.origins.astype(np.int64), strip, self.strip_chunks,
                            self.strip_col0, self.config, self.out_shape)  # fmt: skip
        if self.todo is None:
            return ptr, chunk
        _, ptr, chunk = _keep_pairs(ptr, chunk, self.todo)
        return ptr, chunk

    @cached_property
    def uses(self) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
        """Next-use table: chunk ``c`` is used by entries ``patch[ptr[c]:ptr[c+1]]``."""
        ptr, chunk = self.pairs()
        return _uses(ptr, chunk, self.expected)

    def chunk_box(self, c: int) -> tuple[int, int, int, int]:
        """``(y0, y1, x0, x1)`` of chunk ``c`` in output pixels, clipped to the output."""
        ch, cw = self.config.chunk_hw
        r, col = divmod(int(c), self.chunk_grid[1])
        y0, x0 = r * ch, col * cw
        return y0, min(y0 + ch, self.out_shape[0]), x0, min(x0 + cw, self.out_shape[1])

    def chunk_nbytes(self, c: int) -> int:
        """Accumulator bytes (sums for every channel + weights) of chunk ``c``."""
        y0, y1, x0, x1 = self.chunk_box(c)
        return (y1 - y0) * (x1 - x0) * (self.channels + 1) * ACCUMULATOR_BYTES

    def read_band(self) -> Pair:
        """Level-0 ``(height, width)`` of slide the reads sweep at any moment.

        Consecutive patch rows of a strip overlap, so the input rows of the
        current and the next patch row, across the widest strip plus the patch
        margin, are what a read cache must hold to decode every tile once.
        """
        (ph, pw), (sh, _), cw = self.config.patch_hw, self.config.stride_hw, self.config.chunk_hw[1]
        width = min(self.strip_chunks * cw, self.out_shape[1]) + pw
        return math.ceil((ph + sh) * self.scale), math.ceil(width * self.scale)

    def input_box(self, i: int) -> Box:
        """Level-0 box of patch ``i``'s input (may extend past the slide: padded)."""
        (ph, pw), (oh, ow) = self.config.patch_hw, self.config.out_hw
        y, x = (int(v) for v in self.origins[i])
        f = self.scale
        y_in, x_in = y - (ph - oh) // 2, x - (pw - ow) // 2
        return (math.floor(x_in * f), math.floor(y_in * f), round(pw * f), round(ph * f))

    def summary(self, budget: int) -> PlanSummary:
        """Costs of running this plan under ``budget`` bytes (a dry run of the merger)."""
        from harness.merge import ChunkLedger

        ledger = ChunkLedger(self, budget, dry_run=True)
        for i in range(self.n_patches):
            for c in self.chunks_of(i):
                ledger.touch(c)
        rows, cols = self.chunk_grid
        return PlanSummary(
            patches=self.n_unique,
            patch_runs=self.n_patches,
            patches_masked_out=self.patches_masked_out,
            chunks_touched=int(np.count_nonzero(self.expected)),
            chunk_grid=(rows, cols),
            chunk_bytes=self.chunk_nbytes(0),
            strips=-(-cols // self.strip_chunks),
            budget_bytes=budget,
            expected_peak_live_bytes=ledger.peak_live_bytes,
            expected_spill_bytes=ledger.spill_bytes,
        )


def output_shape(slide_shape: Pair, slide_mpp: float, mpp: float | None) -> Pair:
    """Output ``(height, width)`` at the processing resolution (partial pixels round up)."""
    if mpp is None:
        return slide_shape
    f = slide_mpp / mpp
    return tuple(max(1, math.ceil(s * f - 1e-9)) for s in slide_shape)  # type: ignore[return-value]


def chunk_span(config: PlanConfig) -> Pair:
    """Most chunk rows and columns one output patch can touch."""
    (oh, ow), (ch, cw) = config.out_hw, config.chunk_hw
    return -(-(oh - 1) // ch) + 1, -(-(ow - 1) // cw) + 1


def min_budget(config: PlanConfig, channels: int) -> int:
    """Smallest budget that holds every chunk one patch touches at once."""
    rows, cols = chunk_span(config)
    ch, cw = config.chunk_hw
    return rows * cols * ch * cw * (channels + 1) * ACCUMULATOR_BYTES


def strip_chunks_for(
    config: PlanConfig, out_shape: Pair, channels: int, budget: int, ncols: int | None = None
) -> int:
    """Widest strip (in chunk columns, at most ``ncols``) whose raster band fits the budget.

    The band may use ``BAND_SHARE`` of the budget; the rest is slack.
    """
    rows = chunk_span(config)[0]
    ch, cw = config.chunk_hw
    ncols = -(-out_shape[1] // cw) if ncols is None else ncols
    # Inside a strip, the live band is at most `rows` chunk rows of the strip's width.
    column_bytes = rows * ch * cw * (channels + 1) * ACCUMULATOR_BYTES
    return max(1, min(ncols, int(budget * BAND_SHARE // column_bytes)))


def gaussian_window(out_hw: Pair, sigma: float) -> NDArray[np.float32]:
    """Separable 2-D gaussian weights, ``sigma`` a fraction of each side, peak 1."""
    axes = []
    for n in out_hw:
        t = (np.arange(n, dtype=np.float64) - (n - 1) / 2) / (sigma * n)
        axes.append(np.exp(-0.5 * t * t))
    return np.outer(axes[0], axes[1]).astype(np.float32)


def make_plan(
    slide_shape: Pair,
    slide_mpp: float,
    config: PlanConfig,
    channels: int,
    budget: int,
    keep: NDArray[np.bool_] | None = None,
    strips: bool = True,
    *,
    tissue: NDArray[np.bool_] | None = None,
    region: Region | None = None,
    done: NDArray[np.bool_] | None = None,
) -> Plan:
    """Build the plan of one block (default: the whole output).

    ``keep`` selects raster-order patches of the whole grid (for callers that
    filtered it themselves); ``tissue`` is a mask (:mod:`harness.mask`) applied
    to the block's own patches. ``region`` plans only the chunks of that block
    and ``done`` (row-major booleans over the chunk grid) skips chunks already
    final, for resume: each remaining chunk still receives every one of its
    patches in raster order, so the result is bitwise the uninterrupted one.

    Origins are int32: 2**31 pixels is far beyond a 200k x 200k slide.
    ``strips=False`` forces one strip (plain raster order, no halo entries),
    as the dense reference uses; per chunk, the additions are the same.
    """
    layout = _layout(slide_shape, slide_mpp, config, channels, budget, keep, region, strips)
    entries = _block_entries(config, layout, keep, tissue, done)
    window = gaussian_window(config.out_hw, config.sigma) if config.blend == "gaussian" else None
    return Plan(
        config=config, slide_shape=slide_shape, slide_mpp=slide_mpp, out_shape=layout.out_shape,
        channels=channels, origins=entries.origins, strip_starts=entries.strip_starts,
        expected=entries.expected, strip_chunks=layout.width, n_unique=entries.n_unique,
        patches_masked_out=entries.masked_out, window=window, region=region, todo=entries.todo,
        patches_done=entries.patches_done, strip_col0=layout.block.c0, owned_kept=entries.owned,
    )  # fmt: skip


def _layout(
    slide_shape: Pair,
    slide_mpp: float,
    config: PlanConfig,
    channels: int,
    budget: int,
    keep: NDArray[np.bool_] | None,
    region: Region | None,
    strips: bool,
) -> _Layout:
    """The output and the block :func:`make_plan` plans, once its arguments pass."""
    _check_budget(config, channels, budget)
    out_shape = output_shape(slide_shape, slide_mpp, config.mpp)
    grid = (-(-out_shape[0] // config.chunk_hw[0]), -(-out_shape[1] // config.chunk_hw[1]))
    block = region or Region.whole(grid)
    if keep is not None and region is not None:
        raise ConfigError("keep selects patches of the whole grid; use tissue= with a region")
    window = None if region is None else block.window(config.chunk_hw, out_shape)
    one_strip = not strips or config.order == "raster"
    cols = block.c1 - block.c0
    width = cols if one_strip else strip_chunks_for(config, out_shape, channels, budget, cols)
    return _Layout(out_shape, grid, block, region, window, width)


def _check_budget(config: PlanConfig, channels: int, budget: int) -> None:
    """Refuse a budget that cannot hold the chunks one patch touches."""
    if budget < (need := min_budget(config, channels)):
        raise ConfigError(
            f"budget {budget} bytes is below the {need} bytes that the chunks one patch touches "
            f"need ({config.chunk_hw} chunks x {channels} classes); raise the budget or use a "
            "smaller chunk"
        )


def owned_entries(plan: Plan) -> NDArray[np.bool_]:
    """Entries that count as their patch's progress: in the owning block, in the strip
    holding the patch's origin (so each kept patch counts once over any partition)."""
    block = plan.region or Region.whole(plan.chunk_grid)
    origins = plan.origins.astype(np.int64)
    owned = _owned(origins, plan.config.chunk_hw, block)
    strip = np.repeat(np.arange(len(plan.strip_starts) - 1), np.diff(plan.strip_starts))
    home = (origins[:, 1] // plan.config.chunk_hw[1] - plan.strip_col0) // plan.strip_chunks
    return np.asarray(owned & (strip == home), dtype=bool)
