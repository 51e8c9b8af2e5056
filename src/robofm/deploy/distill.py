"""Distil a VLA teacher into a small, fast student, with DAgger relabelling.

The student learns to output the teacher's action chunks, not the demonstrator's:

1. **Teacher labels on the demonstrations.** Every frame of the demonstration datasets is
   shown to the teacher; its (normalised) chunk is the student's target. The last
   `val_episodes` episodes are held out to measure the student's error.
2. **DAgger rounds.** The student drives the MuJoCo benchmark (the training split of `task`,
   seeds from `DAGGER_SEED0`, never an evaluation seed). With probability `beta` (halved each
   round) a chunk comes from the teacher instead, as in DAgger's mixture policy. Every state
   the rollout visits is labelled by the teacher and added to the training set, so the
   student learns what the teacher would do in the states *its own* mistakes lead to. The
   student's error on a round's fresh states, measured before they are trained on, is the
   on-policy error DAgger drives down.

The student shares the teacher's normaliser and action contract (its checkpoint carries the
teacher's `stats.json` and ActionSpace), so the targets are the teacher's chunks exactly. A
frozen, unconditioned student vision encoder is run once per frame and cached (float16), as in
training. The student may predict a shorter chunk than the teacher (the first H_s actions).

Outputs under `out_dir`: `student/` (a checkpoint, written atomically), `distill.json` (config,
per-round errors and success, losses) and `distill.png` (loss and held-out error curves).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robofm.errors import ConfigError
from robofm.progress import progress
from robofm.types import Batch, Observation

DAGGER_SEED0 = 3_000_000  # first DAgger rollout seed; evaluation seeds are 1_000_000 + i
MAX_BUFFER_BYTES = 12 * 2**30  # demonstration frames held in memory for labelling/training
STATE_KEY = "observation.state"
ACTION_KEY = "action"


@dataclass(frozen=True)
class DistillConfig:
    """One distillation run."""

    teacher: str  # teacher checkpoint directory
    data: tuple[str, ...]  # demonstration datasets the teacher labels (LeRobot v3, RLDS, HDF5)
    out_dir: str = "runs/distill"  # where student/, distill.json and distill.png go
    student: str = "specialist"  # student model preset (robofm.config.MODEL_PRESETS)
    student_head: str = ""  # replace the preset's action head ("" = keep the preset's)
    student_image_size: int = 0  # student camera px (0 = the preset's); smaller is faster
    student_pretrained: bool = True  # student backbones from their shipped pretrained weights
    freeze_vision: bool = True  # keep the student's vision encoder frozen (features cached)
    steps: int = 3000  # optimiser steps on the teacher-labelled demonstrations
    dagger_rounds: int = 2  # rollout-relabel-train rounds after that
    dagger_steps: int = 1000  # optimiser steps after each round (on everything labelled)
    rollouts: int = 50  # student episodes per DAgger round
    beta: float = 0.5  # round 1's chance per chunk that the teacher acts; halved every round
    task: str = "lift"  # sim task family the rollouts run
    split: str = "train"  # sim split the rollouts draw scenes from
    replan_every: int = 2  # actions executed per chunk in rollouts (as `robofm eval`)
    batch_size: int = 64  # samples per optimiser step
    lr: float = 1e-3  # peak AdamW learning rate (cosine decay over all steps)
    weight_decay: float = 1e-4  # AdamW weight decay
    warmup_steps: int = 100  # linear warm-up steps
    val_episodes: int = 50  # demonstration episodes held out for the error report
    max_episodes: int = 0  # demonstration episodes used per dataset; 0 = all
    label_batch: int = 64  # frames per teacher / encoder call
    eval_every: int = 500  # steps between held-out error measurements
    seed: int = 0  # student init, batch order, rollout mixing and sampling noise


@dataclass
class StateBuffer:
    """Observations the teacher has labelled, one row per step, with what the student trains on.

    Rows of one episode are contiguous; `start[i]` is the row of its episode's first step, so a
    history of T_obs frames repeats that first frame, as `Policy` does at an episode start.
    """

    images: dict[str, np.ndarray]  # camera -> uint8 (N, Hpx, Wpx, 3)
    state: np.ndarray  # (N, S) float32, normalised with the teacher's stats
    prompt: np.ndarray  # (N,) int64 index into `prompts`
    start: np.ndarray  # (N,) int64 row of the episode's first step
    origin: np.ndarray  # (N,) int64: 0 = demonstration, r = DAgger round r
    labels: np.ndarray  # (N, H_teacher, D) float32, the teacher's normalised chunks
    prompts: list[str] = field(default_factory=list)
    features: dict[str, torch.Tensor] = field(default_factory=dict)  # cam -> (N, Ntok, C) fp16

    def __len__(self) -> int:
        return len(self.state)

    def history(self, rows: np.ndarray, t_obs: int) -> np.ndarray:
        """(n, t_obs) row indices of each row's last t_obs steps, clamped at its episode start."""
        back = np.arange(t_obs - 1, -1, -1)  # (T,) oldest first
        return np.maximum(rows[:, None] - back[None], self.start[rows][:, None])


