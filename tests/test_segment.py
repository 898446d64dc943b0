"""End-to-end segmentation into zarr: equality, errors, interruption, masks, workers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from harness.compare import compare_outputs
from harness.errors import ConfigError
from harness.loader import READERS_ENV
from harness.models import Preprocess
from harness.output import NO_LABEL, OutputError, open_output
from harness.plan import PlanConfig, min_budget
from harness.segment import ModelOutputError, segment

CFG = PlanConfig(patch=48, output_patch=32, stride=16, chunk=32, mpp=0.5)


def _run(slide, out: Path, **kw):
    kw.setdefault("progress", False)
    return segment(slide, kw.pop("model", "passthrough"), kw.pop("config", CFG), out, **kw)


@pytest.mark.parametrize("model", ["passthrough", "tiny-cnn", "hne-colour"])
@pytest.mark.parametrize(
    "budget_factor", [pytest.param(1, id="tightest"), pytest.param(1000, id="all-fits")]
)
@pytest.mark.parametrize("order", ["strips", "raster"])
def test_streaming_output_equals_dense_bitwise(noise_slide, tmp_path, model, budget_factor, order):
    # GIVEN a budget from the minimum to 'everything fits'
    cfg = PlanConfig(patch=48, output_patch=32, stride=16, chunk=32, mpp=0.5, order=order)
    budget = min_budget(cfg, 3) * budget_factor
    # WHEN both engines segment the same slide
    s = _run(noise_slide, tmp_path / "s.zarr", model=model, config=cfg, merge_budget=budget)
    d = _run(noise_slide, tmp_path / "d.zarr", model=model, config=cfg, engine="dense")
    # THEN the outputs are bitwise equal and the budget held
    cmp = compare_outputs(s.output, d.output)
    assert cmp.bitwise_equal and cmp.coverage_mismatch_px == 0
    assert s.peak_live_bytes <= budget
    assert s.chunks_written == d.chunks_written


def test_output_layout_and_attributes(noise_slide, tmp_path) -> None:
    result = _run(noise_slide, tmp_path / "o.zarr", model="hne-colour")
    group = open_output(result.output)
    meta = group.attrs["wsi_harness"]
    assert group["probabilities"].shape == (300, 420, 3)
    assert group["probabilities"].chunks == (32, 32, 3)
    assert group["labels"].dtype == np.uint8
    assert meta["complete"] is True
    assert meta["classes"] == ["background", "stroma", "nuclei"]
    assert meta["plan"]["stride"] == [16, 16] and meta["mpp"] == 0.5
    assert meta["model"] == "hne-colour" and "version" in meta
    probs = group["probabilities"][:]
    assert np.allclose(probs.sum(axis=2), 1.0, atol=1e-5)


def test_masked_background_is_never_written(noise_slide, tmp_path) -> None:
    # GIVEN a mask with tissue only in the top-left corner
    mask = np.zeros((30, 42), bool)
    mask[:3, :4] = True
    # WHEN segmenting with it
    result = _run(noise_slide, tmp_path / "m.zarr", mask=mask)
    # THEN far chunks are absent from the store and read as NaN / no-label
    group = open_output(result.output)
    chunk_files = list(Path(result.output, "labels", "c").rglob("*"))
    assert 0 < len([f for f in chunk_files if f.is_file()]) < 10
    assert np.isnan(group["probabilities"][200:, 300:]).all()
    assert (group["labels"][200:, 300:] == NO_LABEL).all()
    assert result.patches_masked_out > 0


@pytest.mark.parametrize("readers", ["process", "thread"])
@pytest.mark.parametrize("workers", [1, 2])
def test_workers_give_the_same_output(noise_slide, tmp_path, monkeypatch, readers, workers):
    # GIVEN an in-memory slide (pickled to reader processes, shared with reader threads)
    a = _run(noise_slide, tmp_path / "a.zarr", workers=0, model="tiny-cnn")
    # WHEN reader threads or processes read it
    monkeypatch.setenv(READERS_ENV, readers)
    b = _run(noise_slide, tmp_path / "b.zarr", workers=workers, model="tiny-cnn")
    # THEN the output is the inline one, bitwise
    assert compare_outputs(a.output, b.output).bitwise_equal


def test_existing_output_is_refused_then_replaced(noise_slide, tmp_path) -> None:
    out = tmp_path / "o.zarr"
    _run(noise_slide, out)
    with pytest.raises(OutputError, match="overwrite=True"):
        _run(noise_slide, out)
    assert _run(noise_slide, out, overwrite=True).chunks_written > 0


def test_a_folder_that_is_not_zarr_is_never_deleted(noise_slide, tmp_path) -> None:
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("x")
    with pytest.raises(OutputError, match="not a zarr store"):
        _run(noise_slide, precious, overwrite=True)
    assert (precious / "thesis.tex").exists()


class _Broken(torch.nn.Module):
    """Correct for the probes (a patch, then one full batch for the budget), then fails."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode, self.calls = mode, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        out = torch.full((x.shape[0], 3, 32, 32), 1 / 3)
        failing = self.calls > 2
        if failing and self.mode == "nan":
            out[0, 0, 0, 0] = float("nan")
        if failing and self.mode == "shape":
            out = out[:, :2]
        if failing and self.mode == "interrupt":
            raise KeyboardInterrupt
        return out


