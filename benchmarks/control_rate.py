"""Control rate and underruns of the robot runtime: async action chunking vs synchronous calls.

A real tiny policy (recorded lift demonstrations, 2 training steps, 32 px, chunk H=16) is
slowed to 3 Hz: its model call is padded with sleep to --latency-ms (333 ms) and it is
served by a real `robofm serve` server (`serve_in_background`) over the websocket. The
robot is the MuJoCo sim (lift, 32 px cameras) driven through `PolicyClient`, `ControlLoop`
and `SafetyLayer` at --hz (20 Hz), one --seconds long episode per configuration:

- sync k=8 / k=16: request, wait (hold actions at the loop rate), execute k actions;
- async k=8 with ACT temporal ensembling, and with blend=none: the next chunk is requested
  ahead of need from the measured p90 latency; stale leading actions are dropped.

Columns: achieved loop rate and rate of policy (non-hold) actions in Hz, underruns (ticks
with no action: hold sent), inference latency p50/p99 in ms (request to chunk available, as
the robot sees it), mean |action jump| at chunk boundaries (robot units: m per step for dx,
dy, dz; 0..1 gripper) next to the mean change between any two consecutive policy actions
(this barely trained policy is noisy within a chunk too), chunks used and dropped stale
actions.

    .venv/bin/python benchmarks/control_rate.py                  # ~20 s per configuration
    .venv/bin/python benchmarks/control_rate.py --seconds 5      # quicker look

Writes benchmarks/results/control_rate.json. The ActionSpace contract check is skipped: the
checkpoint's contract says 10 Hz and this benchmark deliberately runs the sim at --hz.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import report

CONFIGS = [  # (name, mode, execute_k, blend)
    ("sync k=8", "sync", 8, "none"),
    ("sync k=16", "sync", 16, "none"),
    ("async k=8 ensemble", "async", 8, "ensemble"),
    ("async k=8 none", "async", 8, "none"),
]


def tiny_checkpoint(root: Path, chunk_len: int, image_px: int) -> Path:
    """Record 2 lift demonstrations and train `tiny` for 2 steps: a real, fast checkpoint."""
    from robofm.sim.record import smoke_checkpoint

    return smoke_checkpoint(root, image_size=image_px, chunk_len=chunk_len)


def slow_down(policy, latency_ms: float) -> None:
    """Pad the model call to `latency_ms` (the server's per-connection policies share it)."""
    model = policy.model
    inner = model.sample_actions
    target_s = latency_ms / 1000.0

    def sample_actions(*args, **kwargs):
        t0 = time.perf_counter()
        out = inner(*args, **kwargs)
        time.sleep(max(0.0, target_s - (time.perf_counter() - t0)))
        return out

    model.sample_actions = sample_actions  # instance attribute shadows the method


def run_config(url: str, name: str, mode: str, k: int, blend: str, args) -> dict:
    from robofm.serve.client import PolicyClient
    from robofm.serve.run import SimRobot
    from robofm.serve.runtime import ControlLoop, LoopConfig
    from robofm.serve.safety import SafetyConfig, SafetyLayer
    from robofm.sim.env import TabletopEnv

    steps = int(args.seconds * args.hz)
    env = TabletopEnv(task="lift", image_size=args.image_px, control_hz=args.hz, max_steps=steps)
    space = env.robot_action_space
    safety = SafetyLayer(
        SafetyConfig.from_action_space(replace(space, chunk_len=args.chunk_len), watchdog_ms=2000)
    )
    loop_cfg = LoopConfig(control_hz=args.hz, execute_k=k, mode=mode, blend=blend)
    hold = np.where(space.delta_mask, 0.0, space.gripper_open)
    with PolicyClient(url, timeout_s=30.0) as client, ControlLoop(client, safety, loop_cfg) as loop:
        obs, _ = env.reset(seed=args.seed)
        stats = loop.run_episode(SimRobot(env, obs), steps, initial_action=hold)
    env.close()
    s = stats.summary()
    return {
        "config": name,
        "target_hz": args.hz,
        "rate_hz": round(s["rate_hz"], 2),
        "policy_hz": round(s["policy_rate_hz"], 2),
        "steps": s["steps"],
        "underruns": s["underruns"],
        "underrun_%": round(100 * s["underrun_frac"], 1),
        "late": s["late_steps"],
        "lat_p50_ms": round(s["latency_ms_p50"], 1),
        "lat_p99_ms": round(s["latency_ms_p99"], 1),
        "jump": round(s["boundary_jump_mean"], 4),
        "step_jump": round(s["step_jump_mean"], 4),
        "chunks": s["chunks_received"],
        "dropped": s["dropped_actions"],
        "watchdog": s["safety"]["watchdog"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="run time per config, s")
    parser.add_argument("--hz", type=float, default=20.0, help="control rate, Hz")
    parser.add_argument("--latency-ms", type=float, default=333.0, help="padded policy call")
    parser.add_argument("--chunk-len", type=int, default=16, help="H of the tiny checkpoint")
    parser.add_argument("--image-px", type=int, default=32, help="camera and model image size")
    parser.add_argument("--seed", type=int, default=1_000_000, help="scene seed")
    parser.add_argument("--checkpoint", default=None, help="use this checkpoint instead")
    parser.add_argument("--out", default=None, help="JSON path (default results/)")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)  # one core for the policy server, one for the robot loop
    from robofm.policy import Policy
    from robofm.serve.server import serve_in_background

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = args.checkpoint or tiny_checkpoint(Path(tmp), args.chunk_len, args.image_px)
        policy = Policy.from_checkpoint(ckpt)
        args.chunk_len = policy.model.cfg.chunk_len
        slow_down(policy, args.latency_ms)
        rows = []
        with serve_in_background(policy, rate_limit_hz=0) as server:
            for name, mode, k, blend in CONFIGS:
                print(f"running {name} for {args.seconds:g} s ...", flush=True)
                rows.append(run_config(server.url, name, mode, k, blend, args))
    print(
        f"policy padded to {args.latency_ms:g} ms per chunk (H={args.chunk_len}), loop at "
        f"{args.hz:g} Hz for {args.seconds:g} s per configuration"
    )
    report("control_rate", rows, out=args.out)


if __name__ == "__main__":
    main()
