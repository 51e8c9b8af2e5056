"""`robofm bench`: parameters, memory, latency and control rate, per model preset and action
head or per checkpoint.

Presets (`robofm bench [--preset NAME ...] [--head NAME ...]`): every preset of
`robofm.config.MODEL_PRESETS` x every head (bins, regression, flow, diffusion), or the subset
asked for. Each runnable configuration runs in its own subprocess (`python -m
robofm.deploy.bench --one SPEC`) so peak memory is that model's alone: it builds the model
(shipped pretrained backbones for the CPU presets; random init at full size for the others),
then times `sample_actions` for one observation (batch 1, under `torch.inference_mode`): the
first call, then `--reps` calls after `--warmup`. A preset whose fp32 weights exceed
`--max-weights-gb` is not run (pi0 ~3.3B and openvla ~7.3B need 13-30 GB and minutes per
chunk on a CPU): its parameters come from a meta-device build (`robofm.models.params`) and
`skipped` says why. The JSON (`--json`, default `bench.json`) holds {"mode": "presets",
"machine", "settings", "rows"}; one row per configuration with these fields:

    preset, head               the configuration
    params_M, trainable_M      parameters (all / requires_grad), millions
    weights_MB                 bytes of the weights as held (fp32), / 1e6
    peak_mem_MB                CPU: peak RSS of the subprocess minus its RSS after imports
                               (build + calls, + compilation with --compile), MiB; CUDA:
                               torch.cuda.max_memory_allocated, MiB
    latency_cold_ms            the first sample_actions call after the build
    latency_ms_median, latency_ms_p90   warm calls (--reps after --warmup)
    prefix_ms_median           of which encode_prefix (vision, language, trunk), median
    chunk_len                  H, actions per call
    rate_hz_replan_every_step  1000 / p90: control rate when every step waits for a new chunk
    rate_hz_chunked            chunk_len * 1000 / p90: the rate a chunk sustains when the next
                               chunk is computed while the current one executes
    device, threads, cameras   where and how it ran (cameras: front + wrist for the CPU
                               presets, as the sim robot; front for full-size presets)
    skipped                    null, or why the configuration was not run (latency, memory
                               and rate fields are then null)
    error                      only when the subprocess failed: its last stderr line
  with --compile (torch.compile of encode_prefix and head.sample, inductor, dynamic=False):
    latency_ms_median_compiled warm median of the compiled model
    compile_s                  the first compiled call (compilation)
    speedup                    latency_ms_median / latency_ms_median_compiled
    compile_max_abs_diff       max |compiled - eager| over a chunk (same noise); must be < 1e-4
    compile_error              only when compilation failed or did not match eager

Checkpoints (`robofm bench --checkpoint A [--checkpoint B]`): one or two checkpoints side by
side in one process, e.g. float vs its INT8 copy or teacher vs distilled student. Each loads
with `Policy.from_checkpoint` and `Policy.infer` is timed on a synthetic valid observation,
calls interleaved between the policies so background load hits both alike. Columns A | B |
B/A; the JSON holds {"mode": "checkpoints", "machine", "settings", "columns": [A, B],
"ratio"} with, per checkpoint: checkpoint, head, quantized, params_M, disk_MB
(`checkpoint_bytes`), weights_MB (as held in RAM, int8 layers counted int8),
latency_cold_ms, latency_ms_median, latency_ms_p90, chunk_len, the two rate fields, device,
the compile fields above with --compile (`Policy(compile=True)`; compile_max_abs_diff in
robot units), and with `--success-task T` the closed-loop success per split
(`robofm.eval.rollouts.evaluate`): "success": {split: {n, successes, rate, ci_low, ci_high}}.

Timings are wall clock on a machine that may be shared: with other work on the cores, torch's
default thread pool stalls (seconds per call on 2 busy cores); `--threads 1` keeps the numbers
meaningful there. `settings` and `threads` record what was used.

On CUDA (`--device cuda`) calls are timed with `torch.cuda.Event(enable_timing=True)` and a
synchronize, and memory is `torch.cuda.max_memory_allocated` reset per configuration. That
path was written for GPUs but has not been run here (this build was tested on CPU only).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from robofm.errors import ConfigError

HEADS = ("bins", "regression", "flow", "diffusion")
ROW_FIELDS = (
    "preset",
    "head",
    "params_M",
    "trainable_M",
    "weights_MB",
    "peak_mem_MB",
    "latency_cold_ms",
    "latency_ms_median",
    "latency_ms_p90",
    "prefix_ms_median",
    "chunk_len",
    "rate_hz_replan_every_step",
    "rate_hz_chunked",
    "device",
    "threads",
    "cameras",
    "skipped",
)
COMPILE_FIELDS = ("latency_ms_median_compiled", "compile_s", "speedup", "compile_max_abs_diff")
COMPILE_ATOL = 1e-4  # compiled vs eager, normalised actions (preset mode)
PROMPT = "pick up the red cube and put it on the blue plate"
ACTION_DIM = 6  # state and action dims of the synthetic robot in preset mode
MB = 1e6
MIB = 1024.0 * 1024.0


# ---- shared helpers ------------------------------------------------------------------------


def rates(chunk_len: int, p90_ms: float) -> dict[str, float]:
    """The two control rates a chunk latency allows (see the module docstring)."""
    return {
        "rate_hz_replan_every_step": round(1000.0 / p90_ms, 2),
        "rate_hz_chunked": round(chunk_len * 1000.0 / p90_ms, 2),
    }


def state_bytes(model) -> int:
    """Bytes of the model's weights as held for inference (int8 layers count int8)."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def param_count(model) -> tuple[int, int]:
    """(parameters, trainable parameters); an int8 layer counts its weight and bias elements
    (they are packed tensors, not `nn.Parameter`s)."""
    from robofm.deploy.int8 import Int8DynamicLinear

    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    for m in model.modules():
        if isinstance(m, Int8DynamicLinear):
            total += m.in_features * m.out_features + (m.out_features if m.has_bias else 0)
    return total, trainable


