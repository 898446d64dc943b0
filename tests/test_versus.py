"""Tests for ``wsi-harness versus`` (harness/peers/, harness/cli/versus.py).

Everything here runs without the TIAToolbox peer virtualenv except the tests
marked ``needs_peer``, which skip with the reason when it is absent.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from harness.engines import TIATOOLBOX_PEAK, EngineJob, Ours, TIAToolbox, peer_python
from harness.errors import ConfigError
from harness.measure.slides import slide_job
from harness.peers.compare import (
    UNCOVERED,
    common_grid_extent,
    compare_outputs,
    harness_starts,
    open_output,
    tiatoolbox_starts,
)
from harness.peers.report import format_table, plot, study_dict, targets, write_json
from harness.peers.versus import (
    GB,
    Decision,
    EngineRun,
    SizeResult,
    VersusConfig,
    decide_peer,
)

DEFAULT_PEER_PYTHON = peer_python("tiatoolbox")

zarr = pytest.importorskip("zarr")

needs_peer = pytest.mark.skipif(
    not DEFAULT_PEER_PYTHON.is_file(),
    reason=f"TIAToolbox peer venv absent ({DEFAULT_PEER_PYTHON}); "
    "build it with scripts/peer_env.sh tiatoolbox",
)


# --- grid conventions -------------------------------------------------------


@pytest.mark.parametrize(
    ("length", "out", "stride", "ours", "tia", "extent"),
    [
        pytest.param(4096, 256, 128, 31, 32, 3968, id="4k-divisible"),
        pytest.param(1000, 256, 128, 7, 8, 896, id="ragged"),
        pytest.param(256, 256, 128, 1, 2, 128, id="one-patch"),
        pytest.param(100, 256, 128, 1, 1, 100, id="smaller-than-patch"),
        pytest.param(1024, 256, 256, 4, 4, 1024, id="no-overlap"),
    ],
)
def test_grids_differ_only_past_the_common_extent(length, out, stride, ours, tia, extent):
    # GIVEN an axis length and a grid WHEN both conventions place patches
    # THEN the counts and the first differing pixel are as derived by hand
    assert harness_starts(length, out, stride) == ours
    assert tiatoolbox_starts(length, stride) == tia
    assert common_grid_extent(length, out, stride) == extent


# --- peak prediction and the skip rule ----------------------------------------


@pytest.mark.parametrize(
    ("side", "measured_gb"),
    [
        pytest.param(4096, 2.1, id="4k"),
        pytest.param(8192, 4.5, id="8k"),
        pytest.param(16384, 11.2, id="16k"),
    ],
)
def test_peak_model_never_underpredicts_the_issue_measurements(side, measured_gb):
    predicted = TIATOOLBOX_PEAK.predict(side * side) / GB
    assert measured_gb * 0.95 <= predicted <= measured_gb * 1.25


def test_calibration_only_raises_the_base():
    model = TIATOOLBOX_PEAK
    assert model.calibrated([(4096**2, 1 * GB)]) == model  # over-predicted: unchanged
    raised = model.calibrated([(4096**2, 3 * GB)])
    assert raised.predict(4096**2) == pytest.approx(3 * GB, rel=1e-9)


@pytest.mark.parametrize(
    ("side", "available_gb", "run", "why"),
    [
        pytest.param(4096, 20, True, "", id="fits"),
        pytest.param(16384, 20, False, "50% of RAM", id="over-share"),
        pytest.param(8192, 4, False, "available now", id="over-free"),
    ],
)
def test_decide_peer(side, available_gb, run, why):
    # GIVEN 24 GB of RAM and a 50% share WHEN deciding THEN run or skip, saying why
    d = decide_peer(side * side, TIATOOLBOX_PEAK, int(24 * GB), int(available_gb * GB), 0.5)
    assert isinstance(d, Decision)
    assert d.run is run
    assert why in d.reason
    if not run:
        assert d.reason.startswith("skipped: predicted peak")


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"stride": 0}, id="stride-0"),
        pytest.param({"stride": 512}, id="stride-over-patch"),
        pytest.param({"mpp": 0.0}, id="mpp"),
        pytest.param({"ram_share": 0.95}, id="share"),
        pytest.param({"nice": 20}, id="nice"),
        pytest.param({"engines": ("other",)}, id="engine"),
    ],
)
def test_config_rejects_bad_values(kwargs):
    with pytest.raises(ConfigError):
        VersusConfig(**kwargs)


def test_every_engine_gets_the_same_grid(tmp_path):
    # GIVEN a study with its own model and grid
    cfg = VersusConfig(model="passthrough", patch=128, stride=64, mpp=1.0, batch_size=4)
    job = EngineJob(str(tmp_path / "s.tiff"), tmp_path / "o.zarr", cfg.run_config())
    # WHEN each engine builds its command THEN each passes the same model, grid and batch
    for engine in cfg.build_engines():
        argv = engine.argv(job)
        for flag, value in (("--patch", "128"), ("--stride", "64"), ("--mpp", "1.0"),
                            ("--batch-size", "4"), ("--model", "passthrough")):  # fmt: skip
            assert argv[argv.index(flag) + 1] == value, (engine.name, flag)
    ours, peer = cfg.build_engines()
    assert isinstance(ours, Ours) and isinstance(peer, TIAToolbox)
    ours_argv = ours.argv(job)
    assert ours_argv[ours_argv.index("--mask") + 1] == "none"
    assert "--labels-only" in ours_argv  # as TIAToolbox's default writes labels only
    assert str(Path("harness/peers/tiatoolbox_runner.py")) in " ".join(peer.argv(job))


def test_peer_python_overrides_apply(tmp_path):
    cfg = VersusConfig(engines=("ours", "monai"), peer_pythons=(("monai", str(tmp_path / "py")),))
    monai = cfg.build_engines()[1]
    assert monai.argv(EngineJob("s", tmp_path))[0] == str(tmp_path / "py")
    assert "no monai peer python" in (monai.unavailable() or "")


def test_slide_job_reads_size_and_mpp(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    path = tmp_path / "s.tiff"
    image = np.zeros((300, 400, 3), np.uint8)
    tifffile.imwrite(path, image, resolution=(1e4 / 0.25, 1e4 / 0.25), resolutionunit="CENTIMETER")
    job = slide_job(path, mpp=0.5)  # slide at 0.25 mpp, processed at 0.5
    assert job.area_px == 150 * 200
    assert job.size == 200


# --- comparing outputs --------------------------------------------------------


def _write(path: Path, labels_key: str, probs: np.ndarray | None, labels: np.ndarray) -> Path:
    group = zarr.open_group(str(path), mode="w")
    group.create_array(labels_key, data=labels, chunks=(64, 64))
    if probs is not None:
        group.create_array("probabilities", data=probs, chunks=(64, 64, probs.shape[2]))
    return path


def _probs(shape: tuple[int, int], seed: int) -> np.ndarray:
    p = np.random.default_rng(seed).random((*shape, 3)).astype(np.float32)
    return p / p.sum(axis=2, keepdims=True)


@pytest.fixture
def pair(tmp_path):
    """Ours and a peer output of a 200 x 300 slide (patch 64, stride 32), identical."""
    probs = _probs((200, 300), 0)
    labels = probs.argmax(axis=2).astype(np.uint8)
    ours = _write(tmp_path / "ours.zarr", "labels", probs, labels)
    return ours, probs, labels, tmp_path


def test_identical_outputs_agree_fully(pair):
    ours, probs, labels, tmp = pair
    peer = _write(tmp / "peer.zarr", "predictions", probs, labels)
    a = compare_outputs(open_output(ours, "labels"), open_output(peer, "predictions"), 64, 32, 48)
    assert a.overall.pixels == 200 * 300
    assert a.overall.label_agreement == 1.0
    assert a.overall.prob_max_abs_diff == 0.0
    assert a.common_grid == (192, 288)  # 6 and 9 shared starts of 32
    assert a.edge.pixels == 200 * 300 - 192 * 288


def test_edge_band_differences_stay_in_the_edge_band(pair):
    # GIVEN a peer differing only right of the common grid
    ours, probs, labels, tmp = pair
    p2, l2 = probs.copy(), labels.copy()
    p2[:, 290:] += 0.25
    l2[:, 290:] = (l2[:, 290:] + 1) % 3
    peer = _write(tmp / "peer.zarr", "predictions", p2, l2)
    # WHEN compared THEN the common grid agrees exactly and the edge band does not
    a = compare_outputs(open_output(ours, "labels"), open_output(peer, "predictions"), 64, 32)
    assert a.common.label_agreement == 1.0
    assert a.common.prob_max_abs_diff == 0.0
    assert a.edge.label_agreement == pytest.approx(1 - 200 * 10 / a.edge.pixels)
    assert a.edge.prob_max_abs_diff == pytest.approx(0.25)
    assert a.overall.prob_max_abs_diff == pytest.approx(0.25)


def test_uncovered_pixels_and_missing_probabilities(pair):
    # GIVEN ours leaves a block uncovered and the peer has labels only
    ours, probs, labels, tmp = pair
    l1 = labels.copy()
    l1[:50, :50] = UNCOVERED
    ours = _write(tmp / "ours2.zarr", "labels", probs, l1)
    peer = _write(tmp / "peer.zarr", "predictions", None, labels[:190])
    a = compare_outputs(open_output(ours, "labels"), open_output(peer, "predictions"), 64, 32)
    # THEN uncovered pixels are not compared, the shorter extent is used, no probs
    assert a.shape_peer == (190, 300)
    assert a.overall.pixels == 190 * 300 - 50 * 50
    assert a.overall.label_agreement == 1.0
    assert a.overall.prob_max_abs_diff is None


# --- reporting ----------------------------------------------------------------


def _run(engine: str, size: int, rss_gb: float, wall: float) -> EngineRun:
    return EngineRun(
        engine,
        size,
        size * size,
        ("x",),
        returncode=0,
        peak_rss_bytes=int(rss_gb * GB),
        ru_maxrss_bytes=int(rss_gb * GB),
        wall_s=wall,
        cpu_s=wall,
    )


@pytest.fixture
def results():
    skipped = EngineRun(
        "tiatoolbox",
        32768,
        32768**2,
        skipped="skipped: predicted peak 49.6 GB",
        predicted_peak_bytes=int(49.6 * GB),
    )

    def both(size, slide, ours, peer):
        return SizeResult(size, slide, {"ours": ours, "tiatoolbox": peer})

    return [
        both(4096, "a", _run("ours", 4096, 0.2, 2.0), _run("tiatoolbox", 4096, 2.1, 20)),
        both(8192, "b", _run("ours", 8192, 0.5, 7.0), _run("tiatoolbox", 8192, 4.5, 60)),
        both(32768, "c", _run("ours", 32768, 0.3, 300.0), skipped),
    ]


def test_targets(results):
    t = targets(results)
    assert [(s["size"], s["engine"]) for s in t["per_size"]] == [
        (4096, "tiatoolbox"),
        (8192, "tiatoolbox"),
    ]
    small, large = t["per_size"]
    assert small["rss_ok"] is None  # TIAToolbox's RSS target starts at 8k
    assert small["wall_ok"]  # 2 / 20 <= 1/8
    assert not large["rss_ok"]  # 0.5 / 4.5 > 1/10
    assert large["wall_ok"]  # 7 / 60 <= 1/8
    steps = t["reference_scaling"]
    assert [(s["from"], s["to"]) for s in steps] == [(4096, 8192), (8192, 32768)]
    assert steps[0]["area_ratio"] == 4 and steps[0]["linear_ok"]
    assert not steps[1]["linear_ok"]  # wall grew 300 / 7 = 43x for 16x the area


def test_table_json_and_plot(results, tmp_path):
    table = format_table(results)
    assert sum(line.startswith("| ") for line in table.splitlines()) == 7  # header + 3 x 2
    assert "(pred 49.6)" in table and "32768, tiatoolbox: skipped" in table
    data = study_dict(VersusConfig(), results, {"cpus": 2})
    data["nan"] = math.nan
    write_json(tmp_path / "versus.json", data)
    back = json.loads((tmp_path / "versus.json").read_text())
    assert back["nan"] is None
    assert back["results"][2]["runs"]["tiatoolbox"]["skipped"].startswith("skipped")
    plot(results, tmp_path / "versus.png")
    assert (tmp_path / "versus.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_needs_a_slide_or_sizes(tmp_path):
    from harness.cli import main

    assert main(["versus", "tiatoolbox", "--out", str(tmp_path)]) == 2


def test_cli_runs_engines_from_another_directory(tmp_path, monkeypatch):
    # GIVEN a working directory outside the checkout and a relative --out
    from harness.cli import main

    monkeypatch.chdir(tmp_path)
    # WHEN versus runs ours and the dense reference on a small synthetic slide
    code = main(["versus", "--engines", "ours,dense", "--sizes", "512", "--out", "rel",
                 "--model", "passthrough"])  # fmt: skip
    # THEN the report lands under the working directory, both ran and agree bitwise
    assert code == 0
    data = json.loads((tmp_path / "rel" / "versus.json").read_text())
    runs = data["results"][0]["runs"]
    assert runs["ours"]["returncode"] == 0 and runs["dense"]["returncode"] == 0
    assert data["results"][0]["agreement"]["dense"]["overall"]["label_agreement"] == 1.0
    assert (tmp_path / "rel" / "versus.png").is_file()
    assert not (tmp_path / "rel" / "ours").exists()  # outputs removed without --keep-outputs


# --- with the peer venv -------------------------------------------------------

_SAME_WEIGHTS = """
import sys, numpy as np, torch
sys.path.insert(0, {root!r})
from harness.models import build_model
from harness.peers.tiatoolbox_models import build_tiatoolbox_model, HarnessModel
x = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
for name in ("passthrough", "tiny-cnn", "hne-colour"):
    spec = build_model(name)
    ref = spec.module(spec.preprocess(torch.as_tensor(x))).permute(0, 2, 3, 1).detach().numpy()
    got = HarnessModel.infer_batch(build_tiatoolbox_model(name), x, device="cpu")
    assert got.shape == ref.shape and np.array_equal(got, ref), name
