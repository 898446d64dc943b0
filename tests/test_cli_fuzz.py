"""The CLI under random and boundary values: one line and exit 2, never a traceback.

Every numeric option of ``segment`` (and ``render``'s, ``synth``'s, ``compare``'s)
is driven with boundary values (0, -1, huge, NaN, inf, text) through a real
``wsi-harness`` process under an address-space limit, so a value that would
allocate without bound dies visibly instead of taking the machine. Each run
must exit 0 or 2 with no traceback, and a failed run must leave no output
that looks complete.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.output import open_output

LIMIT = str(8 * 2**30)  # bytes (prlimit reads "8G" as 8)

BOUNDARY = st.sampled_from(["0", "-1", "-5", "1", "2", "3", "7", "64", "1e400", "nan", "inf",
                            "-inf", "", "abc", "1.5", "999999999999999999999", "0.0001",
                            "1e-30", "10000000"])  # fmt: skip
INTEGERS = st.integers(-10, 10**7).map(str)
FLOATS = st.floats(allow_nan=True, allow_infinity=True, width=32).map(repr)
VALUE = st.one_of(BOUNDARY, INTEGERS, FLOATS)

SEGMENT_OPTIONS = ["--patch", "--output-patch", "--stride", "--chunk", "--mpp", "--sigma",
                   "--budget", "--batch-size", "--workers", "--threads", "--tolerance", "--scale",
                   "--mean", "--std", "--slide-mpp", "--merge-budget", "--block"]  # fmt: skip


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    argv = ["prlimit", f"--as={LIMIT}", sys.executable, "-m", "harness", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=cwd, check=False)


def _assert_clean(run: subprocess.CompletedProcess[str], args: list[str]) -> None:
    allowed = (0, 1, 2) if args[0] == "compare" else (0, 2)  # compare: 1 = outputs differ
    assert run.returncode in allowed, (args, run.returncode, run.stderr[-2000:])
    assert "Traceback" not in run.stderr, (args, run.stderr[-2000:])
    if run.returncode == 2:
        lines = [ln for ln in run.stderr.splitlines() if ln.startswith("error:")]
        assert len(lines) == 1, (args, run.stderr[-2000:])


def _assert_not_complete(out: Path) -> None:
    if (out / "zarr.json").exists():
        meta = open_output(out, require_complete=False).attrs.get("wsi_harness", {})
        assert not meta.get("complete"), f"a failed run left {out} looking complete"


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(options=st.dictionaries(st.sampled_from(SEGMENT_OPTIONS), VALUE, min_size=1, max_size=3))
def test_segment_options_fail_in_one_line(options: dict[str, str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "o.zarr"
        args = ["segment", "synthetic:300,seed=2", "--out", str(out), "--model", "tiny-cnn",
                "--patch", "64", "--stride", "32", "--chunk", "64", "--no-progress"]  # fmt: skip
        for flag, value in options.items():
            args += [flag, value] if not value.startswith("-") else [f"{flag}={value}"]
        run = _cli(args, Path(tmp))
        _assert_clean(run, args)
        if run.returncode != 0:
            _assert_not_complete(out)


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fuzz") / "o.zarr"
    args = ["segment", "synthetic:256,seed=1", "--out", str(out), "--model", "tiny-cnn",
            "--patch", "64", "--stride", "32", "--chunk", "64", "--no-progress"]  # fmt: skip
    assert _cli(args, out.parent).returncode == 0
    return out


@pytest.mark.parametrize("value", ["0", "-5", "nan", "abc", "1e400", "99999999999"])
def test_render_compare_and_synth_values_fail_in_one_line(finished: Path, value: str) -> None:
    cwd = finished.parent

    def flag(name: str) -> list[str]:
        return [name, value] if not value.startswith("-") else [f"{name}={value}"]

    cases = [
        ["render", str(finished), "--png", str(cwd / f"r{value}.png"), *flag("--max-side")],
        ["compare", str(finished), str(finished), *flag("--atol")],
    ]
    if value in ("0", "-5", "nan", "abc"):  # a valid huge size would really be written
        cases.append(["synth", str(cwd / f"s{value}.tiff"), *flag("--size")])
    for args in cases:
        run = _cli(args, cwd)
        _assert_clean(run, args)
        if args[0] == "compare" and value in ("-5", "nan", "abc", "1e400"):
            assert run.returncode == 2, "--atol must be a finite number >= 0"