def machine_info(device: str = "cpu") -> dict[str, Any]:
    """The facts needed to compare two runs."""
    import torch

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def peak_rss_mib() -> float:
    """Peak resident set size of this process's own memory so far, MiB.

    On Linux this is `VmHWM` from /proc/self/status: unlike `getrusage`'s ru_maxrss it does
    not inherit the peak of the process that forked this one (a large parent would otherwise
    hide a small model's memory entirely)."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0  # KiB
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / MIB if sys.platform == "darwin" else peak / 1024.0  # macOS: bytes; Linux: KiB


def _reset_peak_rss() -> None:
    """Restart the peak-RSS mark at the current RSS (Linux: write 5 to clear_refs), so the
    peak measured next belongs to what runs after this call; a no-op elsewhere."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def _percentiles(ms: list[float]) -> tuple[float, float]:
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 90))


def _check_device(device: str) -> None:
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: CUDA is not available on this machine")
    if not (device == "cpu" or device.startswith("cuda")):
        raise ConfigError(f"--device must be cpu or cuda[:N], got {device!r}")


class _Timer:
    """Wall time on CPU; CUDA events with a synchronize on GPU. `mark()` records a point;
    `elapsed_ms()` returns the gaps between consecutive marks."""

    def __init__(self, device: str):
        import torch

        self.cuda = device.startswith("cuda")
        self._torch = torch
        self.points: list[Any] = []

    def mark(self) -> None:
        if self.cuda:
            event = self._torch.cuda.Event(enable_timing=True)
            event.record()
            self.points.append(event)
        else:
            self.points.append(time.perf_counter())

    def elapsed_ms(self) -> list[float]:
        p, self.points = self.points, []
        if self.cuda:
            self._torch.cuda.synchronize()
            return [a.elapsed_time(b) for a, b in itertools.pairwise(p)]
        return [(b - a) * 1000.0 for a, b in itertools.pairwise(p)]


# ---- presets: one configuration, inside its subprocess --------------------------------------


def _is_full(cfg) -> bool:
    return bool(cfg.language_size or cfg.vision_size)


