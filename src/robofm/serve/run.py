"""`robofm run --sim TASK --server ws://HOST:PORT`: the robot side of deployment, on the sim.

This process is the robot: it drives the built-in MuJoCo benchmark (`TabletopEnv`) through
`PolicyClient` (the policy runs in the `robofm serve` process), the fixed-rate `ControlLoop`
and the `SafetyLayer`, exactly as a real robot would, and reports closed-loop success with
its 95% Wilson interval next to the timing a robot cares about: achieved control rate (Hz),
inference latency p50/p99 (ms), queue underruns, action jumps at chunk boundaries and safety
interventions. Writes `run.json` and `run.png` (per-episode latency and rate) to `--out`.

By default the loop is paced in real time at the ActionSpace's control rate (10 Hz for the
sim); `--no-realtime` runs the sim as fast as it goes on a simulated clock instead.
"""

from __future__ import annotations

import argparse
import io
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from robofm.errors import ConfigError

MAX_TABLE_EPISODES = 20  # per-episode rows printed; the JSON has all of them


class SimRobot:
    """`Robot` adapter for a `TabletopEnv`: observe() is the last observation, apply() steps
    the env and reports termination (success) or truncation (its step limit)."""

    def __init__(self, env: Any, obs: dict[str, Any]):
        self.env = env
        self.obs = obs
        self.success = False

    def observe(self) -> dict[str, Any]:
        return self.obs

    def apply(self, action: np.ndarray) -> bool:
        self.obs, _, terminated, truncated, info = self.env.step(action)
        self.success = bool(info["success"])
        return bool(terminated or truncated)


def _parser() -> argparse.ArgumentParser:
    from robofm.eval.rollouts import EVAL_SEED0
    from robofm.sim.tasks import SPLITS, TASKS

    p = argparse.ArgumentParser(
        prog="robofm run",
        description="Run a served policy on the simulated robot through the robot runtime "
        "(client, fixed-rate control loop with async action chunking, safety layer) and "
        "report success with 95% Wilson intervals plus control-rate and latency statistics.",
    )
    p.add_argument("--sim", required=True, metavar="TASK", help=f"task family, of {list(TASKS)}")
    p.add_argument("--server", required=True, help="policy server URL, ws://HOST:PORT")
    p.add_argument("--split", default="train", help=f"scene split, of {list(SPLITS)}")
    p.add_argument("--episodes", type=int, default=10, help="episodes to run")
    p.add_argument("--execute-k", type=int, default=0, help="actions run per chunk; 0 = H")
    p.add_argument("--sync", action="store_true", help="request, wait, execute k (no overlap)")
    p.add_argument(
        "--blend",
        choices=("ensemble", "none"),
        default="ensemble",
        help="overlapping chunks (async): ACT temporal ensembling, or the newest replaces",
    )
    p.add_argument("--seed", type=int, default=EVAL_SEED0, help="first episode seed")
    p.add_argument("--out", default="runs/run", help="directory for run.json and run.png")
    p.add_argument("--api-key", default=None, help="server API key (Authorization header)")
    p.add_argument("--max-steps", type=int, default=0, help="steps per episode; 0 = task's")
    p.add_argument("--image-size", type=int, default=0, help="camera px; 0 = the server's")
    p.add_argument("--watchdog-ms", type=float, default=0.0, help="0 = two chunk durations")
    p.add_argument("--timeout-s", type=float, default=30.0, help="longest wait for a reply, s")
    p.add_argument(
        "--no-realtime",
        action="store_true",
        help="simulated clock, no pacing (fast); --sim-latency-steps sets the chunk delay",
    )
    p.add_argument("--sim-latency-steps", type=int, default=0, help="with --no-realtime")
    return p