def _empty_buffer(cameras, px: int, s: int, h: int, d: int) -> StateBuffer:
    return StateBuffer(
        images={c: np.zeros((0, px, px, 3), np.uint8) for c in cameras},
        state=np.zeros((0, s), np.float32),
        prompt=np.zeros(0, np.int64),
        start=np.zeros(0, np.int64),
        origin=np.zeros(0, np.int64),
        labels=np.zeros((0, h, d), np.float32),
    )


def _append(buf: StateBuffer, episodes: list[dict[str, Any]], origin: int) -> np.ndarray:
    """Add episodes ({"images": cam -> (T, px, px, 3), "state": (T, S) normalised, "prompt"})
    with zero labels; returns the new rows."""
    n0 = len(buf)
    starts, prompts, states = [], [], []
    row = n0
    for ep in episodes:
        t = len(ep["state"])
        if ep["prompt"] not in buf.prompts:
            buf.prompts.append(ep["prompt"])
        starts.append(np.full(t, row, np.int64))
        prompts.append(np.full(t, buf.prompts.index(ep["prompt"]), np.int64))
        states.append(np.asarray(ep["state"], np.float32))
        row += t
    n = row - n0
    for cam in buf.images:
        buf.images[cam] = np.concatenate([buf.images[cam], *(ep["images"][cam] for ep in episodes)])
    buf.state = np.concatenate([buf.state, *states])
    buf.prompt = np.concatenate([buf.prompt, *prompts])
    buf.start = np.concatenate([buf.start, *starts])
    buf.origin = np.concatenate([buf.origin, np.full(n, origin, np.int64)])
    h, d = buf.labels.shape[1:]
    buf.labels = np.concatenate([buf.labels, np.zeros((n, h, d), np.float32)])
    return np.arange(n0, row)


# ---------------------------------------------------------------------------------------------
# Model inputs from buffer rows.


def _transform(model):
    from robofm.data.transforms import build_image_transform

    scale = tuple(getattr(model, "transforms", {}).get("image_crop_scale", (1.0, 1.0)))
    return build_image_transform(model.cfg.image_size, train=False, scale=scale)


def _observation(
    model, buf: StateBuffer, rows: np.ndarray, robot: str, cached: bool
) -> Observation:
    """The model's `Observation` for buffer rows (n,): history, images or cached features."""
    t = model.cfg.n_obs_steps
    hist = buf.history(rows, t)  # (n, T)
    n = len(rows)
    images, feats = {}, {}
    for cam in model.cameras:
        if cached and cam in buf.features:
            f = buf.features[cam][torch.from_numpy(hist.reshape(-1))]  # (n*T, Ntok, C)
            feats[cam] = f.float().unflatten(0, (n, t))
        else:
            x = _transform(model)(buf.images[cam][hist.reshape(-1)])  # (n*T, 3, s, s)
            images[cam] = x.unflatten(0, (n, t))
    s = buf.state.shape[1]
    return Observation(
        images=images,
        image_mask={c: torch.ones(n, dtype=torch.bool) for c in model.cameras},
        state=torch.from_numpy(buf.state[hist]),  # (n, T, S)
        state_mask=torch.ones(n, s, dtype=torch.bool),
        prompt=[buf.prompts[i] for i in buf.prompt[rows]],
        embodiment=[robot] * n,
        image_features=feats,
    )