@pytest.mark.parametrize(
    ("mode", "error"),
    [
        pytest.param("nan", ModelOutputError, id="nan-output"),
        pytest.param("shape", ModelOutputError, id="wrong-channels-mid-run"),
        pytest.param("interrupt", KeyboardInterrupt, id="ctrl-c"),
    ],
)
def test_failed_run_never_looks_complete(noise_slide, tmp_path, mode, error) -> None:
    out = tmp_path / "o.zarr"
    with pytest.raises(error):
        _run(noise_slide, out, model=_Broken(mode))
    assert zarr.open_group(out, mode="r").attrs["wsi_harness"]["complete"] is False
    with pytest.raises(OutputError, match="incomplete"):
        open_output(out)


def test_model_output_patch_mismatch_is_named(noise_slide, tmp_path) -> None:
    cfg = PlanConfig(patch=48, output_patch=40, stride=16, chunk=32, mpp=0.5)
    with pytest.raises(ModelOutputError, match="output_patch"):
        _run(noise_slide, tmp_path / "o.zarr", model=_Broken("fine"), config=cfg)
    assert not (tmp_path / "o.zarr").exists()


def test_unknown_model_and_missing_cuda_are_config_errors(noise_slide, tmp_path) -> None:
    with pytest.raises(ConfigError, match="built-in"):
        _run(noise_slide, tmp_path / "o.zarr", model="resnet9000")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA"):
            _run(noise_slide, tmp_path / "o.zarr", device="cuda")


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
@pytest.mark.parametrize("suffix", ["pt", "pt2"])
def test_model_files_torchscript_and_export(noise_slide, tmp_path, suffix) -> None:
    from harness.models import build_model

    module = build_model("hne-colour", (32, 32)).module
    path = tmp_path / f"m.{suffix}"
    if suffix == "pt":
        torch.jit.script(module).save(str(path))
    else:
        example = (torch.zeros(2, 3, 48, 48),)
        batch = torch.export.Dim("batch", min=1, max=1024)
        torch.export.save(torch.export.export(module, example, dynamic_shapes=({0: batch},)), path)
    a = _run(noise_slide, tmp_path / "a.zarr", model=str(path))
    b = _run(noise_slide, tmp_path / "b.zarr", model="hne-colour")
    assert compare_outputs(a.output, b.output).bitwise_equal


def test_disk_full_is_one_clear_error(noise_slide, tiny_disk) -> None:
    with pytest.raises(OutputError, match="disk full"):
        _run(noise_slide, tiny_disk / "o.zarr")
    meta = zarr.open_group(tiny_disk / "o.zarr", mode="r").attrs["wsi_harness"]
    assert meta["complete"] is False


