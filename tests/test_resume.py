"""Resumable runs: real kills, real signals, real locks, bitwise results.

Every run here is a real ``wsi-harness segment`` process; kills are SIGKILL /
SIGTERM / SIGINT sent to it by the test. The reference is an uninterrupted run
of the same command.
"""

from __future__ import annotations

import hashlib
import random
import re
import signal
import subprocess
import sys
import time
from typing import TYPE_CHECKING

import numpy as np
import pytest

from harness.compare import compare_outputs
from harness.output import OutputError, open_output
from harness.output.state import read_records
from harness.output.zarr_store import ZarrStore
from harness.plan import PlanConfig
from harness.segment import ModelOutputError, segment
from harness.status import kill_cost

if TYPE_CHECKING:
    from pathlib import Path

SLIDE = "synthetic:3072,seed=3"
GEOMETRY = ["--model", "tiny-cnn", "--patch", "128", "--stride", "64", "--chunk", "64"]
SCENARIOS = {
    # several budget-sized strips (halo patches), a tissue mask, mean blending
    "strips-mask": [*GEOMETRY, "--merge-budget", "2MB", "--mask", "auto"],
    # one raster band that does not fit: partial chunks spill and reload; gaussian blending
    "raster-spill-gaussian": [*GEOMETRY, "--merge-budget", "1MB", "--order", "raster",
                              "--blend", "gaussian"],
}  # fmt: skip
PROGRESS = re.compile(r"(\d+)/(\d+)")


def _start(
    out: Path, args: list[str], *extra: str, progress: bool = False, slide: str = SLIDE
) -> subprocess.Popen[str]:
    argv = [sys.executable, "-m", "harness", "segment", slide, "--out", str(out), *args, *extra]
    if not progress:
        argv.append("--no-progress")
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _run(
    out: Path, args: list[str], *extra: str, slide: str = SLIDE
) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "harness", "segment", slide, "--out", str(out), *args,
            "--no-progress", *extra]  # fmt: skip
    return subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)


def _wait_for_work(proc: subprocess.Popen[str], out: Path, timeout: float = 60) -> bool:
    """Until the run has created its output (work starts); False if it ended first."""
    t0 = time.monotonic()
    while not (out / "zarr.json").exists():
        if proc.poll() is not None or time.monotonic() - t0 > timeout:
            return False
        time.sleep(0.02)
    return True