def _synthetic_observation(model, device: str, seed: int = 0):
    """A batch-1 Observation for the synthetic robot: random frames and state."""
    import torch

    from robofm.types import Observation

    cfg, g = model.cfg, torch.Generator().manual_seed(seed)
    s, t = cfg.image_size, cfg.n_obs_steps
    return Observation(
        images={c: torch.rand(1, t, 3, s, s, generator=g).to(device) for c in model.cameras},
        image_mask={c: torch.ones(1, dtype=torch.bool, device=device) for c in model.cameras},
        state=(torch.randn(1, t, ACTION_DIM, generator=g) * 0.5).to(device),
        state_mask=torch.ones(1, ACTION_DIM, dtype=torch.bool, device=device),
        prompt=[PROMPT],
        embodiment=["robot"],
    )


def measure_config(
    preset: str,
    head: str,
    *,
    device: str = "cpu",
    reps: int = 20,
    warmup: int = 3,
    max_weights_gb: float = 2.0,
    compile: bool = False,
    threads: int = 0,
) -> dict[str, Any]:
    """One row (see the module docstring). Meant to run in a fresh process: peak memory is
    the process's."""
    import torch

    from robofm.config import MODEL_PRESETS, get_preset
    from robofm.models.params import param_report
    from robofm.models.vla import VLA

    if threads > 0:
        torch.set_num_threads(threads)
    cfg = dataclasses.replace(get_preset(MODEL_PRESETS, preset, "model preset"), head=head)
    full = _is_full(cfg)
    cams = ("front",) if full else ("front", "wrist")
    row: dict[str, Any] = dict.fromkeys(ROW_FIELDS)
    row.update(
        preset=preset,
        head=head,
        chunk_len=cfg.chunk_len,
        device=device,
        threads=torch.get_num_threads(),
        cameras=list(cams),
    )
    limit = max_weights_gb * 1e9
    if full:  # count on `meta` first: a 7B model must not be allocated to find out
        r = param_report(cfg, cameras=cams, state_dim=ACTION_DIM, action_dim=ACTION_DIM)
        if r["total"] * 4 > limit:
            row.update(
                params_M=round(r["total"] / 1e6, 1),
                trainable_M=round(r["trainable"] / 1e6, 1),
                weights_MB=round(r["total"] * 4 / MB, 1),
                skipped=f"fp32 weights {r['total'] * 4 / 1e9:.1f} GB exceed --max-weights-gb "
                f"{max_weights_gb:g}: not run (counted on the meta device)",
            )
            return row
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    _reset_peak_rss()
    base_mib = peak_rss_mib()
    torch.manual_seed(0)
    model = VLA(
        cfg,
        cameras=cams,
        state_dims={"robot": ACTION_DIM},
        action_dim=ACTION_DIM,
        pretrained=not full and cfg.language not in ("gemma", "qwen2", "llama"),
    )
    model = model.to(device).eval()
    total, trainable = param_count(model)
    row.update(
        params_M=round(total / 1e6, 3),
        trainable_M=round(trainable / 1e6, 3),
        weights_MB=round(state_bytes(model) / MB, 2),
    )
    if state_bytes(model) > limit:
        row["skipped"] = f"weights exceed --max-weights-gb {max_weights_gb:g}: not run"
        return row
    obs = _synthetic_observation(model, device)
    timer = _Timer(device)
    total_ms, prefix_ms = [], []
    with torch.inference_mode():
        for _ in range(1 + warmup + reps):
            timer.mark()
            prefix = model.encode_prefix(obs)
            timer.mark()
            chunk = model.head.sample(prefix)
            timer.mark()
            enc, hd = timer.elapsed_ms()
            total_ms.append(enc + hd)
            prefix_ms.append(enc)
    if tuple(chunk.shape) != (1, cfg.chunk_len, ACTION_DIM):
        raise RuntimeError(f"chunk shape {tuple(chunk.shape)}, expected (1, H, D)")
    warm = total_ms[1 + warmup :]
    med, p90 = _percentiles(warm)
    row.update(
        latency_cold_ms=round(total_ms[0], 3),
        latency_ms_median=round(med, 3),
        latency_ms_p90=round(p90, 3),
        prefix_ms_median=round(float(np.median(prefix_ms[1 + warmup :])), 3),
        **rates(cfg.chunk_len, p90),
    )
    if compile:
        row.update(_measure_compiled(model, obs, med, device, reps, warmup))
    if cuda:
        row["peak_mem_MB"] = round(torch.cuda.max_memory_allocated(device) / MIB, 1)
    else:
        row["peak_mem_MB"] = round(peak_rss_mib() - base_mib, 1)
    return row


