"""Windowed-sample loading speed and memory: robofm vs LeRobot on the same data.

For each dataset variant (camera count, resolution, video vs PNG storage) and worker count,
reads shuffled windows (T_obs=1, chunk H=50, batch 32) through a torch DataLoader for a full
pass (--max-batches 40 covers a whole pass of the 1200-sample synthetic sets) and reports
samples/s and the loading process's peak RSS (worker processes not included).

    .venv/bin/python benchmarks/data_loading.py                    # robofm only
    .venv/bin/python benchmarks/data_loading.py --lerobot-python /path/to/lerobot/venv/python

With --lerobot-python, LeRobot's own LeRobotDataset (delta_timestamps for the same chunk)
reads the same directories in a subprocess, in the same run, for a side-by-side table.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import report
from robofm.data.episode import Episode, InMemorySource
from robofm.data.lerobot import LeRobotSource
from robofm.data.lerobot_write import WriteOptions, write_lerobot
from robofm.data.windows import WindowDataset, collate_windows

FIXTURE = Path(__file__).resolve().parents[2] / "shared/fixtures/lerobot/synth_video_v3"
CHUNK = 50
BATCH = 32

LEROBOT_SNIPPET = r"""
import sys, time, torch
open("/proc/self/clear_refs", "w").write("5")  # peak RSS from here, not inherited from fork
from lerobot.datasets.lerobot_dataset import LeRobotDataset
root, fps = sys.argv[1], float(sys.argv[2])
max_batches, workers = int(sys.argv[3]), int(sys.argv[4])
ds = LeRobotDataset("local/bench", root=root, video_backend="pyav",
                    delta_timestamps={"action": [k / fps for k in range(%d)]})
g = torch.Generator().manual_seed(0)
dl = torch.utils.data.DataLoader(ds, batch_size=%d, shuffle=True, generator=g, num_workers=workers)
n, t0 = 0, None
for b, batch in enumerate(dl):
    if b == 1: t0 = time.perf_counter(); n = 0
    if b >= 1: n += batch["action"].shape[0]
    if b >= max_batches: break