def _tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        h.update(str(p.relative_to(root)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def references(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An uninterrupted run of every scenario."""
    root = tmp_path_factory.mktemp("reference")
    refs = {}
    for name, args in SCENARIOS.items():
        done = _run(root / f"{name}.zarr", args)
        assert done.returncode == 0, done.stderr
        refs[name] = root / f"{name}.zarr"
    return refs


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_sigkill_at_random_moments_then_resume_is_bitwise(references, tmp_path, scenario):
    # GIVEN an uninterrupted reference run and the stated bound on a kill's lost work
    args = SCENARIOS[scenario]
    out = tmp_path / "o.zarr"
    rng = random.Random(f"kills-{scenario}")
    mid_run, worst = 0, 0
    for _ in range(5):
        # WHEN the run (resuming whatever the last kill left) is killed at a random moment
        proc = _start(out, args, "--resume", progress=True)
        if _wait_for_work(proc, out):
            time.sleep(rng.uniform(0.0, 1.2))
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
        if proc.returncode != -signal.SIGKILL or not (out / "zarr.json").exists():
            continue
        if open_output(out, require_complete=False).attrs["wsi_harness"]["complete"]:
            break
        mid_run += 1
        # THEN what it cost is within the bound: only patches of chunks not yet committed
        completed = max((int(a) for a, _ in PROGRESS.findall(err)), default=0)
        redone, bound = kill_cost(out, completed)
        worst = max(worst, redone)
        assert redone <= bound, f"a kill cost {redone} patches, bound {bound}"
    # AND after every kill and resume the output is bitwise the uninterrupted one
    final = _run(out, args, "--resume")
    assert final.returncode == 0, final.stderr
    cmp = compare_outputs(out, references[scenario])
    assert cmp.bitwise_equal and cmp.probabilities_compared and cmp.coverage_mismatch_px == 0
    assert mid_run >= 3, f"only {mid_run} kills landed mid-run"
    assert not (out / ".wsi-harness").exists()  # run state removed once complete


@pytest.mark.parametrize(
    ("sig", "code", "name"),
    [pytest.param(signal.SIGTERM, 143, "SIGTERM", id="sigterm"),
     pytest.param(signal.SIGINT, 130, "SIGINT", id="sigint")],
)  # fmt: skip
def test_signal_stops_at_a_batch_boundary_and_resumes(references, tmp_path, sig, code, name):
    # GIVEN a running segmentation
    out, args = tmp_path / "o.zarr", SCENARIOS["raster-spill-gaussian"]
    proc = _start(out, args)
    assert _wait_for_work(proc, out)
    time.sleep(0.6)
    # WHEN it receives one signal
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    # THEN it exits with the shell's code and one line saying how to continue
    assert proc.returncode == code, err
    last = err.strip().splitlines()[-1]
    assert re.match(rf"error: interrupted by {name} after [\d,]+ of [\d,]+ patches; continue "
                    r"with --resume$", last), err  # fmt: skip
    assert "Traceback" not in err
    with pytest.raises(OutputError, match="incomplete"):
        open_output(out)
    # AND --resume finishes it bitwise, the killed run's spill scratch gone
    assert _run(out, args, "--resume").returncode == 0
    assert compare_outputs(out, references["raster-spill-gaussian"]).bitwise_equal


def test_a_second_signal_exits_at_once_and_nothing_is_torn(references, tmp_path):
    out, args = tmp_path / "o.zarr", SCENARIOS["raster-spill-gaussian"]
    proc = _start(out, args)
    assert _wait_for_work(proc, out)
    time.sleep(0.6)
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in err
    assert _run(out, args, "--resume").returncode == 0
    assert compare_outputs(out, references["raster-spill-gaussian"]).bitwise_equal


def _stopped_output(out: Path, args: list[str]) -> None:
    """An incomplete output, left by a run killed mid-way."""
    for delay in (0.5, 0.3, 0.1, 0.0):
        proc = _start(out, args)
        if _wait_for_work(proc, out):
            time.sleep(delay)
        proc.kill()
        proc.communicate(timeout=60)
        meta = open_output(out, require_complete=False).attrs["wsi_harness"]
        if not meta["complete"]:
            return
        subprocess.run(["rm", "-rf", str(out)], check=True)
    pytest.fail("could not stop a run mid-way")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        pytest.param(["--stride", "32"], "plan stride differs", id="plan"),
        pytest.param(["--dtype", "float16"], "output dtype differs", id="dtype"),
        pytest.param(["--labels-only"], "stored probabilities differs", id="labels-only"),
        pytest.param(["--model", "hne-colour"], "model name differs", id="model"),
    ],
)
def test_identity_mismatch_is_refused_and_nothing_is_touched(tmp_path, change, message):
    out, args = tmp_path / "o.zarr", SCENARIOS["raster-spill-gaussian"]
    _stopped_output(out, args)
    before = _tree_digest(out)
    done = _run(out, [*args, *change], "--resume")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "nothing was changed" in lines[0], lines
    assert _tree_digest(out) == before


def test_other_slide_is_refused(tmp_path):
    out, args = tmp_path / "o.zarr", SCENARIOS["raster-spill-gaussian"]
    _stopped_output(out, args)
    before = _tree_digest(out)
    argv = [sys.executable, "-m", "harness", "segment", "synthetic:3072,seed=4", "--out",
            str(out), *args, "--resume", "--no-progress"]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 2 and "synthetic slide differs" in done.stderr
    assert _tree_digest(out) == before


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_other_model_weights_are_refused(tmp_path):
    import torch

    from harness.models import TinyCNN

    paths = []
    for seed in (0, 1):
        folder = tmp_path / f"w{seed}"
        folder.mkdir()
        scripted = torch.jit.script(TinyCNN(seed=seed).eval())  # type: ignore[no-untyped-call]
        scripted.save(str(folder / "net.pt"))
        paths.append(folder / "net.pt")
    base = [a for a in SCENARIOS["raster-spill-gaussian"] if a != "tiny-cnn" and a != "--model"]
    out = tmp_path / "o.zarr"
    _stopped_output(out, [*base, "--model", str(paths[0])])
    before = _tree_digest(out)
    done = _run(out, [*base, "--model", str(paths[1])], "--resume")
    assert done.returncode == 2
    assert re.search(r"model weights differ: sha256 [0-9a-f]{8}… recorded, sha256 [0-9a-f]{8}… "
                     "given", done.stderr), done.stderr  # fmt: skip
    assert _tree_digest(out) == before


def test_second_concurrent_run_refuses_and_a_stale_lock_is_taken_over(tmp_path):
    # GIVEN a run in progress (a slide big enough to still be running when we look)
    out, args, big = tmp_path / "o.zarr", SCENARIOS["strips-mask"], "synthetic:8192,seed=3"
    first = _start(out, args, slide=big)
    assert _wait_for_work(first, out)
    # WHEN a second run on the same output starts, to continue or to replace it
    for flag in ("--resume", "--overwrite"):
        second = _run(out, args, flag, slide=big)
        # THEN it refuses with one line naming the writer
        assert second.returncode == 2, second.stderr
        assert "is being written by pid" in second.stderr, second.stderr
    status = subprocess.run([sys.executable, "-m", "harness", "status", str(out), "--fast"],
                            capture_output=True, text=True, check=False)  # fmt: skip
    assert first.poll() is None, "the first run ended before the test could check the lock"
    assert "running: pid" in status.stdout, status.stdout
    first.kill()
    first.communicate(timeout=60)
    # AND once the first is gone its lock is stale: status says so, --resume takes it over
    after = subprocess.run([sys.executable, "-m", "harness", "status", str(out)],
                           capture_output=True, text=True, check=False)  # fmt: skip
    assert "incomplete" in after.stdout and "stopped: pid" in after.stdout, after.stdout
    assert re.search(r"patches left\s+[\d,]+", after.stdout)
    assert _run(out, args, "--resume", slide=big).returncode == 0
    reference = tmp_path / "ref.zarr"
    assert _run(reference, args, slide=big).returncode == 0
    assert compare_outputs(out, reference).bitwise_equal


def test_resume_on_complete_and_on_missing_outputs(references, tmp_path):
    args = SCENARIOS["strips-mask"]
    out = tmp_path / "fresh.zarr"
    started = _run(out, args, "--resume")  # missing: a fresh run
    assert started.returncode == 0
    assert compare_outputs(out, references["strips-mask"]).bitwise_equal
    before = _tree_digest(out)
    again = _run(out, args, "--resume")  # complete: nothing to do
    assert again.returncode == 0 and "already complete" in again.stderr
    assert _tree_digest(out) == before


def test_torn_temporaries_and_unrecorded_torn_chunks_are_cleaned(references, tmp_path):
    # GIVEN a killed run's output, plus what a crash could leave: temporaries, and a chunk
    # file committed after the last progress record and torn by a power cut
    out, args = tmp_path / "o.zarr", SCENARIOS["raster-spill-gaussian"]
    _stopped_output(out, args)
    store = ZarrStore.open(out, writable=False)
    recorded = read_records(out, store.grid[0] * store.grid[1])
    (out / "labels" / "c" / "0" / "0.deadbeef.partial").write_bytes(b"torn")
    (out / "zarr.1234abcd.partial").write_bytes(b"{ torn")
    files = sorted((out / "labels" / "c").rglob("*"))
    chunks = [p for p in files if p.is_file() and not p.name.endswith(".partial")]
    unrecorded = [p for p in chunks
                  if not recorded[int(p.parent.name) * store.grid[1] + int(p.name)]]  # fmt: skip
    if unrecorded:
        unrecorded[0].write_bytes(unrecorded[0].read_bytes()[:5])
    # WHEN it is resumed
    done = _run(out, args, "--resume")
    # THEN the temporaries are gone, the torn chunk was redone, the result is bitwise
    assert done.returncode == 0, done.stderr
    assert not list(out.rglob("*.partial"))
    assert compare_outputs(out, references["raster-spill-gaussian"]).bitwise_equal


def test_python_callers_get_python_hints(noise_slide, tmp_path):
    cfg = PlanConfig(patch=48, output_patch=32, stride=16, chunk=32, mpp=0.5)
    out = tmp_path / "o.zarr"
    segment(noise_slide, "passthrough", cfg, out, progress=False)
    with pytest.raises(OutputError, match=r"overwrite=True") as info:
        segment(noise_slide, "passthrough", cfg, out, progress=False)
    assert "--" not in str(info.value)
    result = segment(noise_slide, "passthrough", cfg, out, progress=False, resume=True)
    assert result.already_complete and result.chunks_written == 0


def test_resume_in_python_skips_final_chunks(noise_slide, tmp_path):
    # GIVEN an output whose first chunks were committed by a run that then failed
    cfg = PlanConfig(patch=48, output_patch=32, stride=16, chunk=32, mpp=0.5)
    ref = segment(noise_slide, "passthrough", cfg, tmp_path / "ref.zarr", progress=False)

    class Fails(Exception):
        pass

    calls = {"n": 0}

    def on_batch(_: object, __: object, ___: object) -> None:
        calls["n"] += 1
        if calls["n"] == 30:
            raise Fails

    import torch

    class Flaky(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            on_batch(None, None, None)
            return x[..., 8:40, 8:40].contiguous()

    out = tmp_path / "o.zarr"
    with pytest.raises(ModelOutputError, match="failed on batch 27"):
        segment(noise_slide, Flaky(), cfg, out, progress=False, classes=("r", "g", "b"))
    # WHEN the same model (now healthy) resumes it
    from harness.models import Passthrough

    result = segment(noise_slide, Passthrough((32, 32)), cfg, out, progress=False,
                     classes=("r", "g", "b"), resume=True)  # fmt: skip
    # THEN it skipped patches and the output is bitwise the uninterrupted one
    assert result.resumed and result.patches_done > 0
    assert compare_outputs(out, ref.output).bitwise_equal
    assert np.isfinite(result.wall_s)