def _measure_compiled(model, obs, eager_median: float, device: str, reps: int, warmup: int):
    """The compile fields of a row; errors are reported, not raised."""
    import torch

    from robofm.deploy.export import CompiledSampler

    out: dict[str, Any] = dict.fromkeys(COMPILE_FIELDS)
    try:
        sampler = CompiledSampler(model)
        timer = _Timer(device)
        with torch.inference_mode():
            timer.mark()
            sampler(obs, generator=torch.Generator(device).manual_seed(1))
            timer.mark()
            out["compile_s"] = round(timer.elapsed_ms()[0] / 1000.0, 2)
            eager = model.sample_actions(obs, generator=torch.Generator(device).manual_seed(2))
            comp = sampler(obs, generator=torch.Generator(device).manual_seed(2))
            diff = float((eager - comp).abs().max())
            out["compile_max_abs_diff"] = diff
            ms = []
            for _ in range(warmup + reps):
                timer.mark()
                sampler(obs)
                timer.mark()
                ms += timer.elapsed_ms()
            ms = ms[warmup:]
    except Exception as e:  # inductor and dynamo raise many types; report, don't crash
        out["compile_error"] = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}"[
            :300
        ]
        return out
    median = float(np.median(ms))
    out.update(
        latency_ms_median_compiled=round(median, 3),
        speedup=round(eager_median / median, 2),
    )
    if not diff <= COMPILE_ATOL:
        out["compile_error"] = f"compiled actions differ from eager by {diff:.2e} > {COMPILE_ATOL}"
    return out


# ---- presets: the grid, one subprocess per configuration ------------------------------------


def bench_presets(
    presets: list[str] | None = None,
    heads: list[str] | None = None,
    *,
    device: str = "cpu",
    reps: int = 20,
    warmup: int = 3,
    max_weights_gb: float = 2.0,
    compile: bool = False,
    threads: int = 0,
    timeout_s: float = 3600.0,
) -> list[dict[str, Any]]:
    """One row per (preset, head), each measured in its own subprocess (module docstring)."""
    from robofm.config import MODEL_PRESETS, get_preset
    from robofm.progress import progress

    presets = list(presets or MODEL_PRESETS)
    heads = list(heads or HEADS)
    for p in presets:
        get_preset(MODEL_PRESETS, p, "model preset")
    for h in heads:
        if h not in HEADS:
            raise ConfigError(f"unknown head {h!r}; valid heads: {', '.join(HEADS)}")
    if reps < 1 or warmup < 0:
        raise ConfigError("--reps must be >= 1 and --warmup >= 0")
    _check_device(device)
    env = dict(os.environ)
    env.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")  # compile in-process, not in a pool
    rows = []
    pairs = [(p, h) for p in presets for h in heads]
    bar = progress(total=len(pairs), desc="bench", unit="config")
    try:
        for preset, head in pairs:
            bar.set_postfix_str(f"{preset}:{head}")
            spec = {
                "preset": preset,
                "head": head,
                "device": device,
                "reps": reps,
                "warmup": warmup,
                "max_weights_gb": max_weights_gb,
                "compile": compile,
                "threads": threads,
            }
            rows.append(_run_one(spec, env, timeout_s))
            bar.update(1)
    finally:
        bar.close()
    return rows


def _run_one(spec: dict[str, Any], env: dict[str, str], timeout_s: float) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "robofm.deploy.bench", "--one", json.dumps(spec)]
    fail = {**dict.fromkeys(ROW_FIELDS), "preset": spec["preset"], "head": spec["head"]}
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        return {**fail, "error": f"timed out after {timeout_s:.0f} s"}
    line = next((x for x in reversed(out.stdout.splitlines()) if x.startswith("RESULT ")), None)
    if line is None:
        err = (out.stderr.strip().splitlines() or [f"exit status {out.returncode}"])[-1]
        return {**fail, "error": err[:300]}
    return json.loads(line[len("RESULT ") :])


# ---- checkpoints ------------------------------------------------------------------------------


