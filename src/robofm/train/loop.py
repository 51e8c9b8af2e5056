"""The training loop, in plain sight: `train_step(state, batch)` and `train(cfg)`.

One loop serves fine-tuning and pretraining (the recipes only choose configs). Per step:
the vision freeze schedule is applied, the batch is split into `grad_accum` micro-batches,
the per-sample loss is averaged and back-propagated (bf16 autocast on CUDA), gradients are
clipped, AdamW steps, the warmup + cosine schedule advances and the EMA (if any) follows.

Exact resume: a training checkpoint holds weights, optimizer, scheduler, sampler cursor,
every RNG state, the step and the config. Batches depend only on (seed, step), so a run
killed at any point and resumed from its last checkpoint reproduces the uninterrupted run's
losses bit for bit on CPU.

Under `torchrun` (WORLD_SIZE > 1) the model is wrapped in DDP (gloo on CPU, nccl on GPU) or
sharded with FSDP2 (`TrainConfig.fsdp`); each rank reads its shard of the sampler stream.
W ranks at batch B see the same samples and augmentations as one process at batch W * B and
average the gradients; the logged loss is the mean over ranks. Each rank draws its own
flow/diffusion noise, seeded by (seed, step, rank), so resuming stays exact.
"""

from __future__ import annotations

import dataclasses
import io
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robofm.atomic import atomic_write_text
from robofm.config import TrainConfig, config_to_dict
from robofm.data.mixture import MixtureSampler
from robofm.errors import RobofmError
from robofm.progress import RunLog, progress
from robofm.train.data import (
    TrainData,
    augment_and_batch,
    build_data,
    crop_scale,
    make_loader,
)
from robofm.train.distributed import (
    FullWeights,
    gather_full_state,
    init_distributed,
    shard_model,
    step_seed,
    train_device,
    world_size,
    wrap_model,
)
from robofm.train.features import MAX_CACHE_BYTES, attach, cache_blocker, cache_bytes, detach
from robofm.types import Batch

TRAIN_STATE_FILE = "train_state.pt"


class TrainingError(RobofmError, RuntimeError):
    """Training cannot go on (non-finite loss, incompatible data); the message says why."""


@dataclass
class TrainState:
    """What `train_step` reads and advances."""

    model: torch.nn.Module  # the VLA (unwrapped)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    step: int = 0  # optimizer steps taken
    ema: dict[str, torch.Tensor] | None = None  # EMA copy of the weights
    phase: str = ""  # current freeze phase, e.g. "vision frozen"
    history: list[dict[str, float]] = field(default_factory=list)  # per-step metrics
    best_val: float = math.inf  # best validation error so far
    wrapped: torch.nn.Module | None = None  # DDP/FSDP wrapper calling compute_loss


# ---------------------------------------------------------------------------------------------
# Parameter groups, freezing, schedule.


def param_groups(model: torch.nn.Module) -> dict[str, list[torch.nn.Parameter]]:
    """Explicit groups: "vision" (encoder), "language" (backbone), "policy" (the rest)."""
    groups: dict[str, list[torch.nn.Parameter]] = {"vision": [], "language": [], "policy": []}
    for name, p in model.named_parameters():
        part = name.split(".", 1)[0]
        groups[part if part in ("vision", "language") else "policy"].append(p)
    return groups


def initial_trainable(model: torch.nn.Module) -> dict[int, bool]:
    """The requires_grad each parameter had when built (frozen encoders stay frozen)."""
    return {id(p): p.requires_grad for p in model.parameters()}


def apply_phase(model: torch.nn.Module, cfg: TrainConfig, step: int, base: dict[int, bool]) -> str:
    """Set requires_grad for `step` and return the phase name.

    Vision is frozen for the first `freeze_vision_frac` of the steps, then trains (at
    lr * vision_lr_scale). `head_only` trains only the head. Parameters frozen at build time
    (MiniLM, `freeze_backbones`) stay frozen.
    """
    frozen_vision = step < int(cfg.freeze_vision_frac * cfg.steps)
    for name, p in model.named_parameters():
        trainable = base[id(p)]
        if cfg.head_only and not name.startswith("head."):
            trainable = False
        if name.startswith("vision.") and frozen_vision:
            trainable = False
        p.requires_grad_(trainable)
    vision = getattr(model, "vision", None)
    if vision is not None and model.training:  # a frozen encoder is a fixed function
        vision.train(not (frozen_vision or cfg.head_only))
    if cfg.head_only:
        return "head only"
    return "vision frozen" if frozen_vision else "vision trainable"


