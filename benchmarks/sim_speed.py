"""Speed of the MuJoCo tabletop benchmark and success of its scripted experts.

Two tables:

1. Env steps/s on one task family (--speed-task, default pick_place) with random in-bound
   actions, resetting whenever an episode ends (resets are part of the timed loop, as in a
   rollout). Rendering both cameras at the default 96x96, and physics only (cameras=()) for
   reference; each in 1 process and in N = os.cpu_count() processes at once (total steps/s
   over the wall time of the parallel section). Env construction and the first reset are
   not timed; workers start the clock together at a barrier.
2. Expert success per task family over --seeds seeds (0 .. seeds-1) at --noise, episodes
   spread over N processes (spawn), rendering both cameras as recording does: success rate,
   mean episode length (all episodes, and successful ones), and episodes/s (wall time).

    MUJOCO_GL=egl .venv/bin/python benchmarks/sim_speed.py                # defaults
    MUJOCO_GL=egl .venv/bin/python benchmarks/sim_speed.py --steps 200 --seeds 20

Writes benchmarks/results/sim_speed_steps.json and sim_speed_expert.json (--out-dir).
On machines without a GPU, EGL renders through Mesa's software rasteriser (llvmpipe), which
runs its own threads; the GL renderer string is printed with the step table.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS_DIR, report
from robofm.sim.tasks import TASKS

SIZE = 96  # px, the default observation size


def _gl_renderer(env) -> str:
    """The OpenGL renderer behind the env's offscreen context (e.g. llvmpipe, or a GPU)."""
    try:
        from OpenGL import GL

        env.render_camera("front")  # makes the renderer's context current
        return GL.glGetString(GL.GL_RENDERER).decode()
    except Exception as e:  # informational only
        return f"unknown ({type(e).__name__})"


def _step_worker(job: tuple, barrier, queue) -> None:
    """Build an env, warm it up, wait for the others, then time `steps` random steps."""
    from robofm.sim.env import TabletopEnv

    family, cameras, steps, seed = job
    env = TabletopEnv(task=family, cameras=cameras, image_size=SIZE)
    space = env.robot_action_space
    rng = np.random.default_rng(seed)
    env.reset(seed=seed)
    renderer = _gl_renderer(env) if cameras else ""
    for _ in range(3):
        env.step(np.zeros(space.dim, np.float32))
    env.reset(seed=seed)
    actions = rng.uniform(space.low_array, space.high_array, (steps, space.dim)).astype(np.float32)
    barrier.wait()
    start = time.time()
    resets = 0
    episode = seed
    for a in actions:
        _, _, terminated, truncated, _ = env.step(a)
        if terminated or truncated:
            episode += 1000
            env.reset(seed=episode)
            resets += 1
    end = time.time()
    env.close()
    queue.put({"start": start, "end": end, "steps": steps, "resets": resets, "gl": renderer})


def step_rate(family: str, cameras: tuple[str, ...], steps: int, procs: int) -> dict[str, Any]:
    """Total env steps/s of `procs` processes stepping at once, `steps` each."""
    ctx = mp.get_context("spawn")
    barrier, queue = ctx.Barrier(procs), ctx.Queue()
    workers = [
        ctx.Process(target=_step_worker, args=((family, cameras, steps, 100 + k), barrier, queue))
        for k in range(procs)
    ]
    for w in workers:
        w.start()
    results = [queue.get(timeout=3600) for _ in workers]
    for w in workers:
        w.join()
        if w.exitcode != 0:
            raise RuntimeError(f"step worker exited with status {w.exitcode}")
    wall = max(r["end"] for r in results) - min(r["start"] for r in results)
    total = sum(r["steps"] for r in results)
    per_proc = [r["steps"] / (r["end"] - r["start"]) for r in results]
    return {
        "steps_s": total / wall,
        "steps_s_per_proc": float(np.mean(per_proc)),
        "resets": sum(r["resets"] for r in results),
        "gl": next((r["gl"] for r in results if r["gl"]), ""),
    }


_ENVS: dict[tuple, Any] = {}  # per-process env cache for expert episodes


