"""Policy-server cost on loopback: latency overhead, throughput, memory under load, lost replies.

The server runs as `python -m robofm.serve.commands` in its own process (so its RSS is its
own and the clients do not share its GIL); clients run here. The checkpoint is the `tiny`
preset at image_size 224 trained for 2 steps on 2 recorded lift episodes (or `--checkpoint`);
each observation carries two 224x224 uint8 cameras (~301 KB on the wire), a state and a prompt.
Both sides use one torch thread, so in-process and served inference do the same work.

(a) latency: median/p90 of `Policy.infer` in-process vs a round trip through the unmodified
    openpi client, and per request the round trip minus the server's own `infer_ms` (the
    added cost: packing, loopback, decoding, validation, queueing, reply);
(b) requests/s with 1, 4 and 16 concurrent connections for `--throughput-s` each;
(c) server RSS sampled every 0.5 s during `--duration` s of load from 8 connections that
    reconnect every 50 requests (so per-connection state must be freed);
(d) errors (text frames, wrong shapes) and lost replies (no reply within 30 s) in every phase.

    .venv/bin/python benchmarks/serving.py                 # 60 s memory phase
    .venv/bin/python benchmarks/serving.py --duration 10   # quicker
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import report

PX = 224  # camera resolution sent, and the model's image_size


def build_checkpoint(root: Path) -> Path:
    """A `tiny` flow checkpoint at image_size 224 for the sim robot (about 5 s)."""
    from robofm.sim.record import smoke_checkpoint

    return smoke_checkpoint(root, image_size=PX, chunk_len=4, record_px=64)


def make_obs(seed: int, state_dim: int = 4) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "images": {
            c: rng.integers(0, 256, (PX, PX, 3), dtype=np.uint8) for c in ("front", "wrist")
        },
        "state": rng.normal(size=state_dim).astype(np.float32),
        "prompt": "lift the red cube",
    }


def start_server(checkpoint: Path) -> tuple[subprocess.Popen, str]:
    """`robofm serve` in a subprocess on a free port; returns (process, ws:// url)."""
    code = "import sys; from robofm.serve.commands import main; sys.exit(main(sys.argv[1:]))"
    cmd = [sys.executable, "-c", code, str(checkpoint), "--port", "0", "--threads", "1"]
    cmd += ["--rate-limit-hz", "0", "--log-level", "WARNING"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if not line.startswith("robofm serve: ws://"):
        proc.kill()
        raise RuntimeError(f"server did not start: {line!r}")
    return proc, line.split()[2]


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(xs, q)) if xs else float("nan")


def in_process_ms(checkpoint: Path, obs: dict, n: int) -> list[float]:
    import torch

    from robofm.policy import Policy

    torch.set_num_threads(1)
    policy = Policy.from_checkpoint(checkpoint)
    for _ in range(5):
        policy.infer(obs)
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        policy.infer(obs)
        out.append((time.perf_counter() - t0) * 1000.0)
    return out


def served_ms(url: str, obs: dict, n: int) -> tuple[list[float], list[float], list[float]]:
    """(round trip ms, round trip - server infer_ms, server total_ms - infer_ms) per request,
    through the unmodified openpi client."""
    from openpi_client.websocket_client_policy import WebsocketClientPolicy

    client = WebsocketClientPolicy(url)
    for _ in range(5):
        client.infer(obs)
    rt, added, inside = [], [], []
    for _ in range(n):
        t0 = time.perf_counter()
        reply = client.infer(obs)
        ms = (time.perf_counter() - t0) * 1000.0
        timing = reply["server_timing"]
        rt.append(ms)
        added.append(ms - timing["infer_ms"])
        inside.append(timing["total_ms"] - timing["infer_ms"])
    return rt, added, inside


class Counts:
    """Shared tallies of the load clients."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ok = self.errors = self.lost = 0
        self.rt_ms: list[float] = []


def load_client(url: str, until: float, counts: Counts, seed: int, reconnect_every: int) -> None:
    """Request/reply until `until` (time.monotonic()); tally replies, error frames, losses."""
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    from robofm.serve.protocol import packb, unpackb

    frame = packb(make_obs(seed))
    while time.monotonic() < until:
        with connect(url, compression=None, max_size=None) as ws:
            ws.recv(timeout=30)  # metadata
            for _ in range(reconnect_every or 10**9):
                if time.monotonic() >= until:
                    break
                t0 = time.perf_counter()
                ws.send(frame)
                try:
                    reply = ws.recv(timeout=30)
                except (TimeoutError, ConnectionClosed):
                    with counts.lock:
                        counts.lost += 1
                    break
                ms = (time.perf_counter() - t0) * 1000.0
                good = isinstance(reply, bytes) and unpackb(reply)["actions"].shape == (4, 4)
                with counts.lock:
                    counts.ok += good
                    counts.errors += not good
                    counts.rt_ms.append(ms)


def run_load(url: str, clients: int, seconds: float, reconnect_every: int = 0) -> Counts:
    counts = Counts()
    until = time.monotonic() + seconds
    threads = [
        threading.Thread(target=load_client, args=(url, until, counts, k, reconnect_every))
        for k in range(clients)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", default=None, help="default: build a tiny 224 px one")
    parser.add_argument("--requests", type=int, default=200, help="latency samples per side")
    parser.add_argument("--throughput-s", type=float, default=5.0, help="seconds per level")
    parser.add_argument("--duration", type=float, default=60.0, help="memory phase, seconds")
    parser.add_argument("--out", default=None, help="JSON path (default results/serving.json)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(args.checkpoint) if args.checkpoint else build_checkpoint(Path(tmp))
        obs = make_obs(0)
        local = in_process_ms(ckpt, obs, args.requests)
        proc, url = start_server(ckpt)
        try:
            rows = measure(proc, url, obs, local, args)
        finally:
            proc.terminate()
            proc.wait(30)
    errors, lost = (sum(r.get(k, 0) for r in rows) for k in ("errors", "lost"))
    rows.append(
        {"phase": "(d) total errors / lost replies", "errors": errors, "lost": lost,
         "server_exit": proc.returncode}
    )  # fmt: skip
    report("serving", rows, args.out)


def measure(proc: subprocess.Popen, url: str, obs: dict, local: list[float], args) -> list:
    rt, added, inside = served_ms(url, obs, args.requests)
    rows: list[dict] = [
        {"phase": "(a) Policy.infer in-process", "clients": 1, "requests": len(local),
         "median_ms": statistics.median(local), "p90_ms": pct(local, 90)},
        {"phase": "(a) served round trip (openpi client)", "clients": 1, "requests": len(rt),
         "median_ms": statistics.median(rt), "p90_ms": pct(rt, 90)},
        {"phase": "(a) added: round trip - server infer_ms", "clients": 1, "requests": len(rt),
         "median_ms": statistics.median(added), "p90_ms": pct(added, 90)},
        {"phase": "(a) added inside server: total_ms - infer_ms", "clients": 1,
         "requests": len(rt), "median_ms": statistics.median(inside), "p90_ms": pct(inside, 90)},
        {"phase": "(a) added: served median - in-process median", "clients": 1,
         "median_ms": statistics.median(rt) - statistics.median(local)},
    ]  # fmt: skip
    for n in (1, 4, 16):
        c = run_load(url, n, args.throughput_s)
        rows.append(
            {"phase": "(b) throughput", "clients": n, "requests": c.ok,
             "req_per_s": c.ok / args.throughput_s, "median_ms": statistics.median(c.rt_ms),
             "p90_ms": pct(c.rt_ms, 90), "errors": c.errors, "lost": c.lost}
        )  # fmt: skip
    server = psutil.Process(proc.pid)
    samples: list[float] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            samples.append(server.memory_info().rss / 2**20)
            done.wait(0.5)

    sampler = threading.Thread(target=sample)
    sampler.start()
    c = run_load(url, 8, args.duration, reconnect_every=50)
    done.set()
    sampler.join()
    first = samples[: max(1, len(samples) // 10)]
    last = samples[-max(1, len(samples) // 10) :]
    rows.append(
        {"phase": "(c) memory under load", "clients": 8, "requests": c.ok,
         "req_per_s": c.ok / args.duration, "median_ms": statistics.median(c.rt_ms),
         "p90_ms": pct(c.rt_ms, 90), "errors": c.errors, "lost": c.lost,
         "duration_s": args.duration, "rss_first10pct_mb": statistics.mean(first),
         "rss_last10pct_mb": statistics.mean(last), "rss_max_mb": max(samples)}
    )  # fmt: skip
    return rows


if __name__ == "__main__":
    main()
