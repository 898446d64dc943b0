"""The segment, compare and render commands, through the real CLI entry point."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from harness.cli import main

ARGS = ["--patch", "64", "--stride", "32", "--chunk", "64", "--no-progress"]


def test_segment_json_then_compare_and_render(tmp_path, capsys) -> None:
    # GIVEN a streaming and a dense run of the same virtual slide
    a, b = str(tmp_path / "a.zarr"), str(tmp_path / "b.zarr")
    assert main(["segment", "synthetic:512", "--out", a, "--json", *ARGS]) == 0
    record = json.loads(capsys.readouterr().out)
    assert main(["segment", "synthetic:512", "--out", b, "--engine", "dense", *ARGS]) == 0
    # THEN the record carries the documented keys, the outputs compare equal, and render works
    keys = {"patches", "chunks_written", "peak_live_bytes", "spill_bytes", "wall_s", "output"}
    assert keys <= set(record) and record["output"] == a
    assert main(["compare", a, b, "--json"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["bitwise_equal"] is True
    assert main(["render", a, "--png", str(tmp_path / "l.png"), "--max-side", "100"]) == 0
    with Image.open(tmp_path / "l.png") as png:
        assert max(png.size) <= 100 and png.size[0] == png.size[1] > 50


def test_compare_exits_1_beyond_tolerance(tmp_path) -> None:
    a, b = str(tmp_path / "a.zarr"), str(tmp_path / "b.zarr")
    main(["segment", "synthetic:256", "--out", a, *ARGS])
    main(["segment", "synthetic:256", "--out", b, "--model", "tiny-cnn", *ARGS])
    assert main(["compare", a, b]) == 1
    assert main(["compare", a, b, "--atol", "1.0"]) == 0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        pytest.param(["--stride", "0"], "stride", id="stride-0"),
        pytest.param(["--stride", "128"], "gaps", id="stride-above-patch"),
        pytest.param(["--budget", "lots"], "byte size", id="bad-budget"),
        pytest.param(["--budget", "10kB"], "below the", id="budget-below-one-patch"),
        pytest.param(["--budget", "64"], "64 B is below", id="budget-64-bytes"),
        pytest.param(["--model", "nope"], "built-in", id="unknown-model"),
        pytest.param(["--mask", "/no/such.png"], "does not exist", id="missing-mask"),
    ],
)
def test_bad_input_is_one_error_line(tmp_path, capsys, argv, message) -> None:
    code = main(["segment", "synthetic:256", "--out", str(tmp_path / "o.zarr"), *ARGS, *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error:") and message in err[0]
    assert "Traceback" not in "".join(err)


def test_unreadable_slide_is_one_error_line(tmp_path, capsys) -> None:
    bogus = tmp_path / "slide.tiff"
    bogus.write_bytes(b"not a tiff at all")
    assert main(["segment", str(bogus), "--out", str(tmp_path / "o.zarr"), *ARGS]) == 2
    assert capsys.readouterr().err.startswith("error:")
    assert not (tmp_path / "o.zarr").exists()


def test_render_colours_classes_and_marks_uncovered_black(tmp_path) -> None:
    from harness.render import label_overview

    out = str(tmp_path / "m.zarr")
    main(
        ["segment", "synthetic:512", "--out", out, "--mask", "auto", "--model", "hne-colour", *ARGS]
    )
    image = label_overview(out, max_side=512)
    colours = {tuple(c) for c in np.unique(image.reshape(-1, 3), axis=0)}
    assert (236, 236, 236) in colours and (232, 120, 170) in colours


def test_segment_export_writes_a_valid_ome_zarr_beside_the_output(tmp_path) -> None:
    # GIVEN a segmentation asked to export when it finishes
    out = tmp_path / "s.zarr"
    code = main(["segment", "synthetic:512", "--out", str(out), *ARGS, "--export", "ome-zarr"])
    # THEN the OME-Zarr is beside it, and its level-0 labels are the output's
    import zarr

    assert code == 0
    from harness.output.ome_zarr import LABEL_NAME

    level0 = zarr.open_group(tmp_path / "s.ome.zarr", mode="r")["labels"][LABEL_NAME]["0"]
    source = zarr.open_group(out, mode="r")["labels"][:]
    assert np.array_equal(np.asarray(level0[:]), source)


def test_upsampling_past_level_0_is_warned_with_the_factor(tmp_path, capsys) -> None:
    base = ["segment", "synthetic:256", "--model", "tiny-cnn", "--patch", "64", "--stride", "32",
            "--chunk", "64", "--no-progress"]  # fmt: skip
    assert main([*base, "--out", str(tmp_path / "a.zarr"), "--mpp", "0.125"]) == 0
    assert "upsampled 4x" in capsys.readouterr().err
    assert main([*base, "--out", str(tmp_path / "b.zarr"), "--mpp", "0.5"]) == 0
    assert "warning" not in capsys.readouterr().err


HELPED = ("segment", "compare", "render", "export", "synth", "info", "profile")


def _option_blocks(help_text: str) -> dict[str, str]:
    """Each option's help block (its lines up to the next option), keyed by its first flag."""
    blocks: dict[str, str] = {}
    key = None
    for line in help_text.splitlines():
        if line.startswith("  -"):
            key = line.split()[0].rstrip(",")
            blocks[key] = line
        elif key is not None and line.startswith("      "):
            blocks[key] += " " + line.strip()
        else:
            key = None
    return blocks


@pytest.mark.parametrize("command", HELPED)
def test_help_describes_the_command_and_every_default(command) -> None:
    import argparse

    from harness.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    parser = sub.choices[command]
    text = parser.format_help()
    blocks = _option_blocks(text)
    assert parser.description, f"{command} has no description"
    valued = [a for a in parser._actions if a.option_strings and a.nargs != 0 and not a.required]
    for action in valued:
        block = blocks[action.option_strings[0]]
        assert "default" in block or "required" in block, f"{command}: {block}"
        assert block.count("(default") <= 1, f"{command}: two defaults in {block}"
    assert "(default: None)" not in text and "(default: False)" not in text


def test_segment_help_names_the_models_and_pt2(capsys) -> None:
    from harness.preprocess import BUILTIN_MODELS

    assert main(["segment", "--help"]) == 0
    model = _option_blocks(capsys.readouterr().out)["--model"]
    assert all(name in model for name in BUILTIN_MODELS) and ".pt2" in model