@torch.inference_mode()
def label(teacher, buf: StateBuffer, rows: np.ndarray, robot: str, batch: int, seed: int) -> None:
    """Fill `buf.labels[rows]` with the teacher's normalised chunks (sampling noise seeded)."""
    teacher.eval()
    gen = torch.Generator().manual_seed(seed)
    bar = progress(total=len(rows), desc="teacher labels", unit="frame")
    try:
        for i in range(0, len(rows), batch):
            r = rows[i : i + batch]
            obs = _observation(teacher, buf, r, robot, cached=False)
            out = teacher.sample_actions(obs, generator=gen)  # (n, H, D_model)
            buf.labels[r] = out[:, :, : buf.labels.shape[2]].float().numpy()
            bar.update(len(r))
    finally:
        bar.close()


@torch.inference_mode()
def cache_features(student, buf: StateBuffer, rows: np.ndarray, batch: int) -> None:
    """Append the student's frozen vision features of `rows` (which must be the newest rows)."""
    vision = student.vision
    vision.eval()
    transform = _transform(student)
    bar = progress(total=len(rows) * len(student.cameras), desc="student features", unit="frame")
    try:
        for cam in student.cameras:
            parts = [buf.features[cam]] if cam in buf.features else []
            for i in range(0, len(rows), batch):
                x = transform(buf.images[cam][rows[i : i + batch]])  # (n, 3, s, s)
                parts.append(vision(x).to(torch.float16))  # (n, Ntok, C)
                bar.update(len(x))
            buf.features[cam] = torch.cat(parts)
            if len(buf.features[cam]) != len(buf):
                raise RuntimeError("feature cache out of step with the buffer")
    finally:
        bar.close()


def _can_cache(student, cfg: DistillConfig) -> bool:
    v = getattr(student, "vision", None)
    return bool(cfg.freeze_vision and v is not None and not v.cond_dim)


# ---------------------------------------------------------------------------------------------
# Errors, in robot units.


@torch.inference_mode()
def action_error(
    student, buf: StateBuffer, rows: np.ndarray, normalizer, robot: str, cached: bool, seed: int
) -> dict[str, Any]:
    """The student's mean absolute error against the teacher's chunks on `rows`: overall in
    normalised units (`mae_norm`), per action dimension in robot units (`mae`, same order as
    the ActionSpace names), and over the first action only (`first_mae`, robot units)."""
    was = student.training
    student.eval()
    gen = torch.Generator().manual_seed(seed)
    h = student.cfg.chunk_len
    d = buf.labels.shape[2]
    preds = []
    for i in range(0, len(rows), 256):
        obs = _observation(student, buf, rows[i : i + 256], robot, cached)
        preds.append(student.sample_actions(obs, generator=gen)[:, :, :d].float().numpy())
    student.train(was)
    if cached:
        student.vision.eval()
    pred = np.concatenate(preds)  # (n, H_s, D)
    target = buf.labels[rows][:, :h]  # (n, H_s, D)
    robot_pred = normalizer.unnormalize(pred.reshape(-1, d), ACTION_KEY).reshape(pred.shape)
    robot_tgt = normalizer.unnormalize(target.reshape(-1, d), ACTION_KEY).reshape(target.shape)
    err = np.abs(robot_pred - robot_tgt)
    return {
        "rows": len(rows),
        "mae_norm": float(np.abs(pred - target).mean()),
        "mae": [float(x) for x in err.mean(axis=(0, 1))],
        "first_mae": [float(x) for x in err[:, 0].mean(axis=0)],
    }


# ---------------------------------------------------------------------------------------------
# Data in.