def _expert_episode(job: tuple) -> dict[str, Any]:
    """Worker: one expert episode; success, steps and its own duration."""
    from robofm.sim.env import TabletopEnv
    from robofm.sim.experts import run_expert

    family, split, seed, noise = job
    key = (family, split)
    if key not in _ENVS:
        _ENVS[key] = TabletopEnv(task=family, split=split, image_size=SIZE)
    t0 = time.perf_counter()
    out = run_expert(_ENVS[key], seed, noise=noise)
    return {"success": out["success"], "steps": out["steps"], "s": time.perf_counter() - t0}


def _warm(_: int) -> int:
    """Worker: import the sim stack so that start-up is not timed."""
    import robofm.sim.experts  # noqa: F401

    return os.getpid()


def expert_rows(
    families: list[str], split: str, seeds: int, noise: float, procs: int
) -> list[dict[str, Any]]:
    """One row per family: expert success rate, mean length and episodes/s over `seeds`."""
    rows = []
    ctx = mp.get_context("spawn")
    with ctx.Pool(procs) as pool:
        pool.map(_warm, range(procs))
        for family in families:
            jobs = [(family, split, seed, noise) for seed in range(seeds)]
            t0 = time.perf_counter()
            results = pool.map(_expert_episode, jobs, chunksize=1)
            wall = time.perf_counter() - t0
            ok = [r for r in results if r["success"]]
            rows.append(
                {
                    "task": family,
                    "split": split,
                    "episodes": len(results),
                    "success_rate": round(len(ok) / len(results), 3),
                    "mean_steps": round(float(np.mean([r["steps"] for r in results])), 1),
                    "mean_steps_ok": round(float(np.mean([r["steps"] for r in ok])), 1)
                    if ok
                    else "",
                    "max_steps": TASKS[family].max_steps,
                    "episodes_s": round(len(results) / wall, 2),
                    "procs": procs,
                }
            )
            print(rows[-1], flush=True)
    total = sum(r["episodes"] for r in rows)
    rows.append(
        {
            "task": "all",
            "split": split,
            "episodes": total,
            "success_rate": round(
                sum(r["success_rate"] * r["episodes"] for r in rows) / max(total, 1), 3
            ),
            "episodes_s": round(total / sum(r["episodes"] / r["episodes_s"] for r in rows), 2),
            "procs": procs,
        }
    )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=500, help="timed env steps per process")
    parser.add_argument("--seeds", type=int, default=50, help="expert episodes per family")
    parser.add_argument("--noise", type=float, default=1.0, help="expert noise scale")
    parser.add_argument("--split", default="train", help="split the expert episodes use")
    parser.add_argument("--speed-task", default="pick_place", help="family timed in table 1")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), help="families in table 2")
    parser.add_argument("--procs", type=int, default=os.cpu_count() or 1, help="parallel N")
    parser.add_argument("--out-dir", default=str(RESULTS_DIR), help="where the JSON goes")
    args = parser.parse_args()
    out_dir = Path(args.out_dir)

    step_table = []
    for label, cameras in (("front+wrist 96px", ("front", "wrist")), ("physics only", ())):
        for procs in sorted({1, args.procs}):
            r = step_rate(args.speed_task, cameras, args.steps, procs)
            row = {
                "task": args.speed_task,
                "render": label,
                "procs": procs,
                "steps_per_proc": args.steps,
                "steps_s": round(r["steps_s"], 1),
                "steps_s_per_proc": round(r["steps_s_per_proc"], 1),
                "ms_per_step": round(1000.0 * procs / r["steps_s"], 2),
                "resets": r["resets"],
            }
            if r["gl"]:
                print(f"GL renderer: {r['gl']}")
            step_table.append(row)
            print(row, flush=True)
    report("sim_speed_steps", step_table, out_dir / "sim_speed_steps.json")

    rows = expert_rows(args.tasks, args.split, args.seeds, args.noise, args.procs)
    report("sim_speed_expert", rows, out_dir / "sim_speed_expert.json")


if __name__ == "__main__":
    main()