def trainable_counts(model: torch.nn.Module) -> dict[str, int]:
    """Trainable parameter count per group (for the run log)."""
    return {
        g: sum(p.numel() for p in ps if p.requires_grad) for g, ps in param_groups(model).items()
    }


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW over every parameter (frozen ones get no gradient and are skipped), with the
    vision group at lr * vision_lr_scale and no weight decay on biases and norms."""
    o = cfg.optim
    groups = []
    for name, params in param_groups(model).items():
        lr = o.lr * (o.vision_lr_scale if name == "vision" else 1.0)
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]
        groups.append({"params": decay, "lr": lr, "weight_decay": o.weight_decay, "name": name})
        groups.append({"params": no_decay, "lr": lr, "weight_decay": 0.0, "name": name})
    return torch.optim.AdamW([g for g in groups if g["params"]], betas=o.betas)


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to 1, then cosine down to `min_lr_ratio` at `steps`."""
    o = cfg.optim
    if step < o.warmup_steps:
        return (step + 1) / max(1, o.warmup_steps)
    progress_frac = (step - o.warmup_steps) / max(1, cfg.steps - o.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress_frac)))
    return o.min_lr_ratio + (1 - o.min_lr_ratio) * cosine


# ---------------------------------------------------------------------------------------------
# One step.


def _micro_batches(batch: Batch, n: int) -> list[Batch]:
    if n <= 1:
        return [batch]
    b = batch.batch_size
    if b % n:
        raise TrainingError(f"batch size {b} is not divisible by grad_accum {n}")
    out = []
    for k in range(n):
        sl = slice(k * b // n, (k + 1) * b // n)
        o = batch.obs
        obs = dataclasses.replace(
            o,
            images={c: v[sl] for c, v in o.images.items()},
            image_mask={c: v[sl] for c, v in o.image_mask.items()},
            image_features={c: v[sl] for c, v in o.image_features.items()},
            state=o.state[sl],
            state_mask=o.state_mask[sl],
            prompt=o.prompt[sl],
            embodiment=o.embodiment[sl],
        )
        out.append(
            Batch(
                obs,
                batch.actions[sl],
                batch.action_is_pad[sl],
                batch.action_mask[sl],
                batch.episode_index[sl],
                batch.dataset_index[sl],
            )
        )
    return out


def train_step(state: TrainState, batch: Batch, cfg: TrainConfig) -> tuple[TrainState, dict]:
    """One optimizer step on `batch`; returns the state and this step's metrics.

    Raises `TrainingError` naming the batch's episodes when the loss is not finite (before
    any weight changes, so the last checkpoint stays the last good state).
    """
    model = state.model
    forward = state.wrapped or model
    model.train()
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=batch.actions.is_cuda)
    n = max(1, cfg.optim.grad_accum)
    total = 0.0
    world = world_size()
    for micro in _micro_batches(batch, n):
        with autocast:
            per_sample = forward(micro)  # (b,) via VLA.forward = compute_loss
        loss = per_sample.float().mean()
        reported = loss.detach().clone()
        if world > 1:  # the mean over all ranks' samples (equal per-rank batches)
            torch.distributed.all_reduce(reported)
            reported /= world
        if not torch.isfinite(reported):  # every rank stops, not only the one with the NaN
            eps = sorted(
                set(zip(micro.dataset_index.tolist(), micro.episode_index.tolist(), strict=True))
            )
            where = (
                f"the batch holds (dataset, episode) {eps[:20]}"
                if not torch.isfinite(loss)
                else "another rank's batch caused it (that rank's error names its episodes)"
            )
            raise TrainingError(
                f"non-finite loss ({float(reported)}) at step {state.step}; {where}; "
                "the last checkpoint is the last good state"
            )
        (loss / n).backward()
        total += float(reported) / n
    params = [p for p in model.parameters() if p.grad is not None]
    clip = cfg.optim.grad_clip
    grad_norm = (
        float(torch.nn.utils.clip_grad_norm_(params, clip))
        if clip > 0 and params
        else float(torch.norm(torch.stack([p.grad.norm() for p in params])))
        if params
        else 0.0
    )
    state.optimizer.step()
    state.scheduler.step()
    state.optimizer.zero_grad(set_to_none=True)
    if state.ema is not None:
        with torch.no_grad():
            for k, v in model.state_dict().items():
                if v.dtype.is_floating_point:
                    state.ema[k].mul_(cfg.ema_decay).add_(v, alpha=1 - cfg.ema_decay)
    state.step += 1
    metrics = {
        "step": state.step,
        "loss": total,
        "grad_norm": grad_norm,
        "lr": next(g["lr"] for g in state.optimizer.param_groups if g["name"] == "policy"),
    }
    return state, metrics


