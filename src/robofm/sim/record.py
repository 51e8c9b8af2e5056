"""Record scripted-expert demonstrations as a LeRobot v3 dataset, in parallel processes.

Seeds are tried in order (`seed`, `seed + 1`, ...) per task family and the first `episodes`
successful ones are kept, so the dataset is the same whatever the number of workers. Each
worker process builds its own env (and GL context); nothing MuJoCo crosses a process
boundary except plain numpy arrays.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from robofm.data.episode import Episode, InMemorySource
from robofm.data.lerobot_write import WriteOptions, write_lerobot
from robofm.errors import ConfigError
from robofm.progress import progress
from robofm.sim.tasks import TASKS, check_split, get_family

SEED_STRIDE = 100_000  # seeds of different families never overlap


@dataclass(frozen=True)
class RecordConfig:
    """What to record."""

    tasks: tuple[str, ...] = ("pick_place",)  # task families; ("all",) for every family
    episodes: int = 50  # successful episodes kept per family
    split: str = "train"  # scene/instruction split to draw tasks from
    seed: int = 0  # first seed; family k uses seed + k * SEED_STRIDE onwards
    noise: float = 1.0  # expert noise scale (0 = clean script)
    image_size: int = 96  # camera Hpx = Wpx
    workers: int = 0  # processes; 0 = one per CPU core
    keep_failed: bool = False  # also keep episodes the expert failed (they count to `episodes`)
    max_attempts_factor: float = 3.0  # give up after this many tries per kept episode


def resolve_tasks(names: tuple[str, ...] | list[str] | str) -> list[str]:
    """Expand "all" and comma lists; raise `ConfigError` naming an unknown task."""
    if isinstance(names, str):
        names = [names]
    out: list[str] = []
    for item in names:
        for name in str(item).split(","):
            name = name.strip()
            if name == "all":
                out += [t for t in TASKS if t not in out]
            elif name:
                get_family(name)
                if name not in out:
                    out.append(name)
    if not out:
        raise ConfigError(f"no task given; valid tasks: {', '.join(TASKS)}, or all")
    return out


_ENVS: dict[tuple, Any] = {}  # per-process env cache


def _run_one(job: tuple) -> dict[str, Any]:
    """Worker: one expert episode -> plain arrays."""
    from robofm.sim.env import TabletopEnv
    from robofm.sim.experts import run_expert

    family, split, seed, noise, size = job
    key = (family, split, size)
    if key not in _ENVS:
        _ENVS[key] = TabletopEnv(task=family, split=split, image_size=size)
    env = _ENVS[key]
    out = run_expert(env, seed, noise=noise)
    obs = out["observations"][:-1]  # the observation each action was taken from
    return {
        "family": family,
        "seed": seed,
        "success": out["success"],
        "instruction": env.task.instruction,
        "target": env.task.target.name,
        "actions": np.stack(out["actions"]).astype(np.float32),
        "states": np.stack([o["state"] for o in obs]).astype(np.float32),
        "images": {c: np.stack([o["images"][c] for o in obs]) for c in env.config.cameras},
    }


def collect(cfg: RecordConfig) -> tuple[list[Episode], dict[str, dict[str, float]]]:
    """Run the experts; returns the kept episodes and per-family attempt/success counts."""
    check_split(cfg.split)
    families = resolve_tasks(cfg.tasks)
    if cfg.episodes < 1:
        raise ConfigError(f"episodes is {cfg.episodes}; must be >= 1")
    workers = cfg.workers or os.cpu_count() or 1
    ctx = mp.get_context("spawn")
    episodes: list[Episode] = []
    summary: dict[str, dict[str, float]] = {}
    from robofm.sim.env import TabletopEnv  # noqa: F401  (fail here, not in a worker)

    pool = ctx.Pool(workers) if workers > 1 else None
    try:
        for k, family in enumerate(families):
            base = cfg.seed + k * SEED_STRIDE
            limit = int(np.ceil(cfg.episodes * cfg.max_attempts_factor))
            jobs = [(family, cfg.split, base + i, cfg.noise, cfg.image_size) for i in range(limit)]
            results = pool.imap(_run_one, jobs) if pool else map(_run_one, jobs)
            tried = kept = ok = 0
            bar = progress(total=cfg.episodes, desc=f"record {family}", unit="ep")
            for r in results:
                tried += 1
                ok += r["success"]
                if r["success"] or cfg.keep_failed:
                    episodes.append(_episode(len(episodes), r, cfg.split))
                    kept += 1
                    bar.update(1)
                if kept >= cfg.episodes:
                    break
            bar.close()
            summary[family] = {
                "tried": tried,
                "succeeded": ok,
                "kept": kept,
                "success_rate": ok / max(tried, 1),
            }
            if kept < cfg.episodes:
                raise ConfigError(
                    f"task '{family}': only {kept} of {cfg.episodes} episodes succeeded in "
                    f"{tried} tries; lower the noise or raise max_attempts_factor"
                )
    finally:
        if pool is not None:
            pool.terminate()
    return episodes, summary


def _episode(index: int, r: dict[str, Any], split: str) -> Episode:
    from robofm.sim.env import TabletopEnv

    t = len(r["actions"])
    return Episode(
        index=index,
        task=r["instruction"],
        actions=r["actions"],
        states=r["states"],
        timestamps=np.arange(t, dtype=np.float64) / TabletopEnv.metadata["render_fps"],
        images=r["images"],
        meta={
            "family": r["family"],
            "seed": r["seed"],
            "split": split,
            "success": r["success"],
            "target": r["target"],
        },
    )


def record(
    cfg: RecordConfig,
    out: str | Path,
    *,
    overwrite: bool = False,
    options: WriteOptions | None = None,
) -> dict[str, Any]:
    """Record `cfg` into a LeRobot v3 dataset at `out` (written atomically).

    Returns {"info": info.json dict, "summary": per-family counts, "episodes": N}.
    """
    from robofm.sim.env import ROBOT, sim_action_space, sim_state_space

    episodes, summary = collect(cfg)
    source = InMemorySource(
        episodes,
        fps=10.0,
        name=Path(out).name,
        action_space=sim_action_space(),
        state_space=sim_state_space(),
    )
    opts = options or WriteOptions(robot_type=ROBOT)
    info = write_lerobot(source, out, opts, overwrite=overwrite)
    return {"info": info, "summary": summary, "episodes": len(episodes)}


def smoke_checkpoint(
    root: str | Path,
    *,
    image_size: int = 32,
    chunk_len: int = 4,
    record_px: int = 0,
    episodes: int = 2,
    steps: int = 2,
    head: str = "",
) -> Path:
    """A real, barely trained `tiny` checkpoint for the sim robot, in seconds.

    Records `episodes` lift demonstrations (at `record_px`, default `image_size`) under
    `root/lift` and trains the `tiny` preset (`image_size` px, chunk `chunk_len`, action head
    `head`, default the preset's) for `steps` steps into `root/run`. Its ActionSpace, stats and
    cameras are the sim's, so it serves, evaluates and drives `robofm run` like any trained
    policy: for smoke tests of the serving and evaluation paths and for benchmarks of their
    overhead, not for success rates.
    Returns the checkpoint directory.
    """
    from dataclasses import replace

    from robofm.config import MODEL_PRESETS, DataConfig, OptimConfig, TrainConfig
    from robofm.train.loop import latest_checkpoint, train

    root = Path(root)
    px = record_px or image_size
    record(
        RecordConfig(tasks=("lift",), episodes=episodes, workers=1, image_size=px), root / "lift"
    )
    cfg = TrainConfig(
        model=replace(
            MODEL_PRESETS["tiny"],
            image_size=image_size,
            chunk_len=chunk_len,
            head=head or MODEL_PRESETS["tiny"].head,
        ),
        data=DataConfig(paths=(str(root / "lift"),), batch_size=4),
        optim=OptimConfig(warmup_steps=1),
        steps=steps,
        ckpt_every=steps,
        out_dir=str(root / "run"),
        model_pretrained=False,
    )
    train(cfg)
    return latest_checkpoint(root / "run")
