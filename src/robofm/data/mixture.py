"""Weighted multi-dataset, multi-embodiment training data with a resumable, sharded sampler.

`Mixture` concatenates several `WindowDataset`s (one per dataset, possibly different robots)
and makes their samples stackable:

- each dataset's own normaliser runs first, on its unpadded arrays (stats are per dataset:
  a 7-DoF arm and a 4-D gripper delta never share a mean);
- state and actions are zero-padded to the largest S and D in the mixture
  (`robofm.spaces.pad_last_dim`), with `state_mask` (S_max,) and `action_mask` (D_max,) True
  on the real dimensions, so losses ignore the padding (Octo, HPT, pi0 do the same);
- cameras are the union over datasets; a dataset without a camera gets zero frames and
  `image_mask[cam] = False`.

`MixtureSampler` draws global indices into a `Mixture`: a dataset by weight, then a sample
uniformly within it. The stream is a pure function of (seed, epoch, position), so it is the
same on every rank and in every run; rank r of W takes positions r, r + W, r + 2W, ..., and
`state_dict()` records (epoch, samples consumed) so a restored sampler yields exactly the
continuation.

Shape letters: T_obs history, H chunk length, D_max / S_max padded action / state dims,
Hpx x Wpx x 3 uint8 frames, B batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from robofm.data.episode import DatasetError
from robofm.data.windows import ImageTransform, WindowDataset, locate_segment
from robofm.errors import SpaceError
from robofm.spaces import ActionSpace, pad_last_dim
from robofm.types import Batch, Observation

# A per-dataset normaliser: takes a sample dict with unpadded `state` (T_obs, S) and
# `actions` (H, D) in robot units and returns the dict with them normalised.
Normalizer = Callable[[dict[str, Any]], dict[str, Any]]

SAMPLER_STATE_VERSION = 1  # bump when MixtureSampler.state_dict() changes layout
_BLOCK = 8192  # stream positions drawn per generator; a block is seeded by (seed, epoch, block)


class Mixture(torch.utils.data.Dataset):
    """The concatenation of several `WindowDataset`s with padded dims and camera masks.

    Global index i runs over dataset 0's samples, then dataset 1's, and so on
    (`offsets[k] + local index`). A sample is the dataset's sample (see `WindowDataset`)
    after its normaliser, padded, plus:

    - `action_mask`: bool (D_max,), `state_mask`: bool (S_max,);
    - `image_mask`: {cam: bool} for every camera in `cameras` (the union);
    - `dataset_index`: int k; `embodiment`: str, `action_space.robot` or the dataset name.

    `images` holds every camera of the union: uint8 (T_obs, Hpx, Wpx, 3), resized to
    `image_size` when given, zeros where the dataset lacks the camera, then passed through
    `image_transform` when given.
    """

    def __init__(
        self,
        datasets: Sequence[WindowDataset],
        *,
        names: Sequence[str] | None = None,
        action_spaces: Sequence[ActionSpace | None] | None = None,
        normalizers: Mapping[str, Normalizer | None] | Sequence[Normalizer | None] | None = None,
        image_size: tuple[int, int] | None = None,
        image_transform: ImageTransform | None = None,
    ) -> None:
        """
        Args:
            datasets: the member datasets; all must share T_obs and H.
            names: one unique name per dataset; defaults to each source's name.
            action_spaces: one per dataset (None entries allowed); defaults to each source's
                `action_space`. A space's dim must equal its dataset's D.
            normalizers: per-dataset normaliser, as a dict name -> callable or a list aligned
                with `datasets`; missing or None means the dataset is used unnormalised.
            image_size: (Hpx, Wpx) every camera is resized to (bilinear, antialiased); needed
                when one camera name has different sizes in different datasets.
            image_transform: applied to each camera's uint8 (T_obs, Hpx, Wpx, 3) after
                resizing and filling, for every dataset alike.
        """
        if not datasets:
            raise DatasetError("Mixture needs at least one dataset")
        self.datasets = list(datasets)
        k = len(self.datasets)
        self.names: list[str] = [d.name for d in datasets] if names is None else list(names)
        if len(self.names) != k:
            raise ValueError(f"got {len(self.names)} names for {k} datasets")
        dup = sorted({n for n in self.names if self.names.count(n) > 1})
        if dup:
            raise DatasetError(f"dataset names {dup} repeat; pass unique `names=`")
        for what in ("n_obs_steps", "chunk_len"):
            values = {n: getattr(d, what) for n, d in zip(self.names, datasets, strict=True)}
            if len(set(values.values())) > 1:
                raise DatasetError(f"datasets disagree on {what}: {values}")
        self.n_obs_steps = self.datasets[0].n_obs_steps  # T_obs
        self.chunk_len = self.datasets[0].chunk_len  # H

        spaces = [d.action_space for d in datasets] if action_spaces is None else action_spaces
        self.action_spaces: list[ActionSpace | None] = list(spaces)
        if len(self.action_spaces) != k:
            raise ValueError(f"got {len(self.action_spaces)} action spaces for {k} datasets")
        for name, d, space in zip(self.names, datasets, self.action_spaces, strict=True):
            if space is not None and space.dim != d.action_dim:
                raise SpaceError(
                    f"dataset {name!r}: action space {space.robot!r} has {space.dim} dims "
                    f"but the data has {d.action_dim}"
                )
        self.embodiments = [
            s.robot if s is not None else n
            for n, s in zip(self.names, self.action_spaces, strict=True)
        ]
        self.normalizers: dict[str, Normalizer | None] = self._normalizer_dict(normalizers)

        self.action_dim = max(d.action_dim for d in datasets)  # D_max
        self.state_dim = max(d.state_dim for d in datasets)  # S_max
        self.dataset_sizes = np.asarray([len(d) for d in datasets], dtype=np.int64)  # (K,)
        self.offsets = np.concatenate([[0], np.cumsum(self.dataset_sizes)[:-1]])  # (K,)
        self._ends = np.cumsum(self.dataset_sizes)  # (K,)

        self.image_size = None if image_size is None else (int(image_size[0]), int(image_size[1]))
        self.image_transform = image_transform
        self.cameras: list[str] = []  # union of camera names, in order of first appearance
        for d in datasets:
            self.cameras += [c for c in d.cameras if c not in self.cameras]
        self.image_sizes = self._camera_sizes()  # cam -> (Hpx, Wpx) of emitted frames

    def _normalizer_dict(self, normalizers: Any) -> dict[str, Normalizer | None]:
        if normalizers is None:
            return dict.fromkeys(self.names)
        if isinstance(normalizers, Mapping):
            unknown = sorted(set(normalizers) - set(self.names))
            if unknown:
                raise DatasetError(
                    f"normalizers for unknown dataset(s) {unknown}; datasets are {self.names}"
                )
            return {n: normalizers.get(n) for n in self.names}
        if len(normalizers) != len(self.names):
            raise ValueError(f"got {len(normalizers)} normalizers for {len(self.names)} datasets")
        return dict(zip(self.names, normalizers, strict=True))

    def _camera_sizes(self) -> dict[str, tuple[int, int]]:
        """Check that frames will stack, and return each camera's emitted (Hpx, Wpx)."""
        needs_raw = self.image_size is not None or any(
            set(d.cameras) != set(self.cameras) for d in self.datasets
        )
        if needs_raw:
            pairs = zip(self.names, self.datasets, strict=True)
            transformed = [n for n, d in pairs if d.image_transform is not None]
            if transformed:
                raise DatasetError(
                    f"datasets {transformed} have their own image_transform, but this mixture "
                    "resizes or fills in missing cameras and needs raw uint8 frames; pass the "
                    "transform to Mixture(image_transform=...) instead"
                )
        sizes: dict[str, tuple[int, int]] = {}
        for cam in self.cameras:
            have = {
                n: d.image_sizes[cam]
                for n, d in zip(self.names, self.datasets, strict=True)
                if cam in d.cameras
            }
            if self.image_size is not None:
                sizes[cam] = self.image_size
            elif len(set(have.values())) > 1:
                raise DatasetError(
                    f"camera {cam!r} has different sizes (Hpx, Wpx) across datasets: {have}; "
                    "pass image_size=(Hpx, Wpx) to resize them to one size"
                )
            else:
                sizes[cam] = next(iter(have.values()))
        return sizes

    def __len__(self) -> int:
        return int(self._ends[-1])

    def locate(self, idx: int) -> tuple[int, int]:
        """(k, j): dataset k and its local sample index j for global index `idx`."""
        return locate_segment(self._ends, idx)

    def __getitem__(self, idx: int) -> dict[str, Any]:
        k, j = self.locate(int(idx))
        dataset = self.datasets[k]
        sample = dataset[j]
        normalizer = self.normalizers[self.names[k]]
        if normalizer is not None:
            sample = normalizer(sample)
        sample["state"] = pad_last_dim(sample["state"], self.state_dim)  # (T_obs, S_max)
        sample["actions"] = pad_last_dim(sample["actions"], self.action_dim)  # (H, D_max)
        sample["state_mask"] = _prefix_mask(dataset.state_dim, self.state_dim)  # (S_max,)
        sample["action_mask"] = _prefix_mask(dataset.action_dim, self.action_dim)  # (D_max,)

        features = sample.pop("image_features", None)
        if features is not None:  # cached frozen-encoder outputs stand in for the frames
            sample["image_features"], sample["image_mask"] = self._features(features)
            sample["dataset_index"] = k
            sample["embodiment"] = self.embodiments[k]
            return sample
        images, image_mask = {}, {}
        for cam in self.cameras:
            h, w = self.image_sizes[cam]
            if cam in sample["images"]:
                frames = sample["images"][cam]
                if self.image_size is not None:
                    frames = resize_frames(frames, h, w)  # (T_obs, Hpx, Wpx, 3)
                image_mask[cam] = True
            else:
                frames = np.zeros((self.n_obs_steps, h, w, 3), dtype=np.uint8)
                image_mask[cam] = False
            if self.image_transform is not None:
                frames = self.image_transform(frames)
            images[cam] = frames
        sample["images"] = images
        sample["image_mask"] = image_mask
        sample["dataset_index"] = k
        sample["embodiment"] = self.embodiments[k]
        return sample

    def _features(self, features: dict[str, Any]) -> tuple[dict[str, Any], dict[str, bool]]:
        """Every camera of the union: the cached features, zeros where the dataset lacks it."""
        like = next(iter(features.values()))  # (T_obs, N, C)
        out = {cam: features.get(cam, torch.zeros_like(like)) for cam in self.cameras}
        return out, {cam: cam in features for cam in self.cameras}

    def __repr__(self) -> str:
        parts = ", ".join(
            f"{n}({e}, {s} samples)"
            for n, e, s in zip(self.names, self.embodiments, self.dataset_sizes, strict=True)
        )
        return f"Mixture([{parts}], D_max={self.action_dim}, S_max={self.state_dim})"