# ---------------------------------------------------------------------------------------------
# Checkpoints.


def _rng_state() -> dict[str, Any]:
    return {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }


def _set_rng_state(s: dict[str, Any]) -> None:
    torch.set_rng_state(s["torch"])
    np.random.set_state(s["numpy"])
    random.setstate(s["python"])


def save_training_checkpoint(
    state: TrainState,
    data: TrainData,
    sampler: MixtureSampler,
    cfg: TrainConfig,
    path: Path,
    full: tuple[dict[str, torch.Tensor], dict[str, Any]] | None = None,
) -> Path:
    """Weights + normaliser + contract (a servable checkpoint) plus `train_state.pt`, atomic.
    `full`: FSDP's gathered (weights, optimizer state), see `gather_full_state`."""
    from robofm.models.checkpoint import save_checkpoint

    buf = io.BytesIO()
    torch.save(
        {
            "step": state.step,
            "optimizer": full[1] if full else state.optimizer.state_dict(),
            "scheduler": state.scheduler.state_dict(),
            "sampler": sampler.state_dict(consumed=state.step * cfg.data.batch_size),
            "rng": _rng_state(),
            "ema": state.ema,
            "best_val": state.best_val,
            "history": state.history,
            "config": config_to_dict(cfg),
        },
        buf,
    )
    build = {
        "cameras": tuple(state.model.cameras),
        "state_dims": dict(state.model.embodiments.state_dims),
        "action_dim": state.model.action_dim,
        "pretrained": state.model.pretrained,
    }
    return save_checkpoint(
        path,
        FullWeights(state.model, full[0]) if full else state.model,
        data.target_normalizer,
        data.spaces,
        build=build,
        transforms={"image_crop_scale": list(crop_scale(cfg.data.image_aug))},
        extra_files={TRAIN_STATE_FILE: buf.getvalue(), **_ema_file(state)},
    )


def _ema_file(state: TrainState) -> dict[str, bytes]:
    """`ema.safetensors`: the EMA weights, same keys as model.safetensors (serve them by
    copying over model.safetensors, or load with `load_ema`)."""
    if state.ema is None:
        return {}
    from safetensors.torch import save

    return {"ema.safetensors": save({k: v.contiguous() for k, v in state.ema.items()})}