def test_output_under_a_file_is_one_clear_error(noise_slide, tmp_path) -> None:
    # GIVEN an output path whose parent is a regular file (not creatable, even for root)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputError, match="cannot create output directory"):
        _run(noise_slide, blocker / "sub" / "o.zarr")


def test_read_only_filesystem_is_one_clear_error(noise_slide, tiny_disk) -> None:
    import subprocess

    subprocess.run(["mount", "-o", "remount,ro", str(tiny_disk)], check=True)
    with pytest.raises(OutputError, match="cannot create"):
        _run(noise_slide, tiny_disk / "o.zarr")


def test_labels_only_writes_the_same_labels_and_no_probabilities(noise_slide, tmp_path) -> None:
    # GIVEN a full run and a labels-only run of the same slide and model
    full = _run(noise_slide, tmp_path / "f.zarr", model="tiny-cnn")
    only = _run(noise_slide, tmp_path / "l.zarr", model="tiny-cnn", probabilities=False)
    # THEN the labels-only store has no probability array and the same labels
    group = open_output(only.output)
    assert "probabilities" not in group
    assert np.array_equal(group["labels"][:], open_output(full.output)["labels"][:])
    # AND compare falls back to the labels and says so
    cmp = compare_outputs(full.output, only.output)
    assert not cmp.probabilities_compared and np.isnan(cmp.max_abs_diff)
    assert cmp.within(0.0) and cmp.label_agreement == 1.0


def test_tiny_cnn_is_the_275_parameter_reference_model() -> None:
    # The side-by-side targets were set with a 3-conv model of 275 parameters.
    from harness.models import load_model

    module = load_model("tiny-cnn").module
    assert sum(p.numel() for p in module.parameters()) == 275


def test_seeded_models_built_on_many_threads_get_the_same_weights() -> None:
    # A cohort loads its slides' models on several threads at once; the seed must
    # not be shared between them (a resumed slide was refused: "weights differ").
    from concurrent.futures import ThreadPoolExecutor

    from harness.identity import weights_sha256
    from harness.models import load_model

    expected = weights_sha256(load_model("tiny-cnn"))
    with ThreadPoolExecutor(8) as pool:
        hashes = set(pool.map(lambda _: weights_sha256(load_model("tiny-cnn")), range(64)))
    assert hashes == {expected}