def main(argv: list[str]) -> int:
    """Entry point of `robofm run`; returns the exit status."""
    args = _parser().parse_args(argv)
    if args.episodes < 1:
        raise ConfigError(f"--episodes is {args.episodes}; must be >= 1")
    result = run(args)
    print(format_result(result))
    print(f"wrote {result['paths']['json']}")
    return 0


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run `args.episodes` episodes; returns (and writes) the result dict."""
    from robofm.eval.metrics import rate_row
    from robofm.progress import progress
    from robofm.serve.client import PolicyClient
    from robofm.serve.runtime import ControlLoop, LoopConfig, summarize
    from robofm.serve.safety import SafetyConfig, SafetyLayer
    from robofm.sim import scene
    from robofm.sim.env import CAMERAS, TabletopEnv, sim_action_space, sim_state_space
    from robofm.sim.tasks import check_split, get_family

    get_family(args.sim)
    check_split(args.split)
    client = PolicyClient(args.server, api_key=args.api_key, timeout_s=args.timeout_s)
    meta = client.metadata
    # The sim executes whatever chunk length the policy emits, so the robot's contract takes
    # the server's H; every other field (names, units, modes, bounds, rate) must match.
    space = sim_action_space()
    served = meta.get("action_space")
    if isinstance(served, dict) and isinstance(served.get("chunk_len"), int):
        space = replace(space, chunk_len=served["chunk_len"])
    try:
        client.set_action_space(space)
    except Exception:
        client.close()
        raise
    cameras = tuple(c for c in meta.get("cameras", CAMERAS) if c in CAMERAS) or CAMERAS
    size = args.image_size or int(meta.get("image_size") or 96)
    chunk_len = int(meta.get("chunk_len") or space.chunk_len)
    env = TabletopEnv(task=args.sim, split=args.split, image_size=size, cameras=cameras)
    xy, (z0, z1) = scene.HAND_XY_RANGE_M, scene.HAND_Z_RANGE_M
    overrides: dict[str, Any] = {"workspace_low": (-xy, -xy, z0), "workspace_high": (xy, xy, z1)}
    if args.watchdog_ms > 0:
        overrides["watchdog_ms"] = args.watchdog_ms
    safety_cfg = SafetyConfig.from_action_space(
        replace(space, chunk_len=chunk_len), sim_state_space(), **overrides
    )
    safety = SafetyLayer(safety_cfg)
    loop_cfg = LoopConfig(
        control_hz=space.control_hz,
        execute_k=args.execute_k,
        mode="sync" if args.sync else "async",
        blend=args.blend,
        realtime=not args.no_realtime,
        sim_latency_steps=args.sim_latency_steps,
    )
    max_steps = args.max_steps or env.max_steps
    hold = np.where(space.delta_mask, 0.0, space.gripper_open).astype(np.float32)  # open, still
    episodes: list[dict[str, Any]] = []
    all_stats = []
    bar = progress(total=args.episodes, desc=f"run {args.sim}", unit="ep")
    try:
        with ControlLoop(client, safety, loop_cfg) as loop:
            for i in range(args.episodes):
                seed = args.seed + i
                obs, _ = env.reset(seed=seed)
                robot = SimRobot(env, obs)
                stats = loop.run_episode(robot, max_steps, initial_action=hold)
                all_stats.append(stats)
                s = stats.summary()
                episodes.append(
                    {
                        "episode": i,
                        "seed": seed,
                        "success": robot.success,
                        "instruction": obs["prompt"],
                        **{k: s[k] for k in _EPISODE_KEYS},
                    }
                )
                bar.update(1)
                ok = sum(e["success"] for e in episodes)
                bar.set_postfix(success=f"{ok}/{len(episodes)}", refresh=False)
    finally:
        bar.close()
        env.close()
        client.close()
    successes = sum(e["success"] for e in episodes)
    result: dict[str, Any] = {
        "task": args.sim,
        "split": args.split,
        "server": args.server,
        "server_model": meta.get("model"),
        "action_space_hash": meta.get("action_space_hash"),
        "config": {
            "mode": loop_cfg.mode,
            "blend": loop_cfg.blend if loop_cfg.mode == "async" else "n/a (sync)",
            "execute_k": args.execute_k or chunk_len,
            "chunk_len": chunk_len,
            "control_hz": loop_cfg.control_hz,
            "realtime": loop_cfg.realtime,
            "max_steps": max_steps,
            "image_size": size,
            "watchdog_ms": safety_cfg.watchdog_ms,
        },
        "success": rate_row(successes, len(episodes)),
        "timing": summarize(all_stats),
        "episodes": episodes,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result["paths"] = {"json": str(out / "run.json"), "plot": str(out / "run.png")}
    from robofm.atomic import atomic_write_bytes, atomic_write_text
    from robofm.progress import to_jsonable

    atomic_write_text(out / "run.json", json.dumps(to_jsonable(result), indent=2) + "\n")
    atomic_write_bytes(out / "run.png", _plot(episodes, loop_cfg.control_hz))
    return result


_EPISODE_KEYS = (
    "steps",
    "rate_hz",
    "policy_rate_hz",
    "underruns",
    "latency_ms_p50",
    "latency_ms_p99",
    "boundary_jump_mean",
    "chunks_received",
    "safety",
)


def format_result(r: dict[str, Any]) -> str:
    """Plain-text report: per-episode rows, then success with its CI and the timing."""
    t, s, c = r["timing"], r["success"], r["config"]
    lines = [
        f"robofm run: {r['task']} / {r['split']} via {r['server']} ({c['mode']}, blend "
        f"{c['blend']}, k={c['execute_k']} of H={c['chunk_len']}, {c['control_hz']:g} Hz)",
        "",
        f"{'ep':>3} {'seed':>8} {'ok':>3} {'steps':>5} {'rate Hz':>8} {'underruns':>9} "
        f"{'p50 ms':>7} {'p99 ms':>7} {'jump':>8}",
    ]
    for e in r["episodes"][:MAX_TABLE_EPISODES]:
        lines.append(
            f"{e['episode']:>3} {e['seed']:>8} {'yes' if e['success'] else 'no':>3} "
            f"{e['steps']:>5} {e['rate_hz']:>8.2f} {e['underruns']:>9} "
            f"{e['latency_ms_p50']:>7.1f} {e['latency_ms_p99']:>7.1f} "
            f"{e['boundary_jump_mean']:>8.4f}"
        )
    if len(r["episodes"]) > MAX_TABLE_EPISODES:
        lines.append(f"... {len(r['episodes']) - MAX_TABLE_EPISODES} more in run.json")
    interventions = ", ".join(f"{k} {v}" for k, v in t["safety"].items() if v) or "none"
    lines += [
        "",
        f"success          {s['successes']}/{s['n']} = {100 * s['rate']:.1f}% "
        f"(95% CI {100 * s['ci_low']:.1f}-{100 * s['ci_high']:.1f}%)",
        f"control rate     {t['rate_hz']:.2f} Hz achieved of {t['target_hz']:g} Hz "
        f"(policy actions {t['policy_rate_hz']:.2f} Hz, late ticks {t['late_steps']})",
        f"latency          p50 {t['latency_ms_p50']:.1f} ms, p99 {t['latency_ms_p99']:.1f} ms "
        f"over {t['chunks_received']} chunks",
        f"underruns        {t['underruns']} of {t['steps']} steps "
        f"({100 * t['underrun_frac']:.1f}%)",
        f"boundary jump    {t['boundary_jump_mean']:.4f} mean |a_new - a_old| over "
        f"{t['boundaries']} boundaries (step-to-step {t['step_jump_mean']:.4f})",
        f"safety           {interventions}",
    ]
    return "\n".join(lines)


def _plot(episodes: list[dict[str, Any]], target_hz: float) -> bytes:
    """PNG bytes: per-episode latency p50/p99 (ms) and achieved control rate (Hz)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    x = np.arange(len(episodes))
    fig = Figure(figsize=(8, 3.2), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    ax1.plot(x, [e["latency_ms_p50"] for e in episodes], "o-", label="p50")
    ax1.plot(x, [e["latency_ms_p99"] for e in episodes], "s--", label="p99")
    ax1.set_xlabel("episode")
    ax1.set_ylabel("inference latency, ms")
    ax1.legend(fontsize=8)
    ax2.plot(x, [e["rate_hz"] for e in episodes], "o-", label="loop")
    ax2.plot(x, [e["policy_rate_hz"] for e in episodes], "s--", label="policy actions")
    ax2.axhline(target_hz, color="gray", lw=0.8, label="target")
    ax2.set_xlabel("episode")
    ax2.set_ylabel("rate, Hz")
    ax2.set_ylim(0, target_hz * 1.2)
    ax2.legend(fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    return buf.getvalue()
