"""`robofm data ...` as a subprocess on real files."""

from __future__ import annotations

import json

import numpy as np

from robofm.data import detect_format, open_dataset
from tests.test_cli import robofm


def test_info_reports_the_lerobot_fixture(fixtures_dir):
    out = robofm("data", "info", str(fixtures_dir / "lerobot/synth_video_v3"))
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout[: out.stdout.rindex("}") + 1])
    assert (info["format"], info["episodes"], info["frames"]) == ("lerobot", 5, 1500)
    assert info["cameras"] == {"cam": [96, 96]} and info["action_dim"] == 6


def test_convert_rlds_to_lerobot_round_trips(fixtures_dir, tmp_path):
    rlds = fixtures_dir / "rlds/bridge_dataset"
    out = robofm(
        "data", "convert", str(rlds), str(tmp_path / "bridge"), "--split", "val", "--images"
    )
    assert out.returncode == 0, out.stderr
    assert detect_format(rlds) == "rlds" and detect_format(tmp_path / "bridge") == "lerobot"
    src, dst = open_dataset(rlds, split="val"), open_dataset(tmp_path / "bridge")
    assert len(dst) == len(src) == 25
    for i in (0, 24):
        a, b = src.episode(i, images=True), dst.episode(i, images=True)
        assert a.task == b.task
        np.testing.assert_array_equal(a.actions, b.actions)
        np.testing.assert_array_equal(a.images["image_0"], b.images["image_0"])  # PNG: lossless


def test_view_writes_a_png_and_unknown_path_fails(fixtures_dir, tmp_path):
    out = robofm(
        "data",
        "view",
        str(fixtures_dir / "lerobot/synth_video_v3"),
        "--episode",
        "2",
        "--out",
        str(tmp_path / "ep"),
    )
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "ep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = robofm("data", "info", str(tmp_path / "nope"))
    assert bad.returncode == 2 and "nope: no such file or directory" in bad.stderr