def test_heap_trimmer_trims_only_when_rss_grows_past_the_slack(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from harness._malloc import SLACK_ENV, HeapTrimmer, _libc, configure
    from harness.measure import current_rss_bytes

    assert configure()  # glibc on the machines this runs on
    libc = _libc()
    libc.malloc_trim(0)  # free heap pages resident from earlier tests would hide growth
    trimmer = HeapTrimmer(slack=8 << 20, settle=2)
    for _ in range(3):  # a steady heap is never trimmed
        trimmer.tick()
    assert trimmer.trims == 0
    before = current_rss_bytes()
    grown = np.ones(24 << 20, np.uint8)  # below the mmap threshold: heap pages, touched
    assert current_rss_bytes() - before >= 16 << 20
    trimmer.tick()
    assert trimmer.trims == 1 and trimmer.reference is None
    del grown
    libc.malloc_trim(0)  # what the trim left resident would hide the working set below
    # The reference is the highest RSS of the settling ticks, not the first: a working
    # set that dips and comes back is not growth (the first tick's RSS would have been).
    trimmer.tick()  # low
    wobble = np.ones(6 << 20, np.uint8)
    trimmer.tick()  # high: the reference
    del wobble
    libc.malloc_trim(0)
    assert trimmer.trims == 1 and trimmer.reference is not None
    low = current_rss_bytes()
    back = np.ones(12 << 20, np.uint8)  # 12 MiB over the low point, about 6 over the high
    assert current_rss_bytes() - low >= 10 << 20
    trimmer.tick()
    assert trimmer.trims == 1
    more = np.ones(12 << 20, np.uint8)  # now well past the high point plus the slack
    trimmer.tick()
    assert trimmer.trims == 2
    del back, more
    with pytest.raises(ValueError, match="settle"):
        HeapTrimmer(settle=0)
    with pytest.raises(ValueError, match="slack"):
        HeapTrimmer(slack=-1)
    monkeypatch.setenv(SLACK_ENV, "3MiB")
    assert HeapTrimmer().slack == 3 << 20
    monkeypatch.setenv(SLACK_ENV, "lots")
    with pytest.raises(ConfigError, match="lots"):
        HeapTrimmer()


def test_heap_trimmer_trims_past_its_limit_and_steps_aside_for_live_memory() -> None:
    from harness._malloc import HeapTrimmer, _libc, configure
    from harness.measure import current_rss_bytes

    assert configure()
    libc = _libc()
    libc.malloc_trim(0)
    start = current_rss_bytes()
    # A slack the reference rule never reaches here: only the limit can trim.
    trimmer = HeapTrimmer(slack=64 << 20, settle=2, limit=start + (16 << 20))
    for _ in range(3):
        trimmer.tick()
    assert trimmer.trims == 0
    freed = np.ones(24 << 20, np.uint8)  # heap pages, touched, then free but resident
    del freed
    assert current_rss_bytes() - start >= 20 << 20
    trimmer.tick()  # over the limit with nothing live: the free heap goes back
    assert (trimmer.trims, trimmer.limit_trims) == (1, 1)
    assert current_rss_bytes() < start + (8 << 20)
    assert trimmer.over_limit == 0 and trimmer.limit == start + (16 << 20)
    live = np.ones(24 << 20, np.uint8)  # live memory over the limit: a trim returns nothing
    trimmer.tick()
    assert trimmer.limit_trims == 2 and trimmer.over_limit >= start + (20 << 20)
    assert trimmer.limit is not None and trimmer.limit >= trimmer.over_limit + (64 << 20)
    trimmer.tick()  # the limit moved up past it: no trim every batch for nothing
    assert trimmer.limit_trims == 2
    del live
    # The run's record says so, and the command line warns
    from harness.cli.segment import _heap_notes

    record = trimmer.record()
    assert record["trims"] == record["budget_trims"] == 2
    assert record["live_over_limit_bytes"] >= 4 << 20
    (note,) = _heap_notes(record)
    assert "past the budget's heap limit: raise --budget" in note
    assert _heap_notes({"trims": 3, "budget_trims": 1, "live_over_limit_bytes": 0}) == []


def test_segment_records_what_the_heap_trimmer_did(tmp_path: Path) -> None:
    result = _run("synthetic:512", tmp_path / "o.zarr")
    heap = result.to_dict()["heap"]
    assert set(heap) == {"trims", "budget_trims", "live_over_limit_bytes"}
    assert heap["trims"] >= heap["budget_trims"] >= 0
    assert heap["live_over_limit_bytes"] == 0  # the default budget holds this run easily


@pytest.mark.parametrize(
    "pre",
    [
        pytest.param(Preprocess(), id="scale"),
        pytest.param(Preprocess(mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3)), id="normalise"),
    ],
)
def test_preprocess_array_is_the_tensor_path_bitwise(pre: Preprocess) -> None:
    # The CPU reader preprocesses in numpy; CUDA runs and the TIAToolbox wrapper use torch.
    pixels = np.random.default_rng(0).integers(0, 256, (2, 17, 19, 3), dtype=np.uint8)
    via_torch = pre(torch.from_numpy(pixels))
    via_numpy = torch.from_numpy(pre.array(pixels)).permute(0, 3, 1, 2)
    assert torch.equal(via_torch, via_numpy)
    assert via_numpy.stride() == via_torch.stride()  # both channels-last
