"""The README's two set-up commands and .ci/run must not drift apart."""

from __future__ import annotations

import re

from tests.conftest import REPO


def quick_start_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text.split("## Quick start", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, "README quick start has no ```bash block"
    return [
        ln.strip()
        for ln in block.group(1).splitlines()
        if ln.strip() and not ln.strip().startswith("#")
    ]


def test_readme_has_exactly_two_setup_commands():
    commands = quick_start_commands()
    assert len(commands) == 2, commands
    assert "robofm demo" in commands[0]
    assert "pytest" in commands[1]


def test_ci_runs_the_readme_test_command_verbatim():
    test_command = quick_start_commands()[1]
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    runnable = [ln.strip() for ln in ci if ln.strip() and not ln.strip().startswith("#")]
    assert test_command in runnable
    assert "set -e" in "\n".join(ci) or "set -euo pipefail" in ci


def test_setup_script_pins_cpu_torch():
    script = (REPO / "scripts" / "install.sh").read_text()
    assert '"torch==2.13.0"' in script
    pyproject = (REPO / "pyproject.toml").read_text()
    assert '"torch==2.13.0"' in pyproject
