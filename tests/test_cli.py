from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from robofm.cli import VERBS

EXPECTED_VERBS = {"data", "train", "eval", "serve", "run", "bench", "deploy", "demo", "sim"}


def robofm(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the installed console script (next to this interpreter) as a subprocess."""
    script = Path(sys.executable).parent / "robofm"
    assert script.exists(), f"console script not installed at {script}"
    return subprocess.run(
        [str(script), *args], capture_output=True, text=True, cwd=cwd, timeout=120
    )


def test_top_level_help_lists_every_verb():
    out = robofm("--help")
    assert out.returncode == 0, out.stderr
    listed = {
        line.split()[0]
        for line in out.stdout.splitlines()
        if line.startswith("  ") and line.split()[0] in VERBS
    }
    assert listed == EXPECTED_VERBS == set(VERBS)


@pytest.mark.parametrize("verb", sorted(EXPECTED_VERBS))
def test_each_verb_help_exits_zero(verb):
    out = robofm(verb, "--help")
    assert out.returncode == 0, out.stderr
    assert "usage" in out.stdout.lower()
    if VERBS[verb].run is None:
        assert "not in this build yet" in out.stdout


def test_every_verb_runs_in_this_build():
    assert [v for v in EXPECTED_VERBS if VERBS[v].run is None] == []


def test_a_pending_verb_fails_clearly(monkeypatch, capsys):
    from robofm.cli import Verb, main

    monkeypatch.setitem(VERBS, "teleop", Verb("drive the robot", "robofm teleop", None, "#12"))
    assert main(["teleop"]) == 2
    err = capsys.readouterr().err
    assert "robofm teleop" in err and "not in this build yet" in err and "#12" in err


def test_unknown_verb_and_version():
    out = robofm("fly")
    assert out.returncode == 2 and "unknown verb 'fly'" in out.stderr
    out = robofm("--version")
    assert out.returncode == 0 and out.stdout.startswith("robofm ")


def test_demo_quick_runs_every_stage_end_to_end(tmp_path):
    out = robofm("demo", "--quick", "--out-dir", str(tmp_path / "demo"))
    assert out.returncode == 0, out.stderr
    demo = tmp_path / "demo"
    report = (demo / "report.md").read_text()
    for stage in ("setup", "record", "check", "finetune", "eval"):
        assert re.search(rf"^\| {stage} \| \d+ s \|", report, re.M), stage
    assert "| transfer | not run (`--full` only) |" in report
    assert (demo / "data" / "meta" / "info.json").exists()
    assert (demo / "quality" / "quality_report.json").exists()
    assert (demo / "train" / "training_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the table: one row per split, n episodes each, and the seen rate stated in the report
    results = json.loads((demo / "eval" / "results.json").read_text())
    pooled = results["pooled"]
    assert list(pooled) == ["train", "novel_object", "novel_instruction", "novel_scene"]
    assert all(row["n"] == 2 for row in pooled.values())
    seen = pooled["train"]["rate"]
    assert f"**Seen-split success: {100 * seen:.0f}%**" in report
    for split in pooled:
        assert re.search(rf"^\| lift \| {split} \| \d/2 \|", report, re.M), split
    assert (demo / "eval" / "success.png").exists()
    assert len(list((demo / "eval" / "videos").glob("*.mp4"))) == 4  # one per split
    log = (demo / "log.jsonl").read_text().splitlines()
    assert '"event": "demo.start"' in log[0] and '"event": "demo.end"' in log[-1]
    assert "ran setup, record, check, finetune, eval" in out.stdout
    assert f"seen-split success {100 * seen:.0f}%" in out.stdout


def test_bad_option_is_a_usage_error():
    out = robofm("demo", "--seed", "many")
    assert out.returncode == 2
    assert "seed" in out.stderr
