"""`robofm eval` end to end with the reference policies."""

from __future__ import annotations

import json

from tests.test_cli import robofm


def test_eval_cli_writes_the_table_json_chart_and_videos(tmp_path):
    out = tmp_path / "eval"
    r = robofm(
        "eval",
        "expert",
        "--task",
        "lift",
        "--split",
        "train",
        "novel_instruction",
        "--episodes",
        "2",
        "--workers",
        "1",
        "--videos",
        "1",
        "--out",
        str(out),
    )
    assert r.returncode == 0, r.stderr
    assert "| lift | train | 2/2 |" in r.stdout and "novel_instruction" in r.stdout
    body = json.loads((out / "results.json").read_text())
    assert body["summary"]["lift"]["novel_instruction"]["n"] == 2
    assert (out / "success.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(list((out / "videos").glob("lift_*_success.mp4"))) == 2


def test_eval_cli_rejects_a_missing_checkpoint_and_an_unknown_task(tmp_path):
    r = robofm("eval", str(tmp_path / "nope"), "--episodes", "1")
    assert r.returncode == 2 and "not a checkpoint directory" in r.stderr
    r = robofm(
        "eval",
        "random",
        "--task",
        "juggle",
        "--episodes",
        "1",
        "--workers",
        "1",
        "--out",
        str(tmp_path / "x"),
    )
    assert r.returncode == 2 and "pick_place" in r.stderr
