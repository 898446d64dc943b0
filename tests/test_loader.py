"""The patch loader: inline reads, reader threads and reader processes over one ring of slots.

Everything here is real: reader processes are ``python -m harness._readers``
children, slides are synthetic or JPEG TIFFs written for the test, signals are
sent to real ``wsi-harness segment`` processes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from harness.budget import READER_BYTES
from harness.compare import compare_outputs
from harness.config import RunConfig
from harness.errors import ConfigError, SlideError
from harness.loader import READERS_ENV, LoaderError, PatchLoader, plan_cache_need
from harness.output.threaded import WRITER_ENV, ThreadedSink, writer_sink
from harness.plan import PlanConfig, make_plan, min_budget
from harness.preprocess import Preprocess
from harness.segment import segment
from harness.slides import SyntheticSlide, TiffSlide, open_slide, write_tiff

CFG = PlanConfig(patch=64, stride=32, chunk=64, mpp=0.5)
#: (reader kind, workers) beside the inline reference.
READERS = [("process", 1), ("process", 2), ("thread", 1), ("thread", 2)]
SIGNAL_SLIDE = "synthetic:3072,seed=3"
SIGNAL_ARGS = ["--model", "tiny-cnn", "--patch", "128", "--stride", "64", "--chunk", "64",
               "--workers", "2", "--no-progress"]  # fmt: skip


@pytest.fixture(scope="module")
def slides(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The same synthetic tissue as a generator spec and as a JPEG pyramidal TIFF."""
    root = tmp_path_factory.mktemp("slides")
    tiff = write_tiff(SyntheticSlide(384, 640, seed=5), root / "s.tif", tile=128, progress=False)
    return {"synthetic": "synthetic:640x384,seed=5", "tiff": str(tiff)}


