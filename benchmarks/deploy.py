"""Float vs INT8 vs distilled: what each deployment lever costs in success and buys in speed.

For a trained teacher checkpoint (the demo's `small` policy by default use):
1. an INT8 copy (`robofm deploy quantize`), unless `--int8` names one;
2. a distilled `specialist` student (`robofm deploy distill`, teacher labels on `--data` plus
   DAgger rounds), unless `--student` names one or more;
3. per checkpoint, in its own subprocess: load time, resident memory after loading and
   inferring (and the peak, which also counts the memory-mapped weights file while loading),
   cold latency (first `Policy.infer`) and warm median / p90 latency over `--calls` calls on a
   synthetic observation, at `--threads` torch threads (1 = one core, as on a small robot
   computer; evaluation workers use 1 too);
4. closed-loop success per split on the same seeds for all three (`robofm.deploy.compare`),
   with the latency measured inside those episodes.

    .venv/bin/python benchmarks/deploy.py --teacher runs/demo/train/checkpoints/step_0004000 \
        --data runs/demo/data --episodes 20

Prints one table, writes `results/deploy.json` and `results/deploy.png`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS_DIR, report

CAMERA_PX = 96  # the sim cameras' size: every model gets these frames and resizes them itself


def measure(path: str, calls: int, threads: int) -> dict:
    """Runs inside the subprocess: load, one cold call, `calls` warm calls on 96 px frames."""
    import numpy as np
    import torch

    from robofm.deploy.bench import peak_rss_mib, state_bytes, synthetic_obs, time_policies
    from robofm.policy import Policy

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    policy = Policy.from_checkpoint(path)
    load_s = time.perf_counter() - t0
    obs = synthetic_obs(policy, px=CAMERA_PX)
    t0 = time.perf_counter()
    policy.infer(obs)
    cold = (time.perf_counter() - t0) * 1000
    (times,) = time_policies([policy], calls, warmup=5, obs=obs)
    rss = int(Path("/proc/self/status").read_text().split("VmRSS:")[1].split()[0]) / 1024
    return {
        "load_s": round(load_s, 2),
        "weights_MB": round(state_bytes(policy.model) / 1e6, 1),
        "rss_MB": round(rss),  # resident after loading and the timed calls
        "peak_rss_MB": round(peak_rss_mib()),  # includes the mapped weights file while loading
        "cold_ms": round(cold, 1),
        "median_ms": round(float(np.median(times)), 2),
        "p90_ms": round(float(np.percentile(times, 90)), 2),
    }


def _measure_in_subprocess(path: str, calls: int, threads: int) -> dict:
    cmd = [sys.executable, __file__, "--measure", path, "--calls", str(calls)]
    out = subprocess.run([*cmd, "--threads", str(threads)], capture_output=True, text=True)
    line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(f"measuring {path} failed: {out.stderr.strip()[-500:]}")
    return json.loads(line[7:])


def _image_size(path: Path) -> int:
    from robofm.models.checkpoint import read_checkpoint_meta

    return read_checkpoint_meta(path)[0].image_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", help="float checkpoint (the `small` demo policy)")
    parser.add_argument("--data", nargs="+", help="demonstrations to distil on")
    parser.add_argument("--int8", default=None, help="existing INT8 copy of the teacher")
    parser.add_argument(
        "--student", nargs="+", default=None, help="existing distilled student checkpoint(s)"
    )
    parser.add_argument("--work", default=None, help="where new INT8/student checkpoints go")
    parser.add_argument("--episodes", type=int, default=20, help="closed-loop episodes per split")
    parser.add_argument("--calls", type=int, default=100, help="timed Policy.infer calls")
    parser.add_argument("--threads", type=int, default=1, help="torch threads when timing")
    parser.add_argument("--workers", type=int, default=0, help="eval processes (0 = per core)")
    parser.add_argument("--out", default=None, help="JSON path")
    parser.add_argument("--measure", default=None, help=argparse.SUPPRESS)  # internal
    args = parser.parse_args()
    if args.measure:
        print("RESULT " + json.dumps(measure(args.measure, args.calls, args.threads)))
        return
    if not args.teacher:
        parser.error("--teacher is required")
    from robofm.deploy.compare import SPLITS, compare_checkpoints

    teacher = Path(args.teacher)
    work = Path(args.work) if args.work else teacher.parent / "deploy_bench"
    work.mkdir(parents=True, exist_ok=True)
    seconds = {}
    int8 = Path(args.int8) if args.int8 else work / "int8"
    if not int8.exists():
        from robofm.deploy.quantize import quantize_checkpoint

        t0 = time.perf_counter()
        quantize_checkpoint(teacher, int8)
        seconds["quantize_s"] = round(time.perf_counter() - t0, 1)
    students = [Path(p) for p in args.student] if args.student else [work / "distill" / "student"]
    if not students[0].exists():
        if not args.data:
            parser.error("--data is required to distil a student (or pass --student)")
        from robofm.deploy.distill import DistillConfig, distill

        t0 = time.perf_counter()
        distill(DistillConfig(str(teacher), tuple(args.data), out_dir=str(work / "distill")))
        seconds["distill_s"] = round(time.perf_counter() - t0, 1)
    models = {"float": teacher, "int8": int8}
    for student in students:
        models[f"distilled {_image_size(student)}px"] = student
    speed = {n: _measure_in_subprocess(str(p), args.calls, args.threads) for n, p in models.items()}
    rows = compare_checkpoints(
        {n: str(p) for n, p in models.items()},
        splits=SPLITS,
        episodes=args.episodes,
        workers=args.workers,
        out_dir=RESULTS_DIR / "deploy",
    )
    table = []
    for r in rows:
        s = speed[r["name"]]
        table.append(
            {
                "model": r["name"],
                "params_M": r["params_M"],
                "disk_MB": r["disk_MB"],
                "weights_MB": s["weights_MB"],
                "rss_MB": s["rss_MB"],
                "peak_rss_MB": s["peak_rss_MB"],
                "cold_ms": s["cold_ms"],
                "median_ms": s["median_ms"],
                "p90_ms": s["p90_ms"],
                "rate_hz_chunked": round(r["chunk_len"] * 1000 / s["p90_ms"], 1),
                **{f"{k}": f"{r[k]['successes']}/{r[k]['n']}" for k in SPLITS},
                "unseen_avg": round(r["unseen_avg"], 3),
                "eval_median_ms": r["latency_ms_median"],
            }
        )
    path = report("deploy", table, args.out)
    body = json.loads(path.read_text())
    body.update(timing_threads=args.threads, episodes=args.episodes, setup=seconds)
    body["closed_loop"] = rows
    path.write_text(json.dumps(body, indent=2) + "\n")
    print(f"plot: {RESULTS_DIR / 'deploy' / 'comparison.png'}")


if __name__ == "__main__":
    main()
