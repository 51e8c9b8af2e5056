"""Action-chunk latency per model preset and action head, on this machine's CPU.

A thin wrapper over `robofm.deploy.bench` (the library behind `robofm bench`): for each
preset:head pair it builds the model in its own subprocess (random init for full-size presets,
shipped pretrained weights for `small`) and times `sample_actions` for one observation (batch
1, warm, under `torch.inference_mode`): cold call, median and p90 ms, the split into prefix
(vision + language + trunk) and head, the control rates (replanning every step, and chunked:
H / p90), parameters, weights and peak memory. Presets whose fp32 weights exceed
--max-weights-gb are reported from a meta-device count and marked skipped. Training-step
throughput is `benchmarks/training.py`.

    .venv/bin/python benchmarks/inference.py                       # default grid
    .venv/bin/python benchmarks/inference.py --configs smolvla-size:flow --compile
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import report
from robofm.deploy.bench import bench_presets

DEFAULT = [
    *(f"tiny:{h}" for h in ("bins", "regression", "flow", "diffusion")),
    *(f"small:{h}" for h in ("bins", "regression", "flow", "diffusion")),
    "smolvla-size:flow",
    "smolvla-size:regression",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=DEFAULT, help="preset:head pairs")
    parser.add_argument("--reps", type=int, default=10, help="timed chunks per config")
    parser.add_argument("--warmup", type=int, default=2, help="untimed chunks first")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per config")
    parser.add_argument("--max-weights-gb", type=float, default=2.0, help="larger: skipped")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--out", default=None, help="JSON path")
    args = parser.parse_args()
    rows = []
    for item in args.configs:
        preset, head = item.split(":")
        rows += bench_presets(
            [preset],
            [head],
            device=args.device,
            reps=args.reps,
            warmup=args.warmup,
            max_weights_gb=args.max_weights_gb,
            compile=args.compile,
            threads=args.threads,
        )
        print(rows[-1], flush=True)
    report("inference", rows, args.out)


if __name__ == "__main__":
    main()