class Trackers:
    """Optional metric sinks besides log.jsonl: "tensorboard" (torch.utils.tensorboard) and
    "wandb", each only if installed; asking for a missing one is a clear error."""

    def __init__(self, names: tuple[str, ...], out: Path, config: dict[str, Any]):
        self.tb = self.wandb = None
        for name in names:
            if name == "tensorboard":
                try:
                    from torch.utils.tensorboard import SummaryWriter
                except ImportError as e:
                    raise TrainingError(
                        "tracker 'tensorboard' needs `pip install tensorboard`"
                    ) from e
                self.tb = SummaryWriter(str(out / "tensorboard"))
            elif name == "wandb":
                try:
                    import wandb
                except ImportError as e:
                    raise TrainingError("tracker 'wandb' needs `pip install wandb`") from e
                self.wandb = wandb.init(dir=str(out), config=config)
            else:
                raise TrainingError(f"unknown tracker {name!r}; use 'tensorboard' or 'wandb'")

    def log(self, metrics: dict[str, Any], step: int) -> None:
        scalars = {k: v for k, v in metrics.items() if isinstance(v, int | float)}
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(k, v, step)
        if self.wandb is not None:
            self.wandb.log(scalars, step=step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


def _prune(ckpt_dir: Path, keep_last: int, best: Path | None) -> None:
    steps = sorted(p for p in ckpt_dir.glob("step_*") if p.is_dir())
    for old in steps[: max(0, len(steps) - keep_last)]:
        if best is None or old.resolve() != best.resolve():
            import shutil

            shutil.rmtree(old, ignore_errors=True)


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The newest complete training checkpoint under `out_dir/checkpoints`, or None."""
    d = Path(out_dir) / "checkpoints"
    done = [p for p in sorted(d.glob("step_*")) if (p / TRAIN_STATE_FILE).exists()]
    return done[-1] if done else None


# ---------------------------------------------------------------------------------------------
# Validation.


@torch.inference_mode()
def validate(model, data: TrainData, cfg: TrainConfig) -> dict[str, Any]:
    """Open-loop action error on the held-out episodes: mean |predicted - true| per action
    dimension of the target robot, in robot units (first chunk step and whole chunk)."""
    if data.val is None:
        return {}
    model.eval()
    sampler = MixtureSampler(data.val, num_samples=None, seed=cfg.seed + 1)
    loader = make_loader(data.val, sampler, cfg.data.batch_size, 0)
    norm = data.target_normalizer
    d = data.spaces.action.dim
    errs, first = [], []
    g = torch.Generator().manual_seed(cfg.seed)
    for i, collated in enumerate(loader):
        if i >= cfg.val_batches:
            break
        batch = augment_and_batch(
            collated,
            model.cfg,
            train=False,
            seed=cfg.seed,
            step=i,
            crop_scale=crop_scale(cfg.data.image_aug),
        )
        batch = batch.to(next(model.parameters()).device)
        pred = model.sample_actions(batch.obs, generator=g)[..., :d].cpu()  # (B, H, d) normalised
        batch = batch.to("cpu")
        keep = batch.dataset_index == 0  # the target robot
        if not keep.any():
            continue
        p = norm.unnormalize(pred[keep].float(), "action")
        t = norm.unnormalize(batch.actions[keep][..., :d].float(), "action")
        valid = ~batch.action_is_pad[keep]  # (b, H)
        err = (p - t).abs()
        errs.append(err[valid])  # (n, d)
        first.append(err[:, 0])
    model.train()
    if not errs:
        return {}
    chunk = torch.cat(errs).mean(0)
    step0 = torch.cat(first).mean(0)
    names = data.spaces.action.names
    return {
        "val_mae": float(chunk.mean()),
        "val_mae_per_dim": {n: float(v) for n, v in zip(names, chunk, strict=True)},
        "val_mae_first_step": float(step0.mean()),
    }


# ---------------------------------------------------------------------------------------------
# The run.


def _use_cache(model, cfg: TrainConfig, mixtures: list, blocker: str, log) -> bool:
    """Attach the frozen-encoder feature cache while the vision encoder is frozen (and
    nothing blocks it), drop it otherwise. Returns whether batches now carry features."""
    frozen = not any(p.requires_grad for p in model.vision.parameters()) if model.vision else False
    if not frozen or blocker:
        detach(mixtures)
        return False
    need = cache_bytes(mixtures, model)
    if need > MAX_CACHE_BYTES:
        if log:
            log.log("train.cache_skipped", bytes=need, limit=MAX_CACHE_BYTES)
        return False
    attach(mixtures, model, cfg.model.image_size)
    return True


def _build_model(cfg: TrainConfig, data: TrainData):
    from robofm.models.vla import VLA

    if not cfg.init_from:
        return VLA(
            cfg.model,
            cameras=tuple(data.mixture.cameras),
            state_dims=data.state_dims,
            action_dim=data.action_dim,
            pretrained=cfg.model_pretrained,
        )
    from robofm.models.checkpoint import load_checkpoint

    model, _, spaces = load_checkpoint(cfg.init_from)
    target = data.spaces.action
    if target.robot in model.embodiments.state_dims:
        # the same robot: its contract must match, field by field, before step 1
        target.check_compatible(spaces.action, labels=("dataset", "checkpoint"))
    else:  # a new embodiment: add its adapter, the trunk is untouched
        model.embodiments.add(target.robot, data.state_dims[target.robot])
    if data.action_dim > model.action_dim:
        raise TrainingError(
            f"dataset actions have {data.action_dim} dims; checkpoint {cfg.init_from} "
            f"predicts at most {model.action_dim}"
        )
    missing = sorted(set(data.mixture.cameras) - set(model.cameras))
    if missing:
        raise TrainingError(f"dataset cameras {missing} are unknown to {cfg.init_from}")
    return model


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Run `cfg` to `cfg.steps` (resuming from `out_dir` when possible); returns the final
    metrics, the last checkpoint path and the per-step history."""
    rank, world = init_distributed()
    out = Path(cfg.out_dir)
    ckpt_dir = out / "checkpoints"
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    random.seed(cfg.seed)
    data = build_data(cfg.data, cfg.model)
    model = _build_model(cfg, data).to(train_device(cfg))
    if cfg.lora_rank > 0:
        from robofm.train.lora import apply_lora, spec_from_config

        apply_lora(model, spec_from_config(cfg))
    resumed = latest_checkpoint(out) if cfg.resume else None
    fsdp = cfg.fsdp and world > 1
    if fsdp:
        if cfg.ema_decay > 0:
            raise TrainingError("ema_decay > 0 is not supported with fsdp; use DDP for EMA")
        if resumed is not None:  # full weights go in before sharding
            _load_weights(model, resumed)
        shard_model(model)
    base = initial_trainable(model)
    optimizer = make_optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg))
    sampler = MixtureSampler(
        data.mixture,
        weights=list(cfg.data.weights) or None,
        num_samples=None,
        seed=cfg.seed,
        rank=rank,
        world_size=world,
    )
    state = TrainState(model, optimizer, scheduler)
    if cfg.ema_decay > 0:
        state.ema = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if resumed is not None:
        _restore(state, sampler, resumed, fsdp=fsdp)
    state.wrapped = wrap_model(model, cfg, world)
    loader = make_loader(data.mixture, sampler, cfg.data.batch_size, cfg.data.num_workers)
    batches = None  # the loader's iterator, (re)started when the feature cache comes or goes
    mixtures = [m for m in (data.mixture, data.val) if m is not None]
    blocker = cache_blocker(model, cfg)
    main = rank == 0
    log = RunLog(out) if main else None
    trackers = Trackers(cfg.trackers, out, config_to_dict(cfg)) if main else None
    if log:
        log.log(
            "train.start",
            config=config_to_dict(cfg),
            resumed_from=str(resumed) if resumed else None,
            world_size=world,
            datasets=[s.name for s in data.sources],
            samples=len(data.mixture),
        )
    bar = progress(total=cfg.steps, desc="train", unit="step")
    bar.disable = bar.disable or not main
    bar.update(state.step)  # a resumed run starts where it left off
    last_ckpt = resumed
    val: dict[str, Any] = {}
    t_prev = time.perf_counter()
    try:
        while state.step < cfg.steps:
            phase = apply_phase(model, cfg, state.step, base)
            if phase != state.phase or batches is None:
                state.phase = phase
                cached = _use_cache(model, cfg, mixtures, blocker, log)
                # continue the sample stream at the first sample not yet trained on
                sampler.consumed = state.step * cfg.data.batch_size  # endless stream: epoch 0
                batches = iter(loader)
                if log:
                    log.log(
                        "train.phase",
                        step=state.step,
                        phase=phase,
                        trainable=trainable_counts(model),
                        cached_features=cached,
                    )
            t0 = time.perf_counter()
            collated = next(batches)
            batch = augment_and_batch(
                collated,
                cfg.model,
                train=cfg.data.image_aug,
                seed=cfg.seed,
                step=state.step,
                rank=rank,
                world_size=world,
                crop_scale=crop_scale(cfg.data.image_aug),
            ).to(train_device(cfg))
            if world > 1:  # own flow/diffusion noise per rank, redrawn identically on resume
                torch.manual_seed(step_seed(cfg.seed, state.step, rank))
            t1 = time.perf_counter()
            state, m = train_step(state, batch, cfg)
            t2 = time.perf_counter()
            m.update(
                data_s=t1 - t0,
                compute_s=t2 - t1,
                samples_s=cfg.data.batch_size * world / max(t2 - t_prev, 1e-9),
            )
            t_prev = t2
            state.history.append({k: m[k] for k in ("step", "loss", "lr", "data_s", "compute_s")})
            bar.update(1)
            bar.set_postfix(loss=f"{m['loss']:.4f}", sps=f"{m['samples_s']:.0f}", refresh=False)
            if log and (state.step % cfg.log_every == 0 or state.step == 1):
                log.log("train.step", **m)
                trackers.log(m, state.step)
            if state.step % cfg.ckpt_every == 0 or state.step == cfg.steps:
                val = validate(model, data, cfg)
                if val and val["val_mae"] < state.best_val:
                    state.best_val = val["val_mae"]
                    best = True
                else:
                    best = False
                full = gather_full_state(state) if fsdp else None
                if main:
                    path = ckpt_dir / f"step_{state.step:07d}"
                    last_ckpt = save_training_checkpoint(state, data, sampler, cfg, path, full)
                    if best:
                        atomic_write_text(out / "best.txt", path.name + "\n")
                    best_path = (
                        out / "checkpoints" / (out / "best.txt").read_text().strip()
                        if (out / "best.txt").exists()
                        else None
                    )
                    _prune(ckpt_dir, cfg.keep_last, best_path)
                    log.log("train.checkpoint", step=state.step, path=str(path), **val)
                    trackers.log(val, state.step)
                if world > 1:
                    torch.distributed.barrier()
    finally:
        bar.close()
        if log:
            log.log("train.end", step=state.step)
            log.close()
            trackers.close()
    if main:
        plot_curves(state.history, out / "training_curves.png")
    return {
        "step": state.step,
        "checkpoint": str(last_ckpt) if last_ckpt else None,
        "history": state.history,
        "val": val,
        "spaces": data.spaces,
    }