def load_demonstrations(
    paths: tuple[str, ...],
    normalizer,
    cameras,
    px: int,
    max_episodes: int,
    state_dim: int | None = None,
    max_bytes: int = MAX_BUFFER_BYTES,
) -> list[dict[str, Any]]:
    """Every demonstration episode of `paths` as {"images": cam -> uint8 (T, px, px, 3),
    "state": (T, S) normalised, "prompt": str, "name": "<dataset> episode i"}.

    The frames are held in memory at `px`: when they would take more than `max_bytes`, this
    says so before decoding anything (use `max_episodes`). `state_dim`: the teacher's S, checked
    per episode."""
    from robofm.data import open_dataset
    from robofm.data.mixture import resize_frames

    sources = []
    total = 0
    for path in paths:
        src = open_dataset(path)
        missing = sorted(set(cameras) - set(src.cameras))
        if missing:
            raise ConfigError(
                f"{path}: dataset lacks camera(s) {missing} the teacher needs ({list(cameras)})"
            )
        n = len(src) if max_episodes <= 0 else min(max_episodes, len(src))
        frames = sum(src.episode(i).length for i in range(n))  # low-dim arrays only
        total += frames * len(cameras) * px * px * 3
        sources.append((path, src, n))
    if total > max_bytes:
        raise ConfigError(
            f"distill: the demonstration frames of {list(paths)} take {total / 2**30:.1f} GiB at "
            f"{px} px, over the {max_bytes / 2**30:.0f} GiB buffer limit; use --max-episodes"
        )
    episodes = []
    for path, src, n in sources:
        for i in progress(range(n), desc=f"load {src.name}", unit="ep"):
            ep = src.episode(i, images=True)
            if ep.states.shape[1] == 0:
                raise ConfigError(f"{path}: episode {ep.index} has no state; the teacher needs it")
            if state_dim is not None and ep.states.shape[1] != state_dim:
                raise ConfigError(
                    f"{path}: episode {ep.index} has state dim {ep.states.shape[1]}; the "
                    f"teacher's robot has {state_dim}"
                )
            episodes.append(
                {
                    "images": {c: resize_frames(ep.images[c], px, px) for c in cameras},
                    "state": normalizer.normalize(ep.states.astype(np.float32), STATE_KEY),
                    "prompt": ep.task,
                    "name": f"{src.name} episode {ep.index}",
                }
            )
    if not episodes:
        raise ConfigError(f"no demonstration episodes in {list(paths)}")
    return episodes


def rollouts(
    student_policy,
    teacher_policy,
    cfg: DistillConfig,
    round_index: int,
    px: int,
    normalizer,
) -> tuple[list[dict[str, Any]], list[bool]]:
    """`cfg.rollouts` episodes of the student (the teacher acting with probability beta per
    chunk) in the sim; returns every visited observation per episode, and the successes."""
    from robofm.sim.env import TabletopEnv

    beta = cfg.beta * 0.5 ** (round_index - 1)
    rng = np.random.default_rng((cfg.seed, round_index))
    env = TabletopEnv(task=cfg.task, split=cfg.split, image_size=px)
    cams = student_policy.cameras
    episodes, successes = [], []
    bar = progress(total=cfg.rollouts, desc=f"DAgger round {round_index}", unit="ep")
    try:
        for k in range(cfg.rollouts):
            seed = DAGGER_SEED0 + 10_000 * round_index + k
            obs, _ = env.reset(seed=seed)
            student_policy.reset()
            teacher_policy.reset()
            frames = {c: [] for c in cams}
            states, chunk, used = [], np.zeros((0, 0), np.float32), 0
            success = False
            while True:
                for c in cams:
                    frames[c].append(obs["images"][c])
                states.append(np.asarray(obs["state"], np.float32))
                if used >= len(chunk) or used >= cfg.replan_every:
                    actor = teacher_policy if rng.random() < beta else student_policy
                    chunk, used = actor.infer(obs)["actions"], 0
                obs, _, terminated, truncated, info = env.step(chunk[used])
                used += 1
                success = bool(info["success"])
                if terminated or truncated:
                    break
            successes.append(success)
            episodes.append(
                {
                    "images": {c: np.stack(frames[c]) for c in cams},
                    "state": normalizer.normalize(np.stack(states), STATE_KEY),
                    "prompt": env.prompt,
                    "name": f"rollout seed {seed}",
                }
            )
            bar.update(1)
            bar.set_postfix(success=f"{sum(successes)}/{len(successes)}", refresh=False)
    finally:
        bar.close()
        env.close()
    return episodes, successes