def synthetic_obs(policy, px: int = 0) -> dict:
    """A valid observation dict for `policy`: random uint8 frames of `px` (default the
    model's image size; a camera's own size makes `infer` pay for the resize), zero state,
    a prompt."""
    rng = np.random.default_rng(0)
    px = px or policy.model.cfg.image_size
    shape = (px, px, 3)  # (H, W, 3)
    return {
        "images": {c: rng.integers(0, 256, shape, dtype=np.uint8) for c in policy.cameras},
        "state": np.zeros(policy.state_dim, np.float32),
        "prompt": "pick up the red cube",
    }


def time_policies(
    policies: list, calls: int, warmup: int, obs: dict | None = None
) -> list[list[float]]:
    """Wall ms of `calls` `Policy.infer` calls per policy after `warmup` untimed ones, on
    `obs` (default `synthetic_obs` of the first policy); calls alternate between the policies
    so background load affects both alike. (`infer` returns numpy, so a GPU policy is
    synchronised by the copy back.)"""
    obs = obs or synthetic_obs(policies[0])
    for p in policies:
        for _ in range(warmup):
            p.infer(obs)
    times: list[list[float]] = [[] for _ in policies]
    for _ in range(calls):
        for p, t in zip(policies, times, strict=True):
            t0 = time.perf_counter()
            p.infer(obs)
            t.append((time.perf_counter() - t0) * 1000.0)
    return times