def _load_weights(model: torch.nn.Module, path: Path) -> None:
    from safetensors.torch import load_file

    model.load_state_dict(load_file(str(path / "model.safetensors")), strict=True)


def _restore(state: TrainState, sampler: MixtureSampler, path: Path, fsdp: bool = False) -> None:
    """Everything but, under FSDP, the weights (loaded before sharding)."""
    ts = torch.load(path / TRAIN_STATE_FILE, weights_only=False)
    if fsdp:  # a full optimizer state dict, sharded into this rank's optimizer
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_optimizer_state_dict,
        )

        opts = StateDictOptions(full_state_dict=True)
        set_optimizer_state_dict(state.model, state.optimizer, ts["optimizer"], options=opts)
    else:
        _load_weights(state.model, path)
        state.optimizer.load_state_dict(ts["optimizer"])
    state.scheduler.load_state_dict(ts["scheduler"])
    sampler.load_state_dict(ts["sampler"])
    _set_rng_state(ts["rng"])
    state.step = int(ts["step"])
    state.ema = ts["ema"]
    state.best_val = float(ts["best_val"])
    state.history = list(ts["history"])


def plot_curves(history: list[dict[str, float]], path: Path) -> Path | None:
    """PNG of loss (log scale) and learning rate against step."""
    if not history:
        return None
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    steps = [h["step"] for h in history]
    fig = Figure(figsize=(9, 3.2), layout="constrained")
    ax1, ax2, ax3 = fig.subplots(1, 3)
    ax1.plot(steps, [h["loss"] for h in history], lw=0.8)
    ax1.set_yscale("log")
    ax1.set_title("training loss")
    ax1.set_xlabel("step")
    ax2.plot(steps, [h["lr"] for h in history], lw=0.8)
    ax2.set_title("learning rate")
    ax2.set_xlabel("step")
    ax3.plot(steps, [1000 * h["data_s"] for h in history], lw=0.8, label="data")
    ax3.plot(steps, [1000 * h["compute_s"] for h in history], lw=0.8, label="compute")
    ax3.set_title("time per step (ms)")
    ax3.legend()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    from robofm.atomic import atomic_write_bytes

    atomic_write_bytes(path, buf.getvalue())
    return path