# ---------------------------------------------------------------------------------------------
# The run.


def build_student(cfg: DistillConfig, teacher) -> torch.nn.Module:
    """The student VLA for the teacher's cameras, embodiment and action dimension."""
    from robofm.config import MODEL_PRESETS, get_preset
    from robofm.models.vla import VLA

    scfg = get_preset(MODEL_PRESETS, cfg.student, "model preset")
    if cfg.student_head:
        scfg = dataclasses.replace(scfg, head=cfg.student_head)
    if cfg.student_image_size:
        scfg = dataclasses.replace(scfg, image_size=cfg.student_image_size)
    if scfg.chunk_len > teacher.cfg.chunk_len:
        scfg = dataclasses.replace(scfg, chunk_len=teacher.cfg.chunk_len)
    torch.manual_seed(cfg.seed)
    student = VLA(
        scfg,
        cameras=teacher.cameras,
        state_dims=dict(teacher.embodiments.state_dims),
        action_dim=teacher.action_dim,
        pretrained=cfg.student_pretrained,
    )
    student.transforms = {"image_crop_scale": [1.0, 1.0]}
    if cfg.freeze_vision and student.vision is not None:
        for p in student.vision.parameters():
            p.requires_grad_(False)
    return student


def _lr(step: int, total: int, cfg: DistillConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    frac = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, frac)))


def check_config(cfg: DistillConfig) -> None:
    """`ConfigError` naming the first bad field."""
    if not cfg.data:
        raise ConfigError("distill: no demonstration data (--data DIR ...)")
    for name in ("steps", "batch_size", "replan_every", "label_batch", "eval_every"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"distill: {name} is {getattr(cfg, name)}; must be >= 1")
    for name in ("dagger_rounds", "dagger_steps", "rollouts", "val_episodes", "student_image_size"):
        if getattr(cfg, name) < 0:
            raise ConfigError(f"distill: {name} is {getattr(cfg, name)}; must be >= 0")
    if cfg.dagger_rounds and (cfg.rollouts < 1 or cfg.dagger_steps < 1):
        raise ConfigError("distill: DAgger rounds need rollouts >= 1 and dagger_steps >= 1")
    if not 0.0 <= cfg.beta <= 1.0:
        raise ConfigError(f"distill: beta is {cfg.beta}; must be in [0, 1]")
    if not Path(cfg.teacher).is_dir():
        raise ConfigError(f"distill: teacher {cfg.teacher!r} is not a checkpoint directory")


def check_sim(teacher_policy, cfg: DistillConfig, px: int) -> None:
    """`ConfigError` unless the sim task can host DAgger rollouts of this teacher: the same
    action contract (chunk length aside), its cameras and its state dimension."""
    from robofm.sim.env import TabletopEnv

    env = TabletopEnv(task=cfg.task, split=cfg.split, image_size=px)
    try:
        try:
            teacher_policy.spaces.action.check_compatible(
                env.robot_action_space, ignore=("chunk_len",), labels=("teacher", "sim")
            )
        except ValueError as e:
            raise ConfigError(
                f"distill: DAgger rollouts run in the sim task {cfg.task!r}, whose action "
                f"contract differs from the teacher's: {e}. Pass --rounds 0 to distil on the "
                "demonstrations only."
            ) from None
        missing = sorted(set(teacher_policy.cameras) - set(env.config.cameras))
        if missing:
            raise ConfigError(
                f"distill: the sim has no camera(s) {missing} the teacher needs; pass --rounds 0"
            )
    finally:
        env.close()


