"""Per-frame feature cache for a frozen vision encoder.

While the vision encoder is frozen and the training images are not randomly augmented, the
encoder's output for a frame never changes. Training then computes it once per frame, keeps
it in memory as float16, and trains the rest of the model on the cached features (the way HPT
trains on precomputed features); data loading also skips video decoding. When the freeze
schedule unfreezes the encoder, the cache is dropped and frames flow through it again.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from robofm.config import TrainConfig
from robofm.data.mixture import Mixture, resize_frames
from robofm.data.transforms import build_image_transform
from robofm.data.windows import WindowDataset
from robofm.progress import progress

MAX_CACHE_BYTES = 8 * 2**30  # beyond this the cache would crowd out the rest of training
FRAMES_PER_CALL = 64  # frames per encoder forward while filling the cache


def cache_blocker(model: Any, cfg: TrainConfig) -> str:
    """Why the features cannot be cached for this run; "" when they can."""
    if not cfg.data.cache_features:
        return "data.cache_features is off"
    if cfg.data.image_aug:
        return "random image augmentation gives every view of a frame new features"
    vision = getattr(model, "vision", None)
    if vision is None:
        return "the model's vision tower is inside its VLM"
    if vision.cond_dim:
        return "the vision encoder is conditioned on the instruction (FiLM)"
    return ""


def cache_bytes(mixtures: list[Mixture], model: Any) -> int:
    """float16 bytes the cache of every frame of `mixtures` would take."""
    per_frame = model.vision.num_tokens * model.vision.width * 2
    return sum(
        int(ds.episode_lengths.sum()) * len(ds.cameras) * per_frame
        for mix in mixtures
        for ds in mix.datasets
    )


@torch.no_grad()
def compute_features(
    model: Any, ds: WindowDataset, image_size: int, desc: str = "cache features"
) -> dict[str, torch.Tensor]:
    """Encoder outputs of every frame of `ds`: camera -> float16 (rows, N, C), where row
    `ds.episode_starts[k] + t` is step t of the k-th selected episode. Frames go through the
    same resize and deterministic (no crop) transform as un-augmented training batches."""
    vision = model.vision
    was_training = vision.training
    vision.eval()
    device = next(model.parameters()).device
    transform = build_image_transform(image_size, train=False, scale=(1.0, 1.0))
    rows = int(ds.episode_lengths.sum())
    out = {
        cam: torch.empty(rows, vision.num_tokens, vision.width, dtype=torch.float16)
        for cam in ds.cameras
    }
    bar = progress(total=rows * len(ds.cameras), desc=desc, unit="frame")
    try:
        for cam in ds.cameras:
            pending: list[torch.Tensor] = []
            filled = 0
            for k in range(ds.num_episodes):
                steps = np.arange(int(ds.episode_lengths[k]))
                frames = np.asarray(ds.source.frames(int(ds.source_positions[k]), cam, steps))
                frames = resize_frames(frames, image_size, image_size)  # (T, Hpx, Wpx, 3)
                pending.append(transform(frames))  # (T, 3, Hpx, Wpx) float in [0, 1]
                if sum(len(p) for p in pending) >= FRAMES_PER_CALL or k == ds.num_episodes - 1:
                    x = torch.cat(pending).to(device)
                    f = vision(x).to("cpu", torch.float16)  # (n, N, C)
                    out[cam][filled : filled + len(f)] = f
                    filled += len(f)
                    bar.update(len(f))
                    pending = []
    finally:
        bar.close()
        vision.train(was_training)
    return out


def attach(mixtures: list[Mixture], model: Any, image_size: int) -> None:
    """Fill and attach the cache to every dataset of `mixtures` (train, then validation)."""
    for mix in mixtures:
        for ds in mix.datasets:
            if ds.features is None:
                ds.features = compute_features(model, ds, image_size, f"cache {ds.name}")


def detach(mixtures: list[Mixture]) -> None:
    """Drop the cache: samples carry decoded frames again."""
    for mix in mixtures:
        for ds in mix.datasets:
            ds.features = None