@pytest.fixture(scope="module")
def broken_tiff(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A JPEG TIFF whose tile 5 of level 0 no longer starts with a JPEG marker."""
    path = write_tiff(SyntheticSlide(512, 1024, seed=2), tmp_path_factory.mktemp("bad") / "b.tif",
                      tile=128, progress=False)  # fmt: skip
    with tifffile.TiffFile(path) as tif:
        offset = tif.pages[0].dataoffsets[5]
    with path.open("r+b") as f:
        f.seek(offset)
        f.write(b"\0" * 16)
    return path


def _batches(loader: PatchLoader) -> list[np.ndarray]:
    with loader:
        return [b.pixels.numpy().copy() for b in loader]


@pytest.mark.parametrize(("mode", "workers"), READERS)
@pytest.mark.parametrize("normalise", [False, True], ids=["scale", "mean-std"])
def test_batches_equal_direct_reads_in_plan_order(noise_slide, mode, workers, normalise) -> None:
    # GIVEN a plan over a slide whose every pixel differs, and the model's preprocessing
    plan = make_plan(noise_slide.shape, noise_slide.mpp, CFG, 3, min_budget(CFG, 3) * 2)
    pre = Preprocess(mean=(0.5, 0.4, 0.3), std=(0.2, 0.3, 0.25)) if normalise else Preprocess()
    # WHEN the loader reads it (batch 5: batches straddle rows and readers' ranges)
    got = _batches(PatchLoader(noise_slide, plan, 5, workers, pre, mode=mode))
    # THEN every batch is the direct reads of its entries, preprocessed bitwise the same way
    reads = np.stack([noise_slide.read(plan.input_box(i), 0.5) for i in range(plan.n_patches)])
    want = [pre.array(reads[s : s + 5]) for s in range(0, plan.n_patches, 5)]
    assert len(got) == len(want) and len(plan.strip_starts) > 2
    for g, w in zip(got, want, strict=True):
        assert g.dtype == np.float32 and np.array_equal(g, w)


@pytest.mark.parametrize("reader", ["synthetic", "tiff"])
@pytest.mark.parametrize("order", ["strips", "raster"])
def test_outputs_bitwise_equal_for_any_workers_and_reader_kind(
    slides, tmp_path, monkeypatch, reader, order
) -> None:
    # GIVEN a run whose merge budget forces several strips (halo re-runs) or a spilling band
    cfg = PlanConfig(patch=64, stride=32, chunk=64, mpp=0.5, order=order)
    run = RunConfig(plan=cfg, model="passthrough", merge_budget=min_budget(cfg, 3) * 2,
                    batch_size=6, progress=False)  # fmt: skip
    ref = segment(slides[reader], out=tmp_path / "inline.zarr", run=run)
    assert order == "raster" or ref.patch_runs > ref.patches  # several strips really ran
    for mode, workers in READERS:
        # WHEN the same run reads with reader threads or processes
        monkeypatch.setenv(READERS_ENV, mode)
        out = tmp_path / f"{mode}{workers}.zarr"
        got = segment(slides[reader], out=out, run=run.replace(workers=workers))
        # THEN the output is the inline one, bit for bit
        cmp = compare_outputs(ref.output, got.output)
        assert cmp.bitwise_equal and cmp.coverage_mismatch_px == 0, (mode, workers)


def test_inline_writes_give_the_writer_threads_output(slides, tmp_path, monkeypatch) -> None:
    # GIVEN a tiny-cnn run written by the writer thread (the default)
    run = RunConfig(plan=CFG, model="tiny-cnn", batch_size=4, progress=False)
    ref = segment(slides["synthetic"], out=tmp_path / "thread.zarr", run=run)
    # WHEN the same run writes each chunk on the loop's own thread
    monkeypatch.setenv(WRITER_ENV, "inline")
    got = segment(slides["synthetic"], out=tmp_path / "inline.zarr", run=run)
    # THEN the output is the same, bit for bit, and as complete
    cmp = compare_outputs(ref.output, got.output)
    assert cmp.bitwise_equal and cmp.coverage_mismatch_px == 0
    assert got.chunks_written == ref.chunks_written > 0


def test_writer_kind_comes_from_the_environment(monkeypatch) -> None:
    class Sink:
        def write_chunk(self, box, probs, labels) -> None: ...  # type: ignore[no-untyped-def]
        def finish(self, record) -> None: ...  # type: ignore[no-untyped-def]
        def abort(self) -> None: ...

    threaded = writer_sink(Sink())  # type: ignore[arg-type]
    assert isinstance(threaded, ThreadedSink)
    threaded.finish({})
    monkeypatch.setenv(WRITER_ENV, "inline")
    inner = Sink()
    assert writer_sink(inner) is inner  # type: ignore[arg-type]
    monkeypatch.setenv(WRITER_ENV, "process")
    with pytest.raises(ConfigError, match="WSI_HARNESS_WRITER must be thread or inline"):
        writer_sink(Sink())  # type: ignore[arg-type]


@pytest.mark.parametrize(("env", "name"), [(WRITER_ENV, "writer"), (READERS_ENV, "readers")])
def test_a_bad_reader_or_writer_kind_is_one_line_before_any_output(tmp_path, env, name) -> None:
    # GIVEN a reader or writer kind the harness does not know
    out = tmp_path / "s.zarr"
    argv = [sys.executable, "-m", "harness", "segment", "synthetic:512", "--out", str(out),
            "--workers", "1", "--no-progress"]  # fmt: skip
    environ = {**os.environ, env: "bogus"}
    # WHEN a run is asked for
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=environ,
                          check=False)  # fmt: skip
    # THEN one line names the variable, exit 2, no traceback, and no output was started
    assert done.returncode == 2, (name, done.stderr)
    assert done.stderr.strip().count("\n") == 0 and env in done.stderr
    assert "Traceback" not in done.stderr and not out.exists()


@pytest.mark.parametrize(("mode", "workers"), READERS)
def test_tiny_cnn_outputs_equal_inline(slides, tmp_path, monkeypatch, mode, workers) -> None:
    run = RunConfig(plan=CFG, model="tiny-cnn", batch_size=4, progress=False)
    ref = segment(slides["synthetic"], out=tmp_path / "inline.zarr", run=run)
    monkeypatch.setenv(READERS_ENV, mode)
    got = segment(slides["synthetic"], out=tmp_path / "w.zarr", run=run.replace(workers=workers))
    assert compare_outputs(ref.output, got.output).bitwise_equal


@pytest.mark.parametrize(("mode", "workers"), READERS)
def test_a_failed_read_in_a_reader_is_the_readers_error(broken_tiff, mode, workers) -> None:
    # GIVEN a TIFF with one undecodable tile, read by reader threads or processes
    slide = TiffSlide(broken_tiff)
    plan = make_plan(slide.shape, slide.mpp, CFG, 3, 2**40)
    # WHEN the loader reaches it
    with pytest.raises(SlideError) as caught, PatchLoader(slide, plan, 4, workers, mode=mode) as ld:
        for _ in ld:
            pass
    # THEN the consumer raises the reader's own error: one line naming the tile
    assert "cannot decode tile 5 of level 0" in str(caught.value)
    assert "\n" not in str(caught.value) and "Traceback" not in str(caught.value)


def test_a_failed_read_in_a_reader_process_is_one_cli_line(broken_tiff, tmp_path) -> None:
    argv = [sys.executable, "-m", "harness", "segment", str(broken_tiff), "--out",
            str(tmp_path / "o.zarr"), "--workers", "2", "--model", "passthrough",
            "--no-progress"]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert "cannot decode tile 5 of level 0" in lines[0]


def test_a_reader_process_that_dies_is_named(tmp_path) -> None:
    # GIVEN one reader process, blocked on a full ring a few batches ahead
    slide = open_slide("synthetic:1024,seed=1")
    plan = make_plan(slide.shape, slide.mpp, CFG, 3, 2**40)
    loader = PatchLoader(slide, plan, 4, 1, mode="process")
    with pytest.raises(LoaderError) as caught, loader:
        batches = iter(loader)
        next(batches)
        # WHEN it is killed
        pid = _reader_pids(os.getpid())[0]
        os.kill(pid, signal.SIGKILL)
        for _ in batches:
            pass
    # THEN the consumer stops with one line naming the reader and how it ended
    assert f"pid {pid}) was killed by SIGKILL" in str(caught.value)
    assert not _reader_pids(os.getpid())


@pytest.mark.parametrize("reader", ["synthetic", "tiff"])
def test_reader_processes_stay_within_their_budget_share(tmp_path, reader) -> None:
    # GIVEN two reader processes (two column ranges each way) with cache shares sized as a
    # run sizes them
    wide = SyntheticSlide(768, 4096, seed=1)
    if reader == "tiff":
        wide = TiffSlide(write_tiff(wide, tmp_path / "w.tif", tile=256, progress=False))
    slide = open_slide(wide.spec) if reader == "synthetic" else wide
    cfg = PlanConfig(patch=256, stride=128, chunk=256, mpp=0.5)
    plan = make_plan(slide.shape, slide.mpp, cfg, 3, 2**40)
    share = plan_cache_need(slide, plan, 8, 2)  # type: ignore[arg-type]
    loader = PatchLoader(slide, plan, 8, 2, cache_bytes=share, mode="process")
    # WHEN they read the whole plan
    _batches(loader)
    # THEN each one's peak above its own start-up RSS is its cache share and READER_BYTES
    assert len(loader.reader_rss) == 2
    for baseline, peak in loader.reader_rss:
        assert 0 < baseline < peak <= baseline + share + READER_BYTES, (baseline, peak, share)


def _reader_pids(parent: int) -> list[int]:
    """Live reader processes among ``parent``'s children."""
    pids = []
    for task in Path(f"/proc/{parent}/task").iterdir():
        for child in (task / "children").read_text().split():
            if _alive(int(child)) and "harness._readers" in _cmdline(int(child)):
                pids.append(int(child))
    return pids


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for a reaper has ended)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