def distill(cfg: DistillConfig) -> dict[str, Any]:
    """Run the distillation; returns the report also written to `out_dir/distill.json`."""

    from robofm.atomic import atomic_write_text
    from robofm.models.checkpoint import save_checkpoint
    from robofm.policy import Policy

    check_config(cfg)
    t_start = time.perf_counter()
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    teacher_policy = Policy.from_checkpoint(cfg.teacher)
    teacher, normalizer, spaces = (
        teacher_policy.model,
        teacher_policy.normalizer,
        teacher_policy.spaces,
    )
    robot = teacher_policy.robot
    px = teacher.cfg.image_size
    student = build_student(cfg, teacher)
    if student.cfg.n_obs_steps > teacher.cfg.n_obs_steps:
        raise ConfigError(
            f"distill: student preset {cfg.student!r} keeps {student.cfg.n_obs_steps} frames; "
            f"the teacher keeps {teacher.cfg.n_obs_steps}, and the buffer keeps what it sees"
        )
    cached = _can_cache(student, cfg)

    # 1. Demonstrations, labelled by the teacher; the last val_episodes are held out.
    if cfg.dagger_rounds:
        check_sim(teacher_policy, cfg, px)
    demos = load_demonstrations(
        cfg.data, normalizer, teacher.cameras, px, cfg.max_episodes, teacher_policy.state_dim
    )
    n_val = min(cfg.val_episodes, len(demos) - 1)
    buf = _empty_buffer(
        teacher.cameras, px, teacher_policy.state_dim, teacher.cfg.chunk_len, teacher.action_dim
    )
    val = _empty_buffer(
        teacher.cameras, px, teacher_policy.state_dim, teacher.cfg.chunk_len, teacher.action_dim
    )
    train_rows = _append(buf, demos[: len(demos) - n_val], origin=0)
    val_rows = _append(val, demos[len(demos) - n_val :], origin=0) if n_val else np.zeros(0, int)
    del demos
    label(teacher, buf, train_rows, robot, cfg.label_batch, cfg.seed)
    if len(val_rows):
        label(teacher, val, val_rows, robot, cfg.label_batch, cfg.seed + 1)
    if cached:
        cache_features(student, buf, train_rows, cfg.label_batch)
        if len(val_rows):
            cache_features(student, val, val_rows, cfg.label_batch)

    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    total = cfg.steps + cfg.dagger_rounds * cfg.dagger_steps
    rng = np.random.default_rng(cfg.seed)
    history: list[dict[str, Any]] = []
    held_out: list[dict[str, Any]] = []
    rounds: list[dict[str, Any]] = []
    step = 0

    def measure(tag: str) -> None:
        if len(val_rows):
            e = action_error(student, val, val_rows, normalizer, robot, cached, cfg.seed)
            held_out.append({"step": step, "when": tag, **e})

    def train_for(n: int, desc: str) -> None:
        nonlocal step
        student.train()
        if student.vision is not None and cfg.freeze_vision:
            student.vision.eval()  # frozen: keep BatchNorm statistics as pretrained
        bar = progress(total=n, desc=desc, unit="step")
        try:
            for _ in range(n):
                rows = rng.integers(0, len(buf), cfg.batch_size)
                obs = _observation(student, buf, rows, robot, cached)
                h = student.cfg.chunk_len
                target = torch.from_numpy(buf.labels[rows][:, :h])  # (B, H_s, D)
                batch = Batch(
                    obs=obs,
                    actions=target,
                    action_is_pad=torch.zeros(len(rows), h, dtype=torch.bool),
                    action_mask=torch.ones(len(rows), target.shape[2], dtype=torch.bool),
                    episode_index=torch.zeros(len(rows), dtype=torch.long),
                    dataset_index=torch.zeros(len(rows), dtype=torch.long),
                )
                for g in opt.param_groups:
                    g["lr"] = _lr(step, total, cfg)
                loss = student.compute_loss(batch).mean()
                if not torch.isfinite(loss):
                    raise RuntimeError(f"distill: loss is {loss.item()} at step {step}")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
                step += 1
                history.append({"step": step, "loss": float(loss.detach())})
                bar.update(1)
                bar.set_postfix(loss=f"{history[-1]['loss']:.4f}", refresh=False)
                if step % cfg.eval_every == 0:
                    measure("train")
        finally:
            bar.close()

    measure("init")
    train_for(cfg.steps, "distill demos")
    measure("after demos")

    # 2. DAgger: roll out, relabel, aggregate, train.
    for r in range(1, cfg.dagger_rounds + 1):
        student.eval()
        student_policy = Policy(
            student, normalizer, _student_spaces(spaces, student), seed=cfg.seed
        )
        episodes, successes = rollouts(student_policy, teacher_policy, cfg, r, px, normalizer)
        new = _append(buf, episodes, origin=r)
        label(teacher, buf, new, robot, cfg.label_batch, cfg.seed + 10 * r)
        if cached:
            cache_features(student, buf, new, cfg.label_batch)
        on_policy = action_error(student, buf, new, normalizer, robot, cached, cfg.seed)
        rounds.append(
            {
                "round": r,
                "beta": cfg.beta * 0.5 ** (r - 1),
                "episodes": len(episodes),
                "successes": int(sum(successes)),
                "new_states": len(new),
                "buffer_rows": len(buf),
                "on_policy_error_before_training": on_policy,
            }
        )
        train_for(cfg.dagger_steps, f"distill round {r}")
        rounds[-1]["on_policy_error_after_training"] = action_error(
            student, buf, new, normalizer, robot, cached, cfg.seed
        )
        measure(f"after round {r}")

    student.eval()
    student_dir = save_checkpoint(
        out / "student",
        student,
        normalizer,
        _student_spaces(spaces, student),
        build={
            "cameras": list(student.cameras),
            "state_dims": dict(student.embodiments.state_dims),
            "action_dim": student.action_dim,
            "pretrained": cfg.student_pretrained,
        },
        transforms=student.transforms,
    )
    report = {
        "config": {
            k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(cfg).items()
        },
        "teacher": {"path": str(cfg.teacher), **_model_facts(teacher)},
        "student": {"path": str(student_dir), "preset": cfg.student, **_model_facts(student)},
        "action_names": list(spaces.action.names),
        "action_units": list(spaces.action.units),
        "demo_rows": len(train_rows),
        "val_rows": len(val_rows),
        "features_cached": cached,
        "held_out": held_out,
        "rounds": rounds,
        "loss": history,
        "seconds": round(time.perf_counter() - t_start, 1),
    }
    atomic_write_text(out / "distill.json", json.dumps(report, indent=1) + "\n")
    plot_distill(report, out / "distill.png")
    return report


