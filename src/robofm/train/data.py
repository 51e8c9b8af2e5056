"""Training data: datasets -> windows -> mixture -> seeded, rank-sharded batches.

The first dataset path is the *target* robot: its normaliser and ActionSpace go into the
checkpoint the policy is served from. Every dataset keeps its own normaliser inside the
mixture (per-embodiment stats). The last `val_episodes` episodes of each dataset are held
out for the open-loop validation pass.

Image augmentation runs in the training process on each batch, with a generator seeded by
(seed, step, sample's position in the global batch), so it is identical whatever the number
of DataLoader workers or ranks and is reproduced exactly on resume.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from robofm.config import DataConfig, ModelConfig
from robofm.data import open_dataset
from robofm.data.episode import DatasetError, EpisodeSource
from robofm.data.mixture import Mixture, MixtureSampler, to_batch
from robofm.data.stats import Normalizer, compute_stats
from robofm.data.transforms import build_image_transform
from robofm.data.windows import WindowDataset, collate_windows
from robofm.spaces import ActionSpace, SpacesFile, StateSpace
from robofm.types import Batch

STAT_KEYS = ("action", "observation.state")
AUG_CROP_SCALE = (0.8, 1.0)  # random-resized-crop area range when DataConfig.image_aug


def crop_scale(image_aug: bool) -> tuple[float, float]:
    """The crop area range training used; the policy applies its deterministic variant."""
    return AUG_CROP_SCALE if image_aug else (1.0, 1.0)


@dataclass
class TrainData:
    """Everything the loop needs from the data side."""

    mixture: Mixture  # training windows of every dataset
    val: Mixture | None  # held-out windows (None when val_episodes = 0)
    sources: list[EpisodeSource]  # the opened datasets, target first
    normalizers: list[Normalizer]  # one per dataset
    spaces: SpacesFile  # the target robot's contract (checkpointed)
    state_dims: dict[str, int]  # robot -> real state dims
    action_dim: int  # D_max over the mixture

    @property
    def target_normalizer(self) -> Normalizer:
        return self.normalizers[0]


def _default_space(source: EpisodeSource, d: int, chunk_len: int) -> ActionSpace:
    """A generic contract for data that ships none: absolute, 'other' frame, wide bounds."""
    return ActionSpace(
        robot=source.name,
        names=tuple(f"a{i}" for i in range(d)),
        units=("1",) * d,
        mode=("absolute",) * d,
        frame="other",
        low=(-1e6,) * d,
        high=(1e6,) * d,
        control_hz=float(source.fps),
        chunk_len=chunk_len,
    )


def build_data(data: DataConfig, model: ModelConfig) -> TrainData:
    """Open `data.paths`, compute stats, split off validation episodes, build the mixture."""
    if not data.paths:
        raise DatasetError("no training data: set data.paths (dataset directories or files)")
    sources = [open_dataset(p) for p in data.paths]
    train_sets, val_sets, normalizers, spaces, robots = [], [], [], [], []
    for src in sources:
        stats = compute_stats(src, keys=STAT_KEYS, image_sample_frames=0)
        keys = [k for k in STAT_KEYS if k in stats]
        normalizers.append(Normalizer(stats, data.norm_mode, keys=keys))
        n = len(src)
        n_val = min(data.val_episodes, n - 1)
        train_eps, val_eps = list(range(n - n_val)), list(range(n - n_val, n))
        kw = {"n_obs_steps": model.n_obs_steps, "chunk_len": model.chunk_len}
        train_sets.append(WindowDataset(src, episodes=train_eps, **kw))
        if val_eps:
            val_sets.append(WindowDataset(src, episodes=val_eps, **kw))
        space = src.action_space or _default_space(src, train_sets[-1].action_dim, model.chunk_len)
        spaces.append(space)
        robots.append(space.robot)
    size = (model.image_size, model.image_size)
    mix_kw = {"action_spaces": spaces, "normalizers": normalizers, "image_size": size}
    mixture = Mixture(train_sets, **mix_kw)
    val = None
    if len(val_sets) == len(train_sets):
        val = Mixture(val_sets, **mix_kw)
    target = sources[0]
    state_space = getattr(target, "state_space", None)
    s0 = train_sets[0].state_dim
    if state_space is None and s0:
        state_space = StateSpace(spaces[0].robot, tuple(f"s{i}" for i in range(s0)), ("1",) * s0)
    state_dims = {}
    for robot, ds in zip(robots, train_sets, strict=True):
        state_dims[robot] = max(state_dims.get(robot, 0), ds.state_dim)
    return TrainData(
        mixture=mixture,
        val=val,
        sources=sources,
        normalizers=normalizers,
        # the checkpointed contract states the chunk the model returns, H = model.chunk_len
        spaces=SpacesFile(replace(spaces[0], chunk_len=model.chunk_len), state_space),
        state_dims=state_dims,
        action_dim=mixture.action_dim,
    )


def make_loader(
    mixture: Mixture, sampler: MixtureSampler, batch_size: int, num_workers: int
) -> torch.utils.data.DataLoader:
    """A DataLoader of collated windows over `sampler`'s stream (drop_last). It has its own
    generator, so creating it never draws from the global RNG (exact resume relies on it)."""
    return torch.utils.data.DataLoader(
        mixture,
        generator=torch.Generator().manual_seed(0),
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate_windows,
        drop_last=True,
        persistent_workers=False,
    )


def augment_and_batch(
    collated: dict[str, Any],
    model: ModelConfig,
    *,
    train: bool,
    seed: int,
    step: int,
    rank: int = 0,
    world_size: int = 1,
    crop_scale: tuple[float, float] = (0.8, 1.0),
) -> Batch:
    """uint8 windows -> model `Batch`: per-sample random crop + colour jitter when `train`
    (generator seeded by (seed, step, sample)), the deterministic centre crop otherwise.

    Sample i of rank `rank` is sample `rank + world_size * i` of the step's global batch (the
    `MixtureSampler` sharding), so W ranks augment exactly as one process with W times the
    batch would. `crop_scale` is the random crop's area range; its deterministic variant
    (the centre crop the policy also applies) keeps sqrt(mean area) of each side, so
    (1.0, 1.0) means no crop at all."""
    if "image_features" in collated:  # cached frozen-encoder outputs: nothing to augment
        return to_batch(collated)
    size = model.image_size
    out = {}
    for cam, frames in collated["images"].items():  # (B, T_obs, H, W, 3) uint8
        views = []
        for i in range(frames.shape[0]):
            pos = rank + world_size * i
            s = int(np.random.SeedSequence([seed, step, pos]).generate_state(1)[0])
            views.append(
                build_image_transform(size, train=train, seed=s, scale=crop_scale)(frames[i])
            )
        out[cam] = torch.stack(views)  # (B, T_obs, 3, size, size)
    return to_batch({**collated, "images": out})