dt = time.perf_counter() - t0
rss = int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0]) / 1024
print(f"RESULT {n / dt:.2f} {rss:.1f}")
""".replace("%d", str(CHUNK), 1).replace("%d", str(BATCH), 1)


def synthetic(n_eps: int, length: int, size: int, cams: int, fps: float) -> InMemorySource:
    """Smooth moving-gradient images (video-codec friendly) with random-walk actions."""
    rng = np.random.default_rng(0)
    eps = []
    yy, xx = np.mgrid[0:size, 0:size] / size
    for i in range(n_eps):
        t = np.arange(length)[:, None, None]
        images = {}
        for c in range(cams):
            r = (128 + 100 * np.sin(6 * xx + 0.1 * t + c)).astype(np.uint8)
            g = (128 + 100 * np.cos(5 * yy - 0.07 * t)).astype(np.uint8)
            b = np.broadcast_to(np.uint8(40 * c + 20 * i % 200), r.shape)
            images[f"cam{c}"] = np.stack([r, g, b], -1)
        walk = np.cumsum(rng.normal(0, 0.01, (length, 6)), 0).astype(np.float32)
        eps.append(Episode(i, "move the arm", walk, walk.copy(), np.arange(length) / fps, images))
    return InMemorySource(eps, fps=fps, name=f"synth{size}")


def robofm_rate(root: Path, workers: int, max_batches: int) -> tuple[float, float]:
    ds = WindowDataset(LeRobotSource(root), n_obs_steps=1, chunk_len=CHUNK)
    g = torch.Generator().manual_seed(0)
    dl = torch.utils.data.DataLoader(
        ds,
        batch_size=BATCH,
        shuffle=True,
        generator=g,
        num_workers=workers,
        collate_fn=collate_windows,
        persistent_workers=False,
    )
    n, t0 = 0, time.perf_counter()
    for b, batch in enumerate(dl):
        if b == 1:  # exclude worker start-up and the first batch
            t0, n = time.perf_counter(), 0
        if b >= 1:
            n += batch["actions"].shape[0]
        if b >= max_batches:
            break
    dt = time.perf_counter() - t0
    rss = int(Path("/proc/self/status").read_text().split("VmHWM:")[1].split()[0]) / 1024
    return n / dt, rss  # main-process peak; workers are separate processes


def robofm_rate_isolated(root: Path, workers: int, max_batches: int) -> tuple[float, float]:
    """`robofm_rate` in a fresh interpreter, so peak RSS covers only the loading."""
    rate, rss = _measure(
        [sys.executable, __file__, "--one", str(root), str(workers), str(max_batches)]
    )
    if rate is None:
        raise RuntimeError(rss)
    return rate, rss


def _measure(cmd: list[str]) -> tuple[float | None, float | str]:
    """Run a measuring subprocess; (samples/s, peak RSS MiB) from its RESULT line, or
    (None, last stderr line) when it failed."""
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT"):
            rate, rss = line.split()[1:]
            return float(rate), float(rss)
    return None, (out.stderr.strip().splitlines() or ["failed"])[-1][:200]


def lerobot_rate(python: str, root: Path, fps: float, workers: int, max_batches: int):
    return _measure(
        [python, "-c", LEROBOT_SNIPPET, str(root), str(fps), str(max_batches), str(workers)]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-batches", type=int, default=40, help="batches timed per run")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--lerobot-python", default="", help="python of a venv with lerobot")
    parser.add_argument("--out", default=None, help="JSON path")
    parser.add_argument(
        "--one", nargs=3, metavar=("ROOT", "WORKERS", "BATCHES"), help=argparse.SUPPRESS
    )  # internal: measure one configuration
    args = parser.parse_args()
    torch.set_num_threads(2)
    if args.one:
        # Linux carries a forked parent's peak RSS into the child; reset it so the number
        # covers only this measurement.
        Path("/proc/self/clear_refs").write_text("5")
        rate, rss = robofm_rate(Path(args.one[0]), int(args.one[1]), int(args.one[2]))
        print(f"RESULT {rate:.2f} {rss:.1f}")
        return
    work = Path(tempfile.mkdtemp(prefix="robofm_bench_data_"))
    variants: list[tuple[str, Path, float]] = [("fixture 1cam 96px av1 video", FIXTURE, 30.0)]
    fixture_png = work / "fixture_png"
    write_lerobot(LeRobotSource(FIXTURE), fixture_png, WriteOptions(video=False))
    variants.append(("fixture 1cam 96px png", fixture_png, 30.0))
    for size, cams in ((96, 2), (224, 1), (224, 2)):
        src = synthetic(n_eps=8, length=150, size=size, cams=cams, fps=30.0)
        for video in (True, False):
            root = work / f"s{size}_{cams}_{'video' if video else 'png'}"
            write_lerobot(src, root, WriteOptions(video=video))
            variants.append((f"synth {cams}cam {size}px {'h264' if video else 'png'}", root, 30.0))
    rows = []
    for name, root, fps in variants:
        for workers in args.workers:
            rate, rss = robofm_rate_isolated(root, workers, args.max_batches)
            row = {
                "data": name,
                "workers": workers,
                "robofm_samples_s": round(rate, 1),
                "robofm_peak_rss_mb": round(rss),
            }
            if args.lerobot_python:
                lr_rate, lr_rss = lerobot_rate(
                    args.lerobot_python, root, fps, workers, args.max_batches
                )
                row["lerobot_samples_s"] = round(lr_rate, 1) if lr_rate else "error"
                row["lerobot_peak_rss_mb"] = lr_rss if isinstance(lr_rss, str) else round(lr_rss)
                if lr_rate:
                    row["speedup"] = round(rate / lr_rate, 2)
            rows.append(row)
            print(row, flush=True)
    report("data_loading", rows, args.out)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
