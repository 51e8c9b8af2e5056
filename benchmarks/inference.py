"""Action-chunk latency per model preset and action head, on this machine's CPU.

For each (preset, head): build the model (random init for full-size presets, shipped
pretrained weights for `small`), then time `sample_actions` for one observation (batch 1,
warm, under `torch.inference_mode`), reporting median and p90 ms, the control rate the chunk
sustains if executed whole (H / latency), the parameter count and the process's peak RSS.
For flow heads the latency is split into the prefix (vision + language + trunk, run once per
chunk) and the integration steps (the action expert, which reuses the cached prefix
keys/values). Optionally (--train) also one training step at batch 8.

Each configuration runs in its own subprocess so peak RSS covers only that model.

    .venv/bin/python benchmarks/inference.py                       # default grid
    .venv/bin/python benchmarks/inference.py --configs smolvla-size:flow --train
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import report

DEFAULT = [
    *(f"tiny:{h}" for h in ("bins", "regression", "flow", "diffusion")),
    *(f"small:{h}" for h in ("bins", "regression", "flow", "diffusion")),
    "smolvla-size:flow",
    "smolvla-size:regression",
]


def _obs(cfg, cams, state_dim: int, b: int = 1):
    from robofm.types import Observation

    s = cfg.image_size
    return Observation(
        images={c: torch.rand(b, cfg.n_obs_steps, 3, s, s) for c in cams},
        image_mask={c: torch.ones(b, dtype=torch.bool) for c in cams},
        state=torch.randn(b, cfg.n_obs_steps, state_dim),
        state_mask=torch.ones(b, state_dim, dtype=torch.bool),
        prompt=["pick up the red cube and put it on the blue plate"] * b,
        embodiment=["robot"] * b,
    )


def measure_one(preset: str, head: str, reps: int, train: bool) -> dict:
    """Runs inside the subprocess: build, warm up, time."""
    from robofm.config import MODEL_PRESETS
    from robofm.models.vla import VLA
    from robofm.types import Batch

    torch.set_num_threads(2)
    cfg = dataclasses.replace(MODEL_PRESETS[preset], head=head)
    full = bool(cfg.language_size or cfg.vision_size)
    cams = ("front",) if full else ("front", "wrist")
    dims = 6
    torch.manual_seed(0)
    model = VLA(
        cfg, cameras=cams, state_dims={"robot": dims}, action_dim=dims, pretrained=not full
    ).eval()
    obs = _obs(cfg, cams, dims)
    times, prefix_ms = [], []
    with torch.inference_mode():
        for i in range(reps + 2):
            t0 = time.perf_counter()
            prefix = model.encode_prefix(obs)
            t1 = time.perf_counter()
            chunk = model.head.sample(prefix)
            t2 = time.perf_counter()
            if i >= 2:  # warm
                times.append((t2 - t0) * 1000)
                prefix_ms.append((t1 - t0) * 1000)
    assert chunk.shape == (1, cfg.chunk_len, dims)
    times.sort()
    med = statistics.median(times)
    row = {
        "preset": preset,
        "head": head,
        "params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
        "chunk_len": cfg.chunk_len,
        "latency_ms_median": round(med, 1),
        "latency_ms_p90": round(times[int(0.9 * (len(times) - 1))], 1),
        "prefix_ms": round(statistics.median(prefix_ms), 1),
        "head_ms": round(med - statistics.median(prefix_ms), 1),
        "chunk_rate_hz": round(cfg.chunk_len / (med / 1000), 1),
    }
    if train:
        model.train()
        b = 8
        batch = Batch(
            obs=_obs(cfg, cams, dims, b),
            actions=torch.randn(b, cfg.chunk_len, dims),
            action_is_pad=torch.zeros(b, cfg.chunk_len, dtype=torch.bool),
            action_mask=torch.ones(b, dims, dtype=torch.bool),
            episode_index=torch.zeros(b, dtype=torch.long),
            dataset_index=torch.zeros(b, dtype=torch.long),
        )
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
        steps = []
        for i in range(3):
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            model.compute_loss(batch).mean().backward()
            opt.step()
            if i >= 1:
                steps.append(time.perf_counter() - t0)
        row["train_step_s_b8"] = round(statistics.median(steps), 2)
    rss = int(Path("/proc/self/status").read_text().split("VmHWM:")[1].split()[0]) / 1024
    row["peak_rss_mb"] = round(rss)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=DEFAULT, help="preset:head pairs")
    parser.add_argument("--reps", type=int, default=10, help="timed chunks per config")
    parser.add_argument("--train", action="store_true", help="also time a training step (B=8)")
    parser.add_argument("--out", default=None, help="JSON path")
    parser.add_argument("--one", nargs=2, help=argparse.SUPPRESS)  # internal: PRESET HEAD
    args = parser.parse_args()
    if args.one:
        print("RESULT " + json.dumps(measure_one(*args.one, args.reps, args.train)))
        return
    rows = []
    for item in args.configs:
        preset, head = item.split(":")
        cmd = [sys.executable, __file__, "--one", preset, head, "--reps", str(args.reps)]
        if args.train:
            cmd.append("--train")
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
        line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            err = (out.stderr.strip().splitlines() or ["failed"])[-1]
            rows.append({"preset": preset, "head": head, "error": err[:120]})
        else:
            rows.append(json.loads(line[7:]))
        print(rows[-1], flush=True)
    report("inference", rows, args.out)


if __name__ == "__main__":
    main()
