"""Serving fixtures: a real `tiny` checkpoint that the sim's robot can run (trained 2 steps on
recorded lift demonstrations, so its ActionSpace, stats and cameras are the sim's)."""

from __future__ import annotations

from pathlib import Path

import pytest

SERVE_IMAGE_PX = 32  # small renders keep the serving tests fast
SERVE_CHUNK_LEN = 4


@pytest.fixture(scope="session")
def sim_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A `tiny` flow-head checkpoint for the sim robot: 32 px front+wrist, chunk 4."""
    from robofm.sim.record import smoke_checkpoint

    root = tmp_path_factory.mktemp("serve_ckpt")
    return smoke_checkpoint(root, image_size=SERVE_IMAGE_PX, chunk_len=SERVE_CHUNK_LEN)
