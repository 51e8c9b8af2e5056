from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from robofm.cli import VERBS

EXPECTED_VERBS = {"data", "train", "eval", "serve", "bench", "demo", "sim"}


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


@pytest.mark.parametrize("verb", sorted(v for v in EXPECTED_VERBS if VERBS[v].run is None))
def test_pending_verbs_fail_clearly(verb):
    out = robofm(verb)
    assert out.returncode == 2
    assert "not in this build yet" in out.stderr and "issue #" in out.stderr


def test_unknown_verb_and_version():
    out = robofm("fly")
    assert out.returncode == 2 and "unknown verb 'fly'" in out.stderr
    out = robofm("--version")
    assert out.returncode == 0 and out.stdout.startswith("robofm ")


def test_demo_runs_available_stages_and_reports_the_rest(tmp_path):
    out = robofm("demo", "--quick", "--out-dir", str(tmp_path / "demo"))
    assert out.returncode == 0, out.stderr
    report = (tmp_path / "demo" / "report.md").read_text()
    assert "| setup | done |" in report
    assert "| record | done |" in report and "| check | done |" in report
    assert (tmp_path / "demo" / "data" / "meta" / "info.json").exists()
    assert (tmp_path / "demo" / "quality" / "quality_report.json").exists()
    assert "not in this build" in report  # skipped stages are reported, not hidden
    log = (tmp_path / "demo" / "log.jsonl").read_text().splitlines()
    assert '"event": "demo.start"' in log[0] and '"event": "demo.end"' in log[-1]
    assert "ran setup, record, check" in out.stdout


def test_bad_option_is_a_usage_error():
    out = robofm("demo", "--seed", "many")
    assert out.returncode == 2
    assert "seed" in out.stderr
