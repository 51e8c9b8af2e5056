"""Shared test helpers: paths to the repository and to ../shared/fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# One intra-op thread per process (inherited by subprocesses): on a 2-core machine, torch's
# default thread pool thrashes as soon as anything else runs, and a subprocess that must
# reproduce in-process results bit for bit needs the same thread count.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("ROBOFM_FIXTURES", REPO.parent / "shared" / "fixtures"))


@pytest.fixture
def fixtures_dir() -> Path:
    """The shared real-data fixtures written by other tools (read-only)."""
    if not FIXTURES.is_dir():
        pytest.fail(f"fixtures not found at {FIXTURES}; set ROBOFM_FIXTURES")
    return FIXTURES


@pytest.fixture(autouse=True)
def _quiet_progress(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests exercise progress bars explicitly; elsewhere they would only clutter output."""
    monkeypatch.setenv("ROBOFM_PROGRESS", os.environ.get("ROBOFM_TEST_PROGRESS", "0"))
