"""`robofm deploy`: prepare a checkpoint for deployment.

- `quantize CKPT [--int8 | --int4] [--out DST]`: write an INT8 copy of a checkpoint and print
  what it buys: size on disk, weights in memory and chunk latency (median and p90 over
  `--calls` calls on a synthetic observation, after a warm-up), float vs int8.
- `export CKPT --out DIR`: write the checkpoint's inference computation as a standalone
  `torch.export` program (`robofm.deploy.export`), load it back and print its parity with the
  eager model and the latency of both.
- `distill TEACHER --data DIR [--student PRESET]`: train a small student on the teacher's
  action chunks, on the demonstrations and on DAgger-relabelled states from its own rollouts
  (`robofm.deploy.distill`); with `--eval-episodes N` also the closed-loop student-vs-teacher
  table (success per split, latency, control rate).

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
    e = sub.add_parser(
        "export",
        help="standalone torch.export program of a checkpoint (policy.pt2 + export.json)",
        description="Export CKPT's inference computation (images, normalised state, token ids "
        "[, noise] -> normalised action chunk) with torch.export to DIR/policy.pt2, with "
        "export.json (inputs, cameras, sizes, normalisation, action space, tokenizer), the "
        "stats and contract files and the tokenizer. Then load it back and print parity and "
        "latency against the eager model.",
    )
    e.add_argument("checkpoint", help="float checkpoint directory")
    e.add_argument("--out", required=True, help="output directory")
    e.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    e.add_argument(
        "--format", default="pt2", choices=("pt2", "onnx"), help="onnx needs the onnx package"
    )
    e.add_argument("--calls", type=int, default=20, help="timed calls per model; 0 = no timing")
    e.add_argument("--threads", type=int, default=0, help="torch threads; 0 = default")
    from robofm.deploy.distill_cli import add_distill, run_distill

    add_distill(sub)
    args = parser.parse_args(argv)
    if args.command == "export":
        return _export(args)
    if args.command == "distill":
        return run_distill(args)
    return _quantize(args)


def _export(args: argparse.Namespace) -> int:
    import torch

    from robofm.deploy.export import PROGRAM_FILE, compare_exported, export_checkpoint

    src, out = Path(args.checkpoint), Path(args.out)
    if not src.is_dir():
        raise ConfigError(f"{src}: not a checkpoint directory")
    if args.calls < 0:
        raise ConfigError("--calls must be >= 0")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    meta = export_checkpoint(src, out, overwrite=args.overwrite, fmt=args.format)
    seconds = time.perf_counter() - t0
    names = ", ".join(i["name"] for i in meta["inputs"])
    print(
        f"robofm deploy export: {src} -> {out / PROGRAM_FILE} in {seconds:.1f} s "
        f"({meta['head']} head, robot {meta['robot']!r}; inputs {names}; output normalised "
        f"actions (1, {meta['chunk_len']}, {meta['action_dim']}))"
    )
    check = compare_exported(src, out, calls=args.calls)
    print(
        f"parity: max |exported - eager| = {check['max_abs_diff']:.2e} (normalised actions, "
        "3 inputs, same noise)"
    )
    if args.calls:
        print(
            f"latency per chunk, median of {args.calls}: eager {check['eager_ms_median']:.2f} "
            f"ms, exported {check['exported_ms_median']:.2f} ms "
            f"({torch.get_num_threads()} torch thread(s))"
        )
    return 0


def _quantize(args: argparse.Namespace) -> int:
    import torch

    from robofm.deploy.bench import state_bytes, time_policies
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
    rows.append(("weights in RAM MB", *(state_bytes(p.model) / MB for p in policies)))
    if args.calls:
        times = time_policies(policies, args.calls, args.warmup)
        rows += [
            ("chunk latency p50 ms", *(float(np.percentile(t, 50)) for t in times)),
            ("chunk latency p90 ms", *(float(np.percentile(t, 90)) for t in times)),
        ]
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
