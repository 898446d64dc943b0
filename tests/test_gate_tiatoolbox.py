"""A third-party engine gated by the harness: TIAToolbox's ``SemanticSegmentor`` (issue 16).

Skipped without the TIAToolbox peer virtualenv (``scripts/peer_env.sh tiatoolbox``). Two
ways in, both measured on real processes:

* ``examples/tiatoolbox_ci/test_memory_gates.py`` is the module TIAToolbox's own CI could
  keep; it runs here under the peer venv's pytest, with wsi-harness installed there
  (``peer/tiatoolbox/bin/pip install . pytest``), and its gates must fail on TIAToolbox
  2.1.3, whose peak grows with the slide;
* from our venv, ``assert_bounded`` over :func:`harness.engines.engine_command`, the same
  engine adapter ``versus`` and ``scaling --engine tiatoolbox`` use.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from harness.engines import engine_command, peer_python

PEER = peer_python("tiatoolbox")
ROOT = Path(__file__).resolve().parents[1]
MODULE = ROOT / "examples" / "tiatoolbox_ci" / "test_memory_gates.py"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not PEER.is_file(),
        reason=f"TIAToolbox peer venv absent ({PEER}): scripts/peer_env.sh tiatoolbox",
    ),
]


def _peer_has_plugin() -> bool:
    probe = [str(PEER), "-c", "import pytest, harness.testing.pytest_plugin"]
    return subprocess.run(probe, capture_output=True, check=False, timeout=120).returncode == 0


def test_the_ci_module_gates_semantic_segmentor(tmp_path: Path) -> None:
    if not _peer_has_plugin():
        pytest.skip(f"wsi-harness and pytest not installed in {PEER.parent.parent}: "
                    f"{PEER.parent / 'pip'} install {ROOT} pytest")  # fmt: skip
    # GIVEN the CI module, run as TIAToolbox would, with its own (empty) pytest config
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    argv = [str(PEER), "-m", "pytest", str(MODULE), "-c", str(tmp_path / "pytest.ini"),
            "--rootdir", str(tmp_path), "-rA", "--runxfail"]  # fmt: skip
    # WHEN its xfail marks are ignored (--runxfail)
    done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=1800)
    out = done.stdout + done.stderr
    # THEN the ceiling passes and both gates fail on TIAToolbox 2.1.3, saying by how much
    assert done.returncode == 1, out[-4000:]
    assert re.search(r"\b1 passed\b", out) and re.search(r"\b2 failed\b", out), out[-4000:]
    assert "limit_rss: process-tree peak RSS" in out, out[-4000:]
    assert "over the limit of 2 GB" in out, out[-4000:]
    growth = re.search(r"SemanticSegmentor peak RSS growth 2048 -> 8192: \+([\d.]+)%", out)
    assert growth and float(growth.group(1)) > 50, out[-4000:]


def test_engine_command_gates_tiatoolbox_from_our_venv(wsi_tiff, tmp_path: Path) -> None:
    from harness.testing.pytest_plugin import assert_bounded

    # GIVEN the TIAToolbox adapter's command, with {slide} and {out} filled per size
    command = engine_command("tiatoolbox")
    # WHEN assert_bounded runs it on a 1k and a 4k slide, each in a fresh process
    with pytest.raises(AssertionError) as failed:
        assert_bounded(command, sizes=[1024, 4096], max_growth="5%", slides=wsi_tiff,
                       out_dir=tmp_path, name="tiatoolbox", timeout_s=900)  # fmt: skip
    # THEN it fails, with the growth and the table
    message = str(failed.value)
    growth = re.search(r"tiatoolbox peak RSS growth 1024 -> 4096: \+([\d.]+)%.*FAIL", message)
    assert growth and float(growth.group(1)) > 10, message
    assert (tmp_path / "bounded.json").is_file() and (tmp_path / "bounded.png").is_file()
