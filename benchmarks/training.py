"""Training throughput and memory per model preset and action head, on this machine's CPU.

Records a small sim dataset first (pick_place, 20 episodes, 96x96 camera, LeRobot v3 with
h264 video), then for each (preset, head) runs the real `robofm.train.loop.train` for
--steps optimizer steps at batch 8 (one rank, DataLoader in the training process unless
--workers, image augmentation on, vision trainable from step 0, one checkpoint + one
validation batch at the end) and reports:

- samples/s over the steps after the first 3 (warm-up), from the loop's own per-step timers;
- the median per-step data time (next batch + augmentation) and compute time (forward,
  backward, clip, AdamW, schedule);
- the wall time of the whole `train()` call (build, data stats, steps, validation,
  checkpoint) and the training process's peak RSS (VmHWM; DataLoader workers not included).

`tiny` uses the built-in tiny encoders (model_pretrained=False); `small` the shipped
pretrained MobileNetV2 (ImageNet) + frozen MiniLM (model_pretrained=True). Each
configuration runs in its own subprocess so peak RSS covers only that model.

No peer column: LeRobot cannot train our models. For scale, the issue's reference numbers on
this machine: LeRobot 0.6.1 ACT (52M parameters, ResNet18, 96x96, chunk 100) takes ~1.4 s
per training step at batch 8, and SmolVLA ~23 s per step at batch 8.

    .venv/bin/python benchmarks/training.py                      # tiny + small x 4 heads
    .venv/bin/python benchmarks/training.py --configs small:flow --steps 50 --data /tmp/sim
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import report

HEADS = ("bins", "regression", "flow", "diffusion")
DEFAULT = [f"{preset}:{head}" for preset in ("tiny", "small") for head in HEADS]
BATCH = 8
WARMUP_STEPS = 3  # excluded from samples/s (first batches, lazy init, allocator growth)


def record_data(path: Path, episodes: int) -> None:
    """The benchmark dataset: pick_place expert episodes from the built-in sim."""
    from robofm.sim.record import RecordConfig, record

    t0 = time.perf_counter()
    out = record(RecordConfig(tasks=("pick_place",), episodes=episodes, workers=2), path)
    frames = out["info"].get("total_frames", "?")
    print(
        f"recorded {out['episodes']} episodes ({frames} frames) in {path} "
        f"in {time.perf_counter() - t0:.0f} s",
        flush=True,
    )


def measure_one(preset: str, head: str, data: str, steps: int, workers: int) -> dict:
    """Runs inside the subprocess: one `train()` run, timings from its history."""
    import torch
    from safetensors import safe_open

    from robofm.config import MODEL_PRESETS, DataConfig, TrainConfig
    from robofm.train.loop import train

    torch.set_num_threads(2)
    out = Path(tempfile.mkdtemp(prefix="robofm_bench_train_"))
    cfg = TrainConfig(
        model=dataclasses.replace(MODEL_PRESETS[preset], head=head),
        data=DataConfig(
            paths=(data,), batch_size=BATCH, num_workers=workers, val_episodes=2, image_aug=True
        ),
        steps=steps,
        ckpt_every=steps,
        val_batches=1,
        freeze_vision_frac=0.0,  # every timed step trains the whole (trainable) model
        model_pretrained=preset != "tiny",
        out_dir=str(out),
    )
    try:
        t0 = time.perf_counter()
        result = train(cfg)
        run_s = time.perf_counter() - t0
        hist = result["history"][WARMUP_STEPS:]
        with safe_open(str(Path(result["checkpoint"]) / "model.safetensors"), "pt") as f:
            params = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())  # noqa: SIM118
    finally:
        shutil.rmtree(out, ignore_errors=True)
    data_s = [h["data_s"] for h in hist]
    compute_s = [h["compute_s"] for h in hist]
    rss = int(Path("/proc/self/status").read_text().split("VmHWM:")[1].split()[0]) / 1024
    return {
        "preset": preset,
        "head": head,
        "params_M": round(params / 1e6, 1),
        "samples_s": round(BATCH * len(hist) / (sum(data_s) + sum(compute_s)), 1),
        "step_s": round(
            statistics.median(d + c for d, c in zip(data_s, compute_s, strict=True)), 3
        ),
        "data_s": round(statistics.median(data_s), 3),
        "compute_s": round(statistics.median(compute_s), 3),
        "first_loss": round(result["history"][0]["loss"], 3),
        "last_loss": round(result["history"][-1]["loss"], 3),
        "run_s": round(run_s, 1),
        "peak_rss_mb": round(rss),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=DEFAULT, help="preset:head pairs")
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps per config")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    parser.add_argument("--episodes", type=int, default=20, help="sim episodes to record")
    parser.add_argument("--data", default="", help="dataset dir (recorded there if missing)")
    parser.add_argument("--out", default=None, help="JSON path")
    parser.add_argument("--one", nargs=3, help=argparse.SUPPRESS)  # internal: PRESET HEAD DATA
    args = parser.parse_args()
    if args.steps <= WARMUP_STEPS:
        parser.error(f"--steps must exceed the {WARMUP_STEPS} warm-up steps")
    if args.one:
        row = measure_one(*args.one, args.steps, args.workers)
        print("RESULT " + json.dumps(row))
        return
    tmp = None
    if args.data:
        data = Path(args.data)
    else:
        tmp = Path(tempfile.mkdtemp(prefix="robofm_bench_sim_"))
        data = tmp / "pick_place"
    try:
        if not data.exists():
            record_data(data, args.episodes)
        rows = []
        for item in args.configs:
            preset, head = item.split(":")
            cmd = [sys.executable, __file__, "--one", preset, head, str(data)]
            cmd += ["--steps", str(args.steps), "--workers", str(args.workers)]
            env = {**os.environ, "ROBOFM_PROGRESS": "0"}
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=3600, env=env)
            line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
            if line is None:
                err = (out.stderr.strip().splitlines() or ["failed"])[-1]
                rows.append({"preset": preset, "head": head, "error": err[:120]})
            else:
                rows.append(json.loads(line[7:]))
            print(rows[-1], flush=True)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    report("training", rows, args.out)


if __name__ == "__main__":
    main()