def compare_checkpoints(
    paths: list[str | Path],
    *,
    device: str = "cpu",
    reps: int = 20,
    warmup: int = 3,
    compile: bool = False,
    success: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One column per checkpoint (module docstring) and the B/A ratios. `success`: keyword
    arguments {task, splits, episodes, workers} for a closed-loop evaluation, or None."""
    import torch

    from robofm.deploy.quantize import QUANT_FILE, checkpoint_bytes
    from robofm.policy import Policy

    paths = [Path(p) for p in paths]
    if not 1 <= len(paths) <= 2:
        raise ConfigError(f"--checkpoint takes one or two checkpoints, got {len(paths)}")
    for p in paths:
        if not p.is_dir():
            raise ConfigError(f"{p}: not a checkpoint directory")
    if reps < 1 or warmup < 0:
        raise ConfigError("--reps must be >= 1 and --warmup >= 0")
    _check_device(device)
    policies, cols = [], []
    for path in paths:
        policy = Policy.from_checkpoint(path, device=device)
        obs = synthetic_obs(policy)
        t0 = time.perf_counter()
        policy.infer(obs)  # cold: the first call after loading
        cold = (time.perf_counter() - t0) * 1000.0
        total, _ = param_count(policy.model)
        policies.append(policy)
        cols.append(
            {
                "checkpoint": str(path),
                "head": policy.model.cfg.head,
                "quantized": (path / QUANT_FILE).exists(),
                "params_M": round(total / 1e6, 3),
                "disk_MB": round(checkpoint_bytes(path) / MB, 2),
                "weights_MB": round(state_bytes(policy.model) / MB, 2),
                "latency_cold_ms": round(cold, 3),
                "chunk_len": policy.model.cfg.chunk_len,
                "device": device,
            }
        )
    for col, ms in zip(cols, time_policies(policies, reps, warmup), strict=True):
        med, p90 = _percentiles(ms)
        col.update(
            latency_ms_median=round(med, 3),
            latency_ms_p90=round(p90, 3),
            **rates(col["chunk_len"], p90),
        )
    if compile:
        for col, path, eager in zip(cols, paths, policies, strict=True):
            col.update(
                _compiled_policy(path, eager, col["latency_ms_median"], device, reps, warmup)
            )
    if success:
        for col, path in zip(cols, paths, strict=True):
            col["success"] = _success(path, **success)
    body = {
        "mode": "checkpoints",
        "machine": machine_info(device),
        "settings": {"reps": reps, "warmup": warmup, "threads": torch.get_num_threads()},
        "columns": cols,
        "peak_rss_MiB": round(peak_rss_mib(), 1),
    }
    if len(cols) == 2:
        body["ratio"] = {k: _ratio(cols[0].get(k), cols[1].get(k)) for k in _numeric(cols)}
    return body


def _compiled_policy(path, eager, eager_median, device, reps, warmup) -> dict[str, Any]:
    """Compile fields for one checkpoint: a second Policy with compile=True."""
    from robofm.policy import Policy

    out: dict[str, Any] = dict.fromkeys(COMPILE_FIELDS)
    try:
        policy = Policy.from_checkpoint(path, device=device, compile=True)
        obs = synthetic_obs(policy)
        t0 = time.perf_counter()
        policy.infer(obs)
        out["compile_s"] = round(time.perf_counter() - t0, 2)
        policy.reset()
        eager.reset()
        diff = 0.0
        for prompt in ("pick up the red cube", "lift it"):
            o = {**obs, "prompt": prompt}
            a, b = eager.infer(o)["actions"], policy.infer(o)["actions"]
            diff = max(diff, float(np.abs(a - b).max()))
        eager.reset()
        out["compile_max_abs_diff"] = diff
        ms = time_policies([policy], reps, warmup)[0]
    except Exception as e:  # report, don't crash the comparison
        first = (str(e).strip().splitlines() or [""])[0]
        out["compile_error"] = f"{type(e).__name__}: {first}"[:300]
        return out
    median = float(np.median(ms))
    out.update(latency_ms_median_compiled=round(median, 3), speedup=round(eager_median / median, 2))
    return out


def _success(path: Path, task: str, splits: list[str], episodes: int, workers: int = 0):
    from robofm.eval.metrics import summarize
    from robofm.eval.rollouts import evaluate

    spec = {"kind": "checkpoint", "path": str(path)}
    results = evaluate(spec, [task], list(splits), episodes, workers=workers)
    return summarize(results)[task]


def _numeric(cols: list[dict]) -> list[str]:
    keys = [
        k for k, v in cols[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)
    ]
    return [k for k in keys if isinstance(cols[1].get(k), (int, float))]


def _ratio(a: Any, b: Any) -> float | None:
    return round(b / a, 3) if a else None


# ---- printing and the CLI -------------------------------------------------------------------


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.0f}" if abs(v) >= 1000 else f"{v:.4g}"
    if isinstance(v, list):
        return "+".join(map(str, v))
    return str(v)


def format_rows(rows: list[dict[str, Any]]) -> str:
    """Preset rows as a fixed-width table (skip and error reasons after the table)."""
    cols = [
        "preset",
        "head",
        "params_M",
        "weights_MB",
        "peak_mem_MB",
        "latency_cold_ms",
        "latency_ms_median",
        "latency_ms_p90",
        "rate_hz_replan_every_step",
        "rate_hz_chunked",
    ]
    if any("speedup" in r for r in rows):
        cols += ["latency_ms_median_compiled", "compile_s", "speedup"]
    widths = {c: max(len(c), *(len(_cell(r.get(c))) for r in rows)) for c in cols}
    lines = ["  ".join(c.ljust(widths[c]) for c in cols), "  ".join("-" * widths[c] for c in cols)]
    lines += ["  ".join(_cell(r.get(c)).ljust(widths[c]) for c in cols) for r in rows]
    for r in rows:
        for key in ("skipped", "error", "compile_error"):
            if r.get(key):
                lines.append(f"{r['preset']}:{r['head']} {key}: {r[key]}")
    return "\n".join(lines)


def format_columns(body: dict[str, Any]) -> str:
    """Checkpoint columns as a table: field | A | B | B/A."""
    cols = body["columns"]
    names = ["A", "B"][: len(cols)]
    fields = [k for k in cols[0] if k not in ("checkpoint", "success")]
    rows = [[k, *(_cell(c.get(k)) for c in cols)] for k in fields]
    if len(cols) == 2:
        for row, k in zip(rows, fields, strict=True):
            row.append(_cell(body["ratio"].get(k)))
    if "success" in cols[0]:
        for split in cols[0]["success"]:
            cells = [f"{c['success'][split]['successes']}/{c['success'][split]['n']}" for c in cols]
            rows.append([f"success {split}", *cells] + (["-"] if len(cols) == 2 else []))
    header = ["", *names] + (["B/A"] if len(cols) == 2 else [])
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = [f"{n}: {c['checkpoint']}" for n, c in zip(names, cols, strict=True)]
    lines.append("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    lines += ["  ".join(str(x).ljust(w) for x, w in zip(r, widths, strict=True)) for r in rows]
    for n, c in zip(names, cols, strict=True):
        if c.get("compile_error"):
            lines.append(f"{n} compile_error: {c['compile_error']}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="robofm bench",
        description="Parameters, memory, latency and control rate: per model preset and action "
        "head (default: all), or side by side for one or two checkpoints (--checkpoint). "
        "Prints a table and writes JSON; the fields are documented in robofm.deploy.bench.",
    )
    parser.add_argument("--params", action="store_true", help="parameter table of the presets")
    parser.add_argument("--preset", nargs="*", default=None, help="presets (default: all)")
    parser.add_argument("--head", nargs="*", default=None, help=f"heads (default: {HEADS})")
    parser.add_argument(
        "--checkpoint", action="append", default=None, help="checkpoint dir (give one or two)"
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--reps", type=int, default=20, help="timed calls per model")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls before timing")
    parser.add_argument(
        "--max-weights-gb", type=float, default=2.0, help="presets above this (fp32) are skipped"
    )
    parser.add_argument("--compile", action="store_true", help="also time under torch.compile")
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0 = default")
    parser.add_argument("--json", default=None, help="JSON path (default: bench.json in --out)")
    parser.add_argument("--out", default=".", help="directory for bench.json")
    s = parser.add_argument_group("closed-loop success (checkpoints, optional)")
    s.add_argument("--success-task", default=None, help="task family, e.g. lift")
    s.add_argument("--episodes", type=int, default=10, help="episodes per split")
    s.add_argument("--splits", nargs="+", default=["train"], help="e.g. train novel_object")
    s.add_argument("--eval-workers", type=int, default=0, help="processes; 0 = one per core")
    return parser


def main(argv: list[str]) -> int:
    """`robofm bench ...`; returns the exit status."""
    from robofm.atomic import atomic_write_text
    from robofm.progress import to_jsonable

    args = build_parser().parse_args(argv)
    if args.params:
        return _params(args)
    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    path = Path(args.json) if args.json else Path(args.out) / "bench.json"
    if args.checkpoint:
        if args.preset or args.head:
            raise ConfigError("--checkpoint compares checkpoints; drop --preset/--head")
        success = None
        if args.success_task:
            success = {
                "task": args.success_task,
                "splits": args.splits,
                "episodes": args.episodes,
                "workers": args.eval_workers,
            }
        body = compare_checkpoints(
            args.checkpoint,
            device=args.device,
            reps=args.reps,
            warmup=args.warmup,
            compile=args.compile,
            success=success,
        )
        print(format_columns(body))
    else:
        settings = {
            k: getattr(args, k)
            for k in ("device", "reps", "warmup", "max_weights_gb", "compile", "threads")
        }
        rows = bench_presets(args.preset, args.head, **settings)
        body = {
            "mode": "presets",
            "machine": machine_info(args.device),
            "settings": settings,
            "rows": rows,
        }
        print(format_rows(rows))
    atomic_write_text(path, json.dumps(to_jsonable(body), indent=2) + "\n")
    print(f"robofm bench: wrote {path}")
    return 0


def _params(args: argparse.Namespace) -> int:
    """`robofm bench --params`: the parameter table of the presets (meta-device counts)."""
    from robofm.atomic import atomic_write_text
    from robofm.config import MODEL_PRESETS, get_preset
    from robofm.models.params import params_table

    names = args.preset or list(MODEL_PRESETS)
    for n in names:
        get_preset(MODEL_PRESETS, n, "model preset")
    rows = params_table(names)
    cols = list(rows[0])
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
    print("  ".join(c.ljust(widths[c]) for c in cols))
    print("  ".join("-" * widths[c] for c in cols))
    for r in rows:
        print("  ".join(str(r[c]).ljust(widths[c]) for c in cols))
    if args.json:
        atomic_write_text(args.json, json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--one":  # internal: one configuration
        result = measure_config(**json.loads(sys.argv[2]))
        print("RESULT " + json.dumps(result), flush=True)
        sys.exit(0)
    from robofm.cli import main as cli_main

    sys.exit(cli_main(["bench", *sys.argv[1:]]))
