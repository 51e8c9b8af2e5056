"""`train()` under torchrun: real 2-process DDP and FSDP2 on CPU with gloo.

Each launch runs `python -m torch.distributed.run --standalone --nproc_per_node 2` on a small
script that calls `train(make_cfg(**spec))` for one or more specs in turn (every rank) and
dumps each rank's loss history to JSON.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from robofm.config import MODEL_PRESETS, TrainConfig
from robofm.train.loop import latest_checkpoint, train
from tests.train.test_loop import cfg_for, losses

REPO = Path(__file__).resolve().parents[2]

SCRIPT = """\
import json, os, sys
sys.path.insert(0, {repo!r})
import torch
import torch.distributed as dist
from robofm.train.loop import train
from tests.train.test_distributed import make_cfg

for i, spec in enumerate(json.loads(sys.argv[1])):
    result = train(make_cfg(**spec))
    body = {{
        "losses": [h["loss"] for h in result["history"]],
        "checkpoint": result["checkpoint"],
        "rng": torch.rand(4).tolist(),  # this rank's global torch stream after the run
    }}
    with open(os.path.join(spec["out"], f"run{{i}}_rank{{dist.get_rank()}}.json"), "w") as f:
        json.dump(body, f)
dist.destroy_process_group()
"""

# Constant lr after warmup (so a 4-step run is a prefix of a 6-step one), augmentation on,
# vision frozen for step 0 then trained (cfg_for's freeze_vision_frac 0.25 of 4 or 6 steps).
RUN = {"steps": 6, "ckpt_every": 3, "optim": {"min_lr_ratio": 1.0}}


def make_cfg(
    data: str,
    out: str,
    head: str = "regression",
    batch_size: int = 8,
    optim: dict | None = None,
    **kw,
) -> TrainConfig:
    """`cfg_for` with a chosen head, per-rank batch size and OptimConfig fields (JSON-able,
    for the script); `kw` overrides TrainConfig fields."""
    cfg = cfg_for(data, out, model=replace(MODEL_PRESETS["tiny"], image_size=16, head=head))
    cfg = replace(cfg, data=replace(cfg.data, batch_size=batch_size))
    if optim:
        cfg = replace(cfg, optim=replace(cfg.optim, **optim))
    return replace(cfg, **kw)


def torchrun(tmp_path: Path, *specs: dict) -> list[list[dict]]:
    """One 2-rank launch running `train(make_cfg(**spec))` for each spec in order; returns,
    per spec, each rank's dump."""
    script = tmp_path / "ddp_train.py"
    script.write_text(SCRIPT.format(repo=str(REPO)))
    env = {**os.environ, "ROBOFM_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    proc = subprocess.run(
        [*cmd, str(script), json.dumps(specs)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, f"torchrun failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return [
        [json.loads((Path(s["out"]) / f"run{i}_rank{r}.json").read_text()) for r in range(2)]
        for i, s in enumerate(specs)
    ]


@pytest.fixture(scope="module")
def single(toy_dataset, tmp_path_factory):
    """head -> losses of one process at batch 8: what 2 ranks at batch 4 must reproduce."""
    cache: dict[str, list[float]] = {}

    def run(head: str) -> list[float]:
        if head not in cache:
            out = str(tmp_path_factory.mktemp(f"single_{head}"))
            cache[head] = losses(train(make_cfg(toy_dataset, out, head, batch_size=8, **RUN)))
        return cache[head]

    return run


def test_two_ranks_match_one_process_with_the_union_batch(toy_dataset, single, tmp_path):
    """2 ranks x batch 4 == 1 process x batch 8: the ranks' batches are the two halves of
    the single-process batch (positions r, r + 2, ...), augmented alike, and DDP averages the
    gradients, so the losses match step for step. Regression head: its loss draws no noise."""
    spec = {**RUN, "data": toy_dataset, "out": str(tmp_path / "two"), "batch_size": 4}
    ((rank0, rank1),) = torchrun(tmp_path, spec)
    assert rank0["losses"] == rank1["losses"]  # the loss is the mean over both ranks
    assert rank0["losses"] == pytest.approx(single("regression"), rel=1e-4)
    assert single("regression")[-1] < single("regression")[0]


def test_resume_under_ddp_continues_the_uninterrupted_run(toy_dataset, tmp_path):
    """Flow head: the noise each rank draws is a function of (seed, step, rank), so a 2-rank
    run stopped at step 4 and resumed to 6 in a new launch repeats the 6-step run's losses
    exactly."""
    kw = {**RUN, "data": toy_dataset, "head": "flow", "batch_size": 4, "ckpt_every": 2}
    cut = str(tmp_path / "cut")
    ((full, _),) = torchrun(tmp_path, {**kw, "out": str(tmp_path / "full")})
    ((first, _),) = torchrun(tmp_path, {**kw, "out": cut, "steps": 4})
    assert latest_checkpoint(cut).name == "step_0000004"
    ((resumed, other_rank),) = torchrun(tmp_path, {**kw, "out": cut})
    assert first["losses"] == full["losses"][:4]
    assert resumed["losses"] == full["losses"]
    assert all(math.isfinite(x) for x in full["losses"])
    # the two ranks draw different noise (one shared seed would repeat it on every rank)
    assert resumed["rng"] != other_rank["rng"]


def test_fsdp_two_ranks_match_one_process_resume_and_checkpoint(toy_dataset, single, tmp_path):
    """FSDP2 (`fsdp=True`) on gloo, one launch: bins head (no sampling noise; its cached
    key/value decoding runs in validation) gives the losses of one process at batch 8, a run
    stopped at step 4 and resumed by a fresh `train()` (the full optimizer state re-sharded)
    repeats the uninterrupted run; the flow head trains; the gathered checkpoints load as
    plain VLAs."""
    from robofm.models.checkpoint import load_checkpoint

    kw = {**RUN, "data": toy_dataset, "head": "bins", "batch_size": 4, "fsdp": True}
    cut = str(tmp_path / "cut")
    full, first, resumed, flow = torchrun(
        tmp_path,
        {**kw, "out": str(tmp_path / "full")},
        {**kw, "out": cut, "steps": 4, "ckpt_every": 4},
        {**kw, "out": cut, "ckpt_every": 4},
        {**kw, "out": str(tmp_path / "flow"), "head": "flow"},
    )
    assert full[0]["losses"] == full[1]["losses"]
    assert full[0]["losses"] == pytest.approx(single("bins"), rel=1e-4)
    assert full[0]["losses"][-1] < full[0]["losses"][0]
    assert first[0]["losses"] == full[0]["losses"][:4]
    assert resumed[0]["losses"] == full[0]["losses"]
    ls = flow[0]["losses"]
    assert len(ls) == 6 and all(math.isfinite(x) for x in ls)
    for run in (full, flow):
        model, _, spaces = load_checkpoint(run[0]["checkpoint"])
        assert spaces.action.robot == "toy" and model.action_dim == 3
