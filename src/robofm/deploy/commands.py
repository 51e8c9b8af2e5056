"""`robofm deploy quantize CKPT [--int8 | --int4] [--out DST]`: write an INT8 copy of a
checkpoint and print what it buys: size on disk, weights in memory and chunk latency (median
and p90 over `--calls` calls on a synthetic observation, after a warm-up), float vs int8.

Also runnable as `python -m robofm.deploy.commands quantize CKPT ...`.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np

from robofm.errors import ConfigError

MB = 1e6


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="robofm deploy", description="Prepare a checkpoint for deployment."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    q = sub.add_parser(
        "quantize",
        help="INT8 copy of a checkpoint (CPU dynamic quantization of the Linear layers)",
        description="Write an INT8 copy of CKPT (weights int8 per output channel, activations "
        "quantized per call) and compare size and chunk latency with the float original.",
    )
    q.add_argument("checkpoint", help="float checkpoint directory (model.safetensors, ...)")
    bits = q.add_mutually_exclusive_group()
    bits.add_argument("--int8", dest="mode", action="store_const", const="int8", help="default")
    bits.add_argument(
        "--int4", dest="mode", action="store_const", const="int4", help="needs torchao"
    )
    q.set_defaults(mode="int8")
    q.add_argument("--out", default=None, help="output directory (default: CKPT-int8)")
    q.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    q.add_argument("--device", default="cpu", help="target device (GPU needs torchao)")
    q.add_argument(
        "--min-weights",
        type=int,
        default=None,
        help="Linears with fewer weights stay float (default 65536; 0 = quantize all)",
    )
    q.add_argument(
        "--keep-float",
        nargs="+",
        default=(),
        metavar="MODULE",
        help="module names to keep float (e.g. trunk.inp); see quantization.json for names",
    )
    q.add_argument("--calls", type=int, default=50, help="timed calls per model; 0 = no timing")
    q.add_argument("--warmup", type=int, default=5, help="untimed calls first")
    q.add_argument("--threads", type=int, default=0, help="torch threads; 0 = default")
    args = parser.parse_args(argv)
    return _quantize(args)


def _quantize(args: argparse.Namespace) -> int:
    import torch

    from robofm.deploy.quantize import (
        MIN_WEIGHTS,
        QUANT_FILE,
        checkpoint_bytes,
        quantize_checkpoint,
        read_quantization,
    )
    from robofm.policy import Policy

    src = Path(args.checkpoint)
    if not src.is_dir():
        raise ConfigError(f"{src}: not a checkpoint directory")
    if args.calls < 0 or args.warmup < 0:
        raise ConfigError("--calls and --warmup must be >= 0")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    dst = Path(args.out) if args.out else src.with_name(src.name + "-int8")
    min_weights = MIN_WEIGHTS if args.min_weights is None else args.min_weights
    t0 = time.perf_counter()
    quantize_checkpoint(
        src,
        dst,
        mode=args.mode,
        device=args.device,
        min_weights=min_weights,
        keep_float=tuple(args.keep_float),
        overwrite=args.overwrite,
    )
    seconds = time.perf_counter() - t0
    manifest = read_quantization(dst)
    n_float = len(manifest["kept_float"]["linear"])
    print(
        f"robofm deploy quantize: {src} -> {dst} in {seconds:.1f} s ({manifest['backend']}; "
        f"{len(manifest['quantized'])} Linear layers int8, {n_float} kept float: see "
        f"{dst / QUANT_FILE})"
    )
    rows = [
        ("model.safetensors MB", _mb(src / "model.safetensors"), _mb(dst / "model.safetensors")),
        ("checkpoint MB", checkpoint_bytes(src) / MB, checkpoint_bytes(dst) / MB),
    ]
    policies = [Policy.from_checkpoint(src), Policy.from_checkpoint(dst)]
    rows.append(("weights in RAM MB", *(_state_bytes(p.model) / MB for p in policies)))
    if args.calls:
        p50, p90 = _latency(policies, args.calls, args.warmup)
        rows += [("chunk latency p50 ms", *p50), ("chunk latency p90 ms", *p90)]
    print(_table(rows))
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    timing = (
        f"{args.calls} timed calls per model after {args.warmup} warm-up, interleaved, on a "
        f"synthetic observation; {torch.get_num_threads()} torch thread(s). "
        if args.calls
        else ""
    )
    print(
        f"({timing}Peak RSS of this process, both models loaded: {rss_mb:.0f} MiB; loading an "
        "INT8 checkpoint briefly builds the float architecture first.)"
    )
    return 0


def _mb(path: Path) -> float:
    return path.stat().st_size / MB


def _state_bytes(model) -> int:
    """Bytes of the model's weights as held for inference (int8 layers count int8)."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def _synthetic_obs(policy) -> dict:
    """A valid observation for `policy`: random uint8 frames, zero state, a fixed prompt."""
    rng = np.random.default_rng(0)
    shape = (policy.model.cfg.image_size, policy.model.cfg.image_size, 3)  # (H, W, 3)
    return {
        "images": {c: rng.integers(0, 256, shape, dtype=np.uint8) for c in policy.cameras},
        "state": np.zeros(policy.state_dim, np.float32),
        "prompt": "pick up the red cube",
    }


def _latency(policies: list, calls: int, warmup: int) -> tuple[list[float], list[float]]:
    """(p50 per policy, p90 per policy) of `Policy.infer` wall time in ms; calls alternate
    between the policies so background load affects both alike."""
    obs = _synthetic_obs(policies[0])
    for p in policies:
        for _ in range(warmup):
            p.infer(obs)
    times: list[list[float]] = [[] for _ in policies]
    for _ in range(calls):
        for p, t in zip(policies, times, strict=True):
            t0 = time.perf_counter()
            p.infer(obs)
            t.append((time.perf_counter() - t0) * 1000.0)
    return (
        [float(np.percentile(t, 50)) for t in times],
        [float(np.percentile(t, 90)) for t in times],
    )


def _table(rows: list[tuple[str, float, float]]) -> str:
    """Rows of (label, float, int8) as an aligned text table with the int8/float ratio."""
    width = max(len(r[0]) for r in rows)
    lines = [f"{'':<{width}}  {'float':>9}  {'int8':>9}  {'int8/float':>10}"]
    for label, a, b in rows:
        ratio = f"{b / a:.2f}" if a else "-"
        lines.append(f"{label:<{width}}  {a:>9.2f}  {b:>9.2f}  {ratio:>10}")
    return "\n".join(lines)


if __name__ == "__main__":  # the CLI's own error handling (one line, exit status 2)
    from robofm.cli import main as cli_main

    sys.exit(cli_main(["deploy", *sys.argv[1:]]))
