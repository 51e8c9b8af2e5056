"""Serving fixtures: a real `tiny` checkpoint that the sim's robot can run (trained 2 steps on
recorded lift demonstrations, so its ActionSpace, stats and cameras are the sim's)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

SERVE_IMAGE_PX = 32  # small renders keep the serving tests fast
SERVE_CHUNK_LEN = 4


@pytest.fixture(scope="session")
def sim_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A `tiny` flow-head checkpoint for the sim robot: 32 px front+wrist, chunk 4."""
    from robofm.config import MODEL_PRESETS, DataConfig, OptimConfig, TrainConfig
    from robofm.sim.record import RecordConfig, record
    from robofm.train.loop import latest_checkpoint, train

    root = tmp_path_factory.mktemp("serve_ckpt")
    data = root / "lift"
    record(RecordConfig(tasks=("lift",), episodes=2, workers=1, image_size=SERVE_IMAGE_PX), data)
    model = replace(MODEL_PRESETS["tiny"], image_size=SERVE_IMAGE_PX, chunk_len=SERVE_CHUNK_LEN)
    cfg = TrainConfig(
        model=model,
        data=DataConfig(paths=(str(data),), batch_size=4),
        optim=OptimConfig(warmup_steps=1),
        steps=2,
        ckpt_every=2,
        out_dir=str(root / "run"),
        model_pretrained=False,
    )
    train(cfg)
    return latest_checkpoint(root / "run")