def _student_spaces(spaces, student):
    from dataclasses import replace

    from robofm.spaces import SpacesFile

    return SpacesFile(replace(spaces.action, chunk_len=student.cfg.chunk_len), spaces.state)


def _model_facts(model) -> dict[str, Any]:
    return {
        "params": int(sum(p.numel() for p in model.parameters())),
        "trainable": int(sum(p.numel() for p in model.parameters() if p.requires_grad)),
        "chunk_len": int(model.cfg.chunk_len),
        "vision": model.cfg.vision,
        "language": model.cfg.language,
    }


def plot_distill(report: dict[str, Any], path: Path) -> Path | None:
    """Loss per step and held-out error (normalised MAE) per measurement, as a PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    loss = report["loss"]
    if loss:
        a.plot([x["step"] for x in loss], [x["loss"] for x in loss], lw=0.6)
        a.set_yscale("log")
    for r in report["rounds"]:
        a.axvline(
            report["config"]["steps"] + (r["round"] - 1) * report["config"]["dagger_steps"],
            color="grey",
            ls=":",
        )
    a.set(xlabel="step", ylabel="training loss", title="student loss (dotted: DAgger rounds)")
    ho = report["held_out"]
    if ho:
        b.plot([x["step"] for x in ho], [x["mae_norm"] for x in ho], "o-", label="held-out demos")
    pts = [(r["round"], r["on_policy_error_before_training"]["mae_norm"]) for r in report["rounds"]]
    if pts:
        steps = [
            report["config"]["steps"] + (k - 1) * report["config"]["dagger_steps"] for k, _ in pts
        ]
        b.plot(steps, [e for _, e in pts], "s--", label="new rollout states (before training)")
    b.set(xlabel="step", ylabel="MAE vs teacher (normalised)", title="student error vs teacher")
    b.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