print("ok")
"""


@needs_peer
def test_wrapped_models_match_ours_bitwise():
    root = str(Path(__file__).resolve().parents[1])
    proc = subprocess.run(
        [str(DEFAULT_PEER_PYTHON), "-c", _SAME_WEIGHTS.format(root=root)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().endswith("ok")


@pytest.mark.parametrize(
    ("bigtiff", "pages", "readable"),
    [
        pytest.param(False, 2, False, id="classic-pyramid"),
        pytest.param(True, 2, True, id="bigtiff-pyramid"),
        pytest.param(False, 1, True, id="single-page"),
    ],
)
def test_runner_refuses_slides_tiatoolbox_misreads(tmp_path, bigtiff, pages, readable):
    # GIVEN a tiled TIFF WHEN the runner checks it THEN classic multi-page ones are refused
    tifffile = pytest.importorskip("tifffile")
    from harness.peers.tiatoolbox_runner import _check_readable

    path = tmp_path / "s.tiff"
    with tifffile.TiffWriter(path, bigtiff=bigtiff) as tw:
        for k in range(pages):
            tw.write(np.zeros((64 >> k, 64 >> k, 3), np.uint8), tile=(16, 16))
    if readable:
        _check_readable(path)
    else:
        with pytest.raises(SystemExit, match="BigTIFF"):
            _check_readable(path)


_WSIREADER = """
import json, sys
from tiatoolbox.wsicore.wsireader import WSIReader
info = WSIReader.open(sys.argv[1]).info
print(json.dumps({"dims": list(info.slide_dimensions), "mpp": [float(m) for m in info.mpp],
                  "levels": info.level_count}))