def _prefix_mask(real: int, dim: int) -> np.ndarray:
    mask = np.zeros(dim, dtype=bool)  # (dim,)
    mask[:real] = True
    return mask


def resize_frames(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize uint8 (T, h, w, 3) frames to (T, height, width, 3): bilinear, antialiased."""
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise DatasetError(
            f"resize expects uint8 (T, Hpx, Wpx, 3) frames, got {frames.dtype} {frames.shape}"
        )
    if frames.shape[1:3] == (height, width):
        return frames
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()  # (T, 3, h, w)
    x = torch.nn.functional.interpolate(
        x, size=(height, width), mode="bilinear", antialias=True, align_corners=False
    )  # (T, 3, height, width)
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def to_batch(collated: dict[str, Any]) -> Batch:
    """Turn a `collate_windows` dict of `Mixture` samples into the model-side `Batch`.

    uint8 images (B, T_obs, Hpx, Wpx, 3) become float32 (B, T_obs, 3, Hpx, Wpx) in [0, 1];
    float images are taken to be transformed already into (B, T_obs, 3, Hpx, Wpx). Samples
    from a bare `WindowDataset` (no masks) get all-True masks and dataset index 0.
    """
    actions = collated["actions"].float()  # (B, H, D)
    state = collated["state"].float()  # (B, T_obs, S)
    b = actions.shape[0]
    images = {}
    for cam, x in collated.get("images", {}).items():
        if x.dtype == torch.uint8:
            x = x.permute(0, 1, 4, 2, 3).float() / 255.0  # (B, T_obs, 3, Hpx, Wpx)
        images[cam] = x
    features = {cam: x.float() for cam, x in collated.get("image_features", {}).items()}
    default_mask = {cam: torch.ones(b, dtype=torch.bool) for cam in [*images, *features]}
    obs = Observation(
        images=images,
        image_mask=collated.get("image_mask", default_mask),  # cam -> (B,)
        state=state,
        state_mask=collated.get("state_mask", torch.ones(b, state.shape[-1], dtype=torch.bool)),
        prompt=list(collated["task"]),
        embodiment=list(collated.get("embodiment", [""] * b)),
        image_features=features,  # cam -> (B, T_obs, N, C), cached frozen-encoder outputs
    )
    return Batch(
        obs=obs,
        actions=actions,
        action_is_pad=collated["action_is_pad"],  # (B, H)
        action_mask=collated.get(
            "action_mask", torch.ones(b, actions.shape[-1], dtype=torch.bool)
        ),  # (B, D)
        episode_index=collated["episode_index"],  # (B,)
        dataset_index=collated.get("dataset_index", torch.zeros(b, dtype=torch.int64)),  # (B,)
    )


# ---------------------------------------------------------------------------------------------
# Sampling.


class MixtureSampler(torch.utils.data.Sampler[int]):
    """Weighted, seeded, rank-sharded, resumable sampler of global `Mixture` indices.

    The global stream of epoch e is fixed by (seed, e): position p draws a dataset k with
    probability `weights[k]`, then a local index uniformly in [0, size_k), and yields
    `offsets[k] + local`. Positions are drawn in blocks of 8192 from a PCG64 generator
    seeded by (seed, epoch, block), so the stream does not depend on global RNG state and
    any position is reached without replaying the ones before it.

    Rank r of `world_size` W yields positions r, r + W, r + 2W, ...: ranks are disjoint and
    together give the single-rank stream. With `num_samples` N an epoch is N // W samples per
    rank (the last N mod W global positions are dropped so ranks stay in step); after an
    epoch the next `iter()` starts epoch e + 1. With `num_samples=None` the stream is endless.

    The sampler is a cursor: `iter()` continues from (epoch, consumed), which advances as
    items are taken. `state_dict()` records it; `load_state_dict()` restores it so the next
    `iter()` yields exactly what the original would have yielded next.
    """

    def __init__(
        self,
        sizes: Mixture | Sequence[int],
        weights: Sequence[float] | Mapping[str, float] | None = None,
        *,
        num_samples: int | None = None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        """
        Args:
            sizes: the `Mixture` to sample from, or its per-dataset sample counts.
            weights: relative dataset weights (>= 0), a list aligned with the datasets or a
                dict over every dataset name (needs a Mixture); default: proportional to size.
            num_samples: global samples per epoch over all ranks; None for an endless stream.
            seed: the stream's seed.
            rank, world_size: this process's rank and the number of ranks.
        """
        if isinstance(sizes, Mixture):
            names: list[str] | None = list(sizes.names)
            sizes_arr = np.asarray(sizes.dataset_sizes, dtype=np.int64)
        else:
            names = None
            sizes_arr = np.asarray(list(sizes), dtype=np.int64)
        if sizes_arr.ndim != 1 or len(sizes_arr) == 0 or (sizes_arr < 0).any():
            raise ValueError(f"sizes must be non-negative counts, got {sizes_arr.tolist()}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        self.sizes = sizes_arr  # (K,) samples per dataset
        self.offsets = np.concatenate([[0], np.cumsum(sizes_arr)[:-1]]).astype(np.int64)  # (K,)
        self.weights = _normalised_weights(weights, sizes_arr, names)  # (K,) sums to 1
        cum = np.cumsum(self.weights)
        self._cum_weights = cum / cum[-1]  # (K,) ends at exactly 1.0, so u < 1 never overflows
        self.num_samples = None if num_samples is None else int(num_samples)
        if self.num_samples is not None and self.num_samples < world_size:
            raise ValueError(
                f"num_samples={num_samples} gives no samples to each of {world_size} ranks"
            )
        self.seed = int(seed)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.epoch = 0
        self.consumed = 0  # samples this rank has yielded in the current epoch

    # -----------------------------------------------------------------------------------------
    # The global stream.

    def _block(self, epoch: int, block: int) -> np.ndarray:
        """(8192,) int64 global indices at stream positions [block * 8192, (block+1) * 8192)."""
        seq = np.random.SeedSequence([self.seed, epoch, block])
        rng = np.random.Generator(np.random.PCG64(seq))
        u = rng.random(_BLOCK)  # (BLOCK,)
        k = np.searchsorted(self._cum_weights, u, side="right")  # (BLOCK,) dataset per position
        local = rng.integers(0, np.maximum(self.sizes[k], 1))  # (BLOCK,) uniform in dataset
        return self.offsets[k] + local

    def global_stream(self, epoch: int, start: int, count: int) -> np.ndarray:
        """(count,) global indices at stream positions [start, start + count) of `epoch`,
        before sharding (what a single-rank sampler yields)."""
        out = []
        pos, end = start, start + count
        while pos < end:
            b, off = divmod(pos, _BLOCK)
            take = self._block(epoch, b)[off : off + (end - pos)]
            out.append(take)
            pos += len(take)
        return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)

    # -----------------------------------------------------------------------------------------
    # Iteration.

    @property
    def samples_per_rank(self) -> int | None:
        """Samples this rank yields per epoch; None for an endless stream."""
        return None if self.num_samples is None else self.num_samples // self.world_size

    def __len__(self) -> int:
        n = self.samples_per_rank
        if n is None:
            raise TypeError("an endless MixtureSampler (num_samples=None) has no length")
        return n

    def set_epoch(self, epoch: int) -> None:
        """Start epoch `epoch` from its beginning (as `DistributedSampler.set_epoch`)."""
        self.epoch = int(epoch)
        self.consumed = 0

    def __iter__(self) -> Iterator[int]:
        n = self.samples_per_rank
        if n is not None and self.consumed >= n:  # a finished epoch: move to the next
            self.set_epoch(self.epoch + 1)
        epoch, w = self.epoch, self.world_size
        j = self.consumed
        while n is None or j < n:
            b, off = divmod(self.rank + w * j, _BLOCK)
            take = self._block(epoch, b)[off::w]  # this rank's positions in block b
            if n is not None:
                take = take[: n - j]
            for idx in take.tolist():
                j += 1
                self.consumed = j
                yield idx
        self.set_epoch(epoch + 1)

    # -----------------------------------------------------------------------------------------
    # Resumption.

    def state_dict(self, consumed: int | None = None) -> dict[str, Any]:
        """The cursor plus the settings it is only valid for.

        `consumed` overrides the number of samples taken in the current epoch: a DataLoader
        pulls indices ahead of training (prefetch), so a training loop that wants to resume at
        the next sample it has not trained on passes the count it actually used.
        """
        return {
            "version": SAMPLER_STATE_VERSION,
            "epoch": self.epoch,
            "consumed": self.consumed if consumed is None else int(consumed),
            "seed": self.seed,
            "world_size": self.world_size,
            "num_samples": self.num_samples,
            "weights": self.weights.tolist(),
            "sizes": self.sizes.tolist(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the cursor; raise `ValueError` if the stream settings differ (the resumed
        stream would not be the continuation)."""
        if state.get("version") != SAMPLER_STATE_VERSION:
            raise ValueError(
                f"sampler state version {state.get('version')!r}, expected {SAMPLER_STATE_VERSION}"
            )
        mine = self.state_dict()
        diffs = []
        for key in ("seed", "world_size", "num_samples", "sizes"):
            if state.get(key) != mine[key]:
                diffs.append(f"{key}: saved {state.get(key)!r}, now {mine[key]!r}")
        if not np.allclose(state.get("weights", []), self.weights, rtol=1e-9, atol=1e-12):
            diffs.append(f"weights: saved {state.get('weights')!r}, now {mine['weights']!r}")
        if diffs:
            raise ValueError("sampler state does not match this sampler:\n  " + "\n  ".join(diffs))
        self.epoch = int(state["epoch"])
        self.consumed = int(state["consumed"])


def _normalised_weights(
    weights: Sequence[float] | Mapping[str, float] | None,
    sizes: np.ndarray,
    names: list[str] | None,
) -> np.ndarray:
    """(K,) float64 probabilities from relative weights (default: proportional to size)."""
    k = len(sizes)
    if weights is None:
        w = sizes.astype(np.float64)
    elif isinstance(weights, Mapping):
        if names is None:
            raise ValueError("weights given by name need a Mixture (which knows the names)")
        unknown = sorted(set(weights) - set(names))
        missing = [n for n in names if n not in weights]
        if unknown or missing:
            raise ValueError(
                f"weights must name every dataset: unknown {unknown}, missing {missing}"
            )
        w = np.asarray([float(weights[n]) for n in names], dtype=np.float64)
    else:
        w = np.asarray(list(weights), dtype=np.float64)
        if w.shape != (k,):
            raise ValueError(f"got {w.size} weights for {k} datasets")
    if not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"weights must be finite, >= 0 and not all 0, got {w.tolist()}")
    empty = [i for i in range(k) if w[i] > 0 and sizes[i] == 0]
    if empty:
        raise ValueError(f"dataset(s) {empty} have positive weight but no samples")
    return w / w.sum()