def _start_with_readers(out: Path) -> tuple[subprocess.Popen[str], list[int]]:
    """A segmentation in its own session, once both its readers run and work has begun."""
    argv = [sys.executable, "-m", "harness", "segment", SIGNAL_SLIDE, "--out", str(out),
            *SIGNAL_ARGS]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        readers = _reader_pids(proc.pid)
        if len(readers) == 2 and (out / "zarr.json").exists():
            time.sleep(0.5)
            return proc, readers
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"readers never started: {proc.communicate()[1]}")


@pytest.mark.parametrize(
    ("sig", "code"),
    [pytest.param(signal.SIGTERM, 143, id="sigterm"), pytest.param(signal.SIGINT, 130, id="^C")],
)
def test_a_signal_to_the_whole_group_stops_cleanly_with_readers(tmp_path, sig, code) -> None:
    # GIVEN a run with two reader processes, in one process group as under a terminal
    proc, readers = _start_with_readers(tmp_path / "o.zarr")
    # WHEN the group gets one signal (readers included, as a terminal's ^C sends it)
    os.killpg(proc.pid, sig)
    _, err = proc.communicate(timeout=120)
    # THEN the run stops at a batch boundary with its one line; the readers said nothing
    assert proc.returncode == code, err
    assert err.strip().splitlines()[-1].startswith(f"error: interrupted by {sig.name} after")
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    # AND no reader outlives it
    assert not [pid for pid in readers if _alive(pid)]


def test_a_killed_parent_leaves_no_reader_behind(tmp_path) -> None:
    # GIVEN a run with two reader processes
    proc, readers = _start_with_readers(tmp_path / "o.zarr")
    # WHEN the parent alone is SIGKILLed (it cannot clean up)
    proc.kill()
    proc.communicate(timeout=60)
    # THEN the kernel ends its readers too (PR_SET_PDEATHSIG)
    deadline = time.monotonic() + 10
    while [pid for pid in readers if _alive(pid)] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [pid for pid in readers if _alive(pid)]


class _Unpicklable:
    """A slide holding a lock: fine for threads, impossible to send to a process."""

    def __init__(self, slide: SyntheticSlide) -> None:
        import threading

        self.inner, self.lock = slide, threading.Lock()
        self.shape, self.mpp, self.downsamples = slide.shape, slide.mpp, slide.downsamples

    def read(self, box, mpp=None):
        return self.inner.read(box, mpp)


def test_a_slide_that_cannot_travel_is_one_line_and_threads_read_it() -> None:
    slide = _Unpicklable(SyntheticSlide(256, 512, seed=1))
    plan = make_plan(slide.shape, slide.mpp, CFG, 3, 2**40)
    with pytest.raises(LoaderError, match=r"cannot send the slide _Unpicklable to reader proc"):
        _batches(PatchLoader(slide, plan, 4, 2, mode="process"))  # type: ignore[arg-type]
    assert len(_batches(PatchLoader(slide, plan, 4, 2, mode="thread"))) > 1  # type: ignore[arg-type]