"""


@needs_peer
def test_tiatoolbox_wsireader_reads_our_tiff(tmp_path) -> None:
    # GIVEN a pyramidal TIFF from our streaming writer
    from harness.slides import SyntheticSlide, write_tiff

    path = write_tiff(SyntheticSlide(1024, 1536, mpp=0.5), tmp_path / "s.tiff", progress=False)
    # WHEN TIAToolbox's WSIReader opens it (in the peer venv)
    done = subprocess.run(
        [str(DEFAULT_PEER_PYTHON), "-c", _WSIREADER, str(path)],
        capture_output=True, text=True, check=True, timeout=300,
    )  # fmt: skip
    info = json.loads(done.stdout.strip().splitlines()[-1])
    # THEN it reports our dimensions, mpp and pyramid levels
    assert info == {"dims": [1536, 1024], "mpp": [0.5, 0.5], "levels": 2}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(["--engines", "fast", "--sizes", "512"], "unknown engine 'fast'", id="engine"),
        pytest.param(["--engines", "ours,streaming", "--sizes", "512"], "named twice", id="alias"),
        pytest.param(["--sizes", "4k"], "comma-separated integers", id="size-text"),
        pytest.param(["--sizes", "100"], "at least 256 pixels", id="size-small"),
        pytest.param(["missing.tiff"], "does not exist", id="no-slide"),
        pytest.param(["--sizes", "512", "--ram-share", "2"], "ram share", id="share"),
    ],
)
def test_cli_bad_input_is_one_line_and_writes_no_report(tmp_path, args, message):
    # GIVEN a bad engine list, size, slide or share WHEN versus runs in a fresh process
    argv = [sys.executable, "-m", "harness", "versus", *args, "--out", str(tmp_path / "rep")]
    done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=120,
                          cwd=tmp_path)  # fmt: skip
    # THEN one line names the problem, exit 2, no traceback, and no report that looks done
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in done.stderr
    assert not (tmp_path / "rep" / "versus.json").exists()


_BROKEN_ENGINE = "def segment(**kwargs):\n    raise RuntimeError('model weights missing')\n"


@pytest.mark.parametrize(
    ("spec", "code", "message"),
    [
        pytest.param("nosuchmodule:segment", 2, "cannot import engine", id="import"),
        pytest.param(
            "broken:segment", 1, "failed: RuntimeError: model weights missing", id="raises"
        ),
    ],
)
def test_user_engine_errors_are_one_line(tmp_path, spec, code, message):
    # GIVEN a user engine that cannot be imported, or raises
    (tmp_path / "broken.py").write_text(_BROKEN_ENGINE)
    argv = [sys.executable, "-m", "harness.engines", spec, "s.tiff", "--out", "o.zarr"]
    done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=120,
                          cwd=tmp_path)  # fmt: skip
    # THEN its runner says so in one line, with no traceback and no JSON record
    assert done.returncode == code, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in done.stderr
    assert done.stdout.strip() == ""
