"""Closed-loop rollouts of a policy in `TabletopEnv`, one episode or a whole benchmark.

A policy is named by a plain, picklable `PolicySpec` dict so that worker processes can build
it themselves (nothing torch or MuJoCo crosses a process boundary, only numpy arrays):

- `{"kind": "checkpoint", "path": str}`: a trained VLA (`Policy.from_checkpoint`), loaded
  once per worker process with one torch thread;
- `{"kind": "expert", "noise": float}`: the privileged `ScriptedExpert` (an upper bound);
- `{"kind": "random"}`: uniform random actions in the `ActionSpace` bounds (a lower bound).

Evaluation seeds start at `EVAL_SEED0` = 1_000_000. `robofm sim record` draws its scenes from
seeds 0 + k * 100_000 + attempt (family k), so evaluation never replays a recorded training
scene (for recordings of fewer than 600_000 attempts per family), and the env salts each seed
with the split, so a novel split never replays train scenes either.

Every episode is a pure function of (spec, task, split, seed, options): results are identical
whatever the number of worker processes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing as mp
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from robofm.errors import ConfigError
from robofm.progress import progress
from robofm.sim.tasks import check_split, get_family

EVAL_SEED0 = 1_000_000  # first evaluation seed; recording seeds start at 0
EXPERT_SEED_OFFSET = 1_000_003  # the expert's own rng seed = episode seed + this (as run_expert)

PolicySpec = dict[str, Any]  # {"kind": "checkpoint" | "expert" | "random", ...}; see module doc
SPEC_KINDS = ("checkpoint", "expert", "random")


@dataclass
class EpisodeResult:
    """One evaluated episode."""

    task: str  # task family
    split: str  # scene/instruction split
    seed: int  # env reset seed (names the scene)
    success: bool  # the task's success check held when the episode ended
    steps: int  # control steps executed (10 Hz)
    instruction: str  # the prompt the policy saw (the override when one was given)
    latency_ms: list[float]  # wall time of each policy call (one action chunk), ms
    episode: int = 0  # index i within its (task, split); seed = seed0 + i
    frames: np.ndarray | None = (
        None  # uint8 (steps + 1, Hpx, n_cams * Wpx, 3), cameras side by side
    )

    @property
    def calls(self) -> int:
        """Policy calls made (action chunks requested)."""
        return len(self.latency_ms)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (frames left out; `recorded` says whether there were any)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "frames"}
        d["latency_ms"] = [float(x) for x in self.latency_ms]
        d["recorded"] = self.frames is not None
        return d


class Actor(Protocol):
    """What `rollout` drives: `reset()` after each env reset, then `chunk(obs)` for
    float32 (H, D) actions in robot units, executed open-loop."""

    def reset(self) -> None: ...

    def chunk(self, obs: dict[str, Any]) -> np.ndarray: ...


# ---------------------------------------------------------------------------------------------
# Actors.


class CheckpointActor:
    """A trained `Policy`; the episode seed seeds its sampling noise (flow/diffusion heads)."""

    def __init__(self, policy, seed: int):
        self.policy = policy
        self.seed = seed

    def reset(self) -> None:
        self.policy.seed = self.seed
        self.policy.reset()  # clears the observation history, reseeds the generator

    def chunk(self, obs: dict[str, Any]) -> np.ndarray:
        return self.policy.infer(obs)["actions"]  # (H, D)


class ExpertActor:
    """The scripted expert (privileged: it reads the env's physics state, not `obs`)."""

    def __init__(self, env, noise: float, seed: int):
        self.env = env
        self.noise = float(noise)
        self.seed = seed
        self.expert = None

    def reset(self) -> None:
        from robofm.sim.experts import ScriptedExpert

        self.expert = ScriptedExpert(self.env, self.noise, seed=self.seed + EXPERT_SEED_OFFSET)
        self.expert.reset()  # plans for the env's current task

    def chunk(self, obs: dict[str, Any]) -> np.ndarray:
        return self.expert.act()[None]  # (1, D)


class RandomActor:
    """Uniform random actions inside the env's `ActionSpace` bounds, seeded per episode."""

    def __init__(self, env, seed: int):
        space = env.robot_action_space
        self.low, self.high = space.low_array, space.high_array
        self.seed = seed
        self.rng = np.random.default_rng(seed)

    def reset(self) -> None:
        self.rng = np.random.default_rng(self.seed)

    def chunk(self, obs: dict[str, Any]) -> np.ndarray:
        return self.rng.uniform(self.low, self.high)[None].astype(np.float32)  # (1, D)


def check_spec(spec: PolicySpec) -> PolicySpec:
    """`spec` itself, or `ConfigError` saying what is wrong with it."""
    if not isinstance(spec, dict) or spec.get("kind") not in SPEC_KINDS:
        raise ConfigError(
            f"policy spec {spec!r} needs 'kind' in {', '.join(SPEC_KINDS)}, e.g. "
            '{"kind": "checkpoint", "path": "runs/x/checkpoints/step_0001000"}'
        )
    if spec["kind"] == "checkpoint":
        path = spec.get("path")
        if not path or not Path(path).is_dir():
            raise ConfigError(f"checkpoint spec: {path!r} is not a checkpoint directory")
    return spec


def spec_name(spec: PolicySpec) -> str:
    """A short label for reports: the checkpoint's folder, "expert" or "random"."""
    if spec["kind"] == "checkpoint":
        p = Path(spec["path"])
        return f"{p.parent.parent.name}/{p.name}" if p.parent.name == "checkpoints" else p.name
    if spec["kind"] == "expert":
        return f"expert(noise={float(spec.get('noise', 0.0)):g})"
    return spec["kind"]


def _load_policy(path: str, policies: dict | None):
    """Load (or reuse from `policies`) the checkpoint at `path`; a checkpoint rewritten in
    place is reloaded (the cache key includes the weights file's mtime and size)."""
    from robofm.policy import Policy

    weights = Path(path) / "model.safetensors"
    st = weights.stat() if weights.exists() else None
    key = (str(Path(path).resolve()), st and (st.st_mtime_ns, st.st_size))
    if policies is not None and key in policies:
        return policies[key]
    policy = Policy.from_checkpoint(path)
    if policies is not None:
        policies[key] = policy
    return policy


def make_actor(spec: PolicySpec, env, seed: int, *, policies: dict | None = None) -> Actor:
    """The actor for `spec` on `env` for the episode with reset seed `seed`.

    `policies` is an optional cache (a dict owned by the caller) so that a checkpoint is
    loaded once per process rather than once per episode.
    """
    check_spec(spec)
    kind = spec["kind"]
    if kind == "expert":
        return ExpertActor(env, float(spec.get("noise", 0.0)), seed)
    if kind == "random":
        return RandomActor(env, seed)
    policy = _load_policy(spec["path"], policies)
    policy.spaces.action.check_compatible(
        env.robot_action_space, ignore=("chunk_len",), labels=("checkpoint", "env")
    )
    return CheckpointActor(policy, seed)


# ---------------------------------------------------------------------------------------------
# One episode.


def _tile(obs: dict[str, Any], cameras: tuple[str, ...]) -> np.ndarray:
    return np.concatenate([obs["images"][c] for c in cameras], axis=1)  # (H, n_cams * W, 3)


def rollout(
    env,
    actor: Actor,
    seed: int,
    *,
    replan_every: int = 5,
    instruction: str | None = None,
    record_frames: bool = False,
    max_steps: int | None = None,
) -> EpisodeResult:
    """Run one episode of `actor` in `env` from reset seed `seed`.

    The actor is asked for a chunk at the start, then whenever `replan_every` actions of the
    current chunk have run or the chunk is used up; actions run open-loop in between. The
    episode ends when the env terminates (success) or truncates (its step limit), or after
    `max_steps` steps when given. `instruction` replaces the prompt the policy sees (the task
    and its success check stay). `record_frames` keeps every camera image, side by side.
    """
    if replan_every < 1:
        raise ConfigError(f"replan_every is {replan_every}; must be >= 1")
    cameras = tuple(env.config.cameras)
    if record_frames and not cameras:
        raise ConfigError("record_frames needs an env with cameras")
    options = {"instruction": instruction} if instruction else None
    obs, info = env.reset(seed=seed, options=options)
    actor.reset()
    prompt = obs["prompt"]
    frames = [_tile(obs, cameras)] if record_frames else None
    latency_ms: list[float] = []
    chunk = np.zeros((0, 0), np.float32)  # (H, D), the chunk being executed
    used = 0  # actions of `chunk` executed so far
    steps = 0
    success = False
    while True:
        if used >= len(chunk) or used >= replan_every:
            t0 = time.perf_counter()
            chunk = np.asarray(actor.chunk(obs), dtype=np.float32)
            latency_ms.append((time.perf_counter() - t0) * 1000.0)
            if chunk.ndim != 2 or len(chunk) == 0:
                raise ValueError(f"actor returned actions of shape {chunk.shape}; need (H, D)")
            used = 0
        obs, _, terminated, truncated, info = env.step(chunk[used])
        used += 1
        steps += 1
        success = bool(info["success"])
        if frames is not None:
            frames.append(_tile(obs, cameras))
        if terminated or truncated or (max_steps is not None and steps >= max_steps):
            break
    return EpisodeResult(
        task=env.config.task,
        split=env.config.split,
        seed=int(seed),
        success=success,
        steps=steps,
        instruction=prompt,
        latency_ms=latency_ms,
        frames=np.stack(frames) if frames is not None else None,
    )


# ---------------------------------------------------------------------------------------------
# A benchmark, in parallel processes.


@dataclass(frozen=True)
class _Job:
    spec: PolicySpec
    task: str
    split: str
    episode: int  # index within (task, split)
    seed: int
    image_size: int  # camera Hpx = Wpx
    replan_every: int
    instruction: str | None  # prompt override, or None for the task's own
    record_frames: bool


class _Cache:
    """Per-process state: one env per (task, split, size) and the loaded checkpoints."""

    def __init__(self) -> None:
        self.envs: dict[tuple, Any] = {}
        self.policies: dict[tuple, Any] = {}

    def env(self, task: str, split: str, size: int):
        from robofm.sim.env import TabletopEnv

        key = (task, split, size)
        if key not in self.envs:
            self.envs[key] = TabletopEnv(task=task, split=split, image_size=size)
        return self.envs[key]

    def close(self) -> None:
        for env in self.envs.values():
            env.close()
        self.envs.clear()
        self.policies.clear()


def _run(job: _Job, cache: _Cache) -> EpisodeResult:
    env = cache.env(job.task, job.split, job.image_size)
    actor = make_actor(job.spec, env, job.seed, policies=cache.policies)
    result = rollout(
        env,
        actor,
        job.seed,
        replan_every=job.replan_every,
        instruction=job.instruction,
        record_frames=job.record_frames,
    )
    result.episode = job.episode
    return result


_WORKER_CACHE: _Cache | None = None  # set in worker processes only


def _init_worker() -> None:
    global _WORKER_CACHE
    os.environ["OMP_NUM_THREADS"] = "1"  # before torch is imported in this process
    _WORKER_CACHE = _Cache()


def _run_in_worker(job: _Job) -> EpisodeResult:
    if job.spec["kind"] == "checkpoint":
        import torch

        torch.set_num_threads(1)
    assert _WORKER_CACHE is not None
    return _run(job, _WORKER_CACHE)


@contextlib.contextmanager
def _one_torch_thread(spec: PolicySpec):
    """In-process runs use one torch thread too, so results match worker processes."""
    if spec["kind"] != "checkpoint":
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def evaluate(
    spec: PolicySpec,
    tasks: list[str],
    splits: list[str],
    episodes: int,
    *,
    seed0: int = EVAL_SEED0,
    replan_every: int = 5,
    workers: int = 0,
    image_size: int = 96,
    instructions: list[str] | None = None,
    video_episodes: int = 0,
    out_dir: str | Path | None = None,
) -> list[EpisodeResult]:
    """Evaluate `spec` on `episodes` episodes per (task, split); seeds seed0 + i.

    `workers` spawn processes (0 = one per CPU core; 1 = in this process). `instructions`:
    held-out phrasings, episode i is told `instructions[i % len(instructions)]` instead of
    the task's own. The first `video_episodes` episodes per (task, split) keep their frames
    (for `write_report` videos). With `out_dir`, the report is written there too.
    Results come back in (task, split, episode) order, identical for any `workers`.
    """
    check_spec(spec)
    for task in tasks:
        get_family(task)
    for split in splits:
        check_split(split)
    if episodes < 1:
        raise ConfigError(f"episodes is {episodes}; must be >= 1")
    if instructions is not None and not instructions:
        raise ConfigError("instructions is an empty list; pass None to keep the tasks' own")
    if replan_every < 1:
        raise ConfigError(f"replan_every is {replan_every}; must be >= 1")
    from robofm.sim.env import TabletopEnv  # noqa: F401  (fail here, not in a worker)

    jobs = [
        _Job(
            spec=spec,
            task=task,
            split=split,
            episode=i,
            seed=seed0 + i,
            image_size=image_size,
            replan_every=replan_every,
            instruction=instructions[i % len(instructions)] if instructions else None,
            record_frames=i < video_episodes,
        )
        for task in tasks
        for split in splits
        for i in range(episodes)
    ]
    workers = min(workers or os.cpu_count() or 1, len(jobs))
    name = spec_name(spec)
    bar = progress(total=len(jobs), desc=f"eval {name}", unit="ep")
    results: list[EpisodeResult] = []
    ok = 0
    pool = mp.get_context("spawn").Pool(workers, initializer=_init_worker) if workers > 1 else None
    cache = _Cache()
    try:
        with _one_torch_thread(spec):
            it = pool.imap(_run_in_worker, jobs) if pool else (_run(j, cache) for j in jobs)
            for r in it:
                results.append(r)
                ok += r.success
                bar.update(1)
                bar.set_postfix(success=f"{ok}/{len(results)}", refresh=False)
        if pool is not None:
            pool.close()
            pool.join()
    finally:
        bar.close()
        cache.close()
        if pool is not None:
            pool.terminate()
    if out_dir is not None:
        from robofm.eval.reports import write_report

        write_report(results, out_dir, name=name)
    return results
