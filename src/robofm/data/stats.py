"""Streaming dataset statistics and the normalisers built from them.

- `RunningStats`: per-dimension mean/std/min/max/count and quantiles of (N, D) chunks in
  bounded memory; mergeable across shards or processes.
- `compute_stats(source)`: LeRobot-style `{"action": {"mean": (D,), ..., "q99": (D,)}, ...}`.
- `Normalizer`: "mean_std", "min_max" or "quantile", numpy or torch, masks for padded dims.
- `save_stats` / `load_stats`: versioned `robofm.stats` JSON; LeRobot's `meta/stats.json`.

Quantile sketch: per dimension, a histogram of `n_bins` bins of width 2**level on a global
lattice (bin k covers [k, k+1) * 2**level). When values fall outside the window, the level is
raised (pairs of bins merge exactly, no interpolation) until [min, max] fits, so memory is
D * n_bins counts whatever N is, and two sketches merge exactly. The level is always the
smallest that fits the range seen, so the bin width w < 2 * (max - min) / (n_bins - 2), and a
quantile (linear interpolation between order statistics, as `np.quantile`) is off by at most
one bin width: |error| < 2 * (max - min) / (n_bins - 2), about 0.1% of the range for the
default 2048 bins. The one exception: bins never get finer than float64 resolution at the
data's magnitude (2**-52 * max|x|), which only matters for ranges below ~1e-12 relative.
"""

from __future__ import annotations

import copy
import json
import sys
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from robofm.atomic import atomic_write_text
from robofm.data.episode import DatasetError, Episode, EpisodeSource
from robofm.progress import progress, to_jsonable
from robofm.spaces import stats_hash

QUANTILES = {"q01": 0.01, "q10": 0.10, "q50": 0.50, "q90": 0.90, "q99": 0.99}
STAT_KEYS = ("mean", "std", "min", "max", "count", *QUANTILES)
REQUIRED_STATS = ("mean", "std", "min", "max")  # LeRobot v2.1 files have no quantiles
STATS_FILE_FORMAT = "robofm.stats"
STATS_FILE_VERSION = 1
MODES = ("mean_std", "min_max", "quantile")
_MODE_STATS = {"mean_std": ("mean", "std"), "min_max": ("min", "max"), "quantile": ("q01", "q99")}
# LeRobot bookkeeping columns that have stats but are never model inputs.
_INDEX_FEATURES = ("timestamp", "frame_index", "episode_index", "index", "task_index")
_EXACT_BITS = 52  # float64 holds integers below 2**52 exactly: bin indices stay exact
_NO_LEVEL = -1200  # below any level `_min_level` returns (float64 bottoms out at 2**-1074)

Stats = dict[str, dict[str, np.ndarray]]


class StatsWarning(UserWarning):
    """Stats that will make training misbehave (e.g. a near-constant dimension)."""


# ---------------------------------------------------------------------------------------------
# Streaming statistics.


def _min_level(lo: np.ndarray, hi: np.ndarray, n_bins: int) -> np.ndarray:
    """(D,) smallest bin level e such that [lo, hi] spans at most n_bins bins of width 2**e."""
    span = hi - lo
    magnitude = np.maximum(np.abs(lo), np.abs(hi))
    level = np.frexp(magnitude)[1].astype(np.int64) - _EXACT_BITS  # |x| / 2**e < 2**52
    with np.errstate(divide="ignore"):
        by_span = np.ceil(np.log2(span / (n_bins - 2)))  # sufficient; one less may also fit
    by_span = np.where(span > 0, by_span - 1, -2000).astype(np.int64)
    level = np.maximum(level, by_span)
    while True:
        occupied = np.floor(np.ldexp(hi, -level)) - np.floor(np.ldexp(lo, -level)) + 1
        too_small = occupied > n_bins
        if not too_small.any():
            return level
        level = level + too_small


def _rebin(hist: np.ndarray, old: tuple[int, int], new: tuple[int, int]) -> np.ndarray:
    """Move one dimension's (n_bins,) counts from window (level, offset) to window `new`:
    bin width 2**level, local bin 0 at global bin index offset."""
    (level, offset), (new_level, new_offset) = old, new
    n_bins = hist.shape[0]
    nonzero = np.nonzero(hist)[0]
    index = offset + nonzero  # global bin indices at `level`
    shift = new_level - level
    if shift >= 62:
        index = np.where(index < 0, -1, 0)
    elif shift > 0:
        index = index >> shift  # arithmetic shift == floor division by 2**shift
    local = index - new_offset
    if local.size and (local.min() < 0 or local.max() >= n_bins):
        raise AssertionError("histogram window does not cover the data")  # a bug, not input
    out = np.zeros(n_bins, dtype=np.int64)
    np.add.at(out, local, hist[nonzero])
    return out


class RunningStats:
    """Per-dimension streaming statistics of (N, D) samples, in bounded memory.

    mean/std are exact (float64, Chan's parallel update; std is the population std, ddof=0,
    like LeRobot); min/max are exact; q01..q99 come from a histogram sketch whose size is
    D * n_bins counts, independent of N, with |error| < 2 * (max - min) / (n_bins - 2).
    """

    def __init__(self, dim: int | None = None, *, n_bins: int = 2048) -> None:
        if n_bins < 16:
            raise ValueError(f"n_bins must be at least 16, got {n_bins}")
        self.n_bins = int(n_bins)
        self.dim = dim  # D, fixed by the first update when None
        self.count = 0  # N, samples seen
        if dim is not None:
            self._allocate(int(dim))

    def _allocate(self, dim: int) -> None:
        self.dim = dim
        self._mean = np.zeros(dim)  # (D,)
        self._m2 = np.zeros(dim)  # (D,) sum of squared deviations from the mean
        self._min = np.full(dim, np.inf)  # (D,)
        self._max = np.full(dim, -np.inf)  # (D,)
        self._level = np.full(dim, _NO_LEVEL, dtype=np.int64)  # (D,) bin width is 2**level
        self._offset = np.zeros(dim, dtype=np.int64)  # (D,) global index of local bin 0
        self._hist = np.zeros((dim, self.n_bins), dtype=np.int64)  # (D, n_bins)

    @property
    def nbytes(self) -> int:
        """Memory held by the accumulators, bytes (constant in N)."""
        if self.dim is None:
            return 0
        arrays = (self._mean, self._m2, self._min, self._max, self._level, self._offset)
        return self._hist.nbytes + sum(a.nbytes for a in arrays)

    def update(self, x: Any) -> RunningStats:
        """Add samples `x` of shape (N, D) (any real dtype); returns self.

        Raises ValueError on a wrong D or non-finite values, naming the dimensions.
        """
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2:
            raise ValueError(f"samples must be (N, D), got shape {x.shape}")
        if self.dim is None:
            self._allocate(x.shape[1])
        if x.shape[1] != self.dim:
            raise ValueError(f"samples have {x.shape[1]} dimensions, expected {self.dim}")
        if x.shape[0] == 0:
            return self
        finite = np.isfinite(x).all(axis=0)
        if not finite.all():
            raise ValueError(f"non-finite values in dimension(s) {np.nonzero(~finite)[0].tolist()}")
        mean = x.mean(axis=0)
        m2 = np.square(x - mean).sum(axis=0)
        self._merge_moments(x.shape[0], mean, m2, x.min(axis=0), x.max(axis=0))
        self._fit_window()
        local = np.floor(np.ldexp(x, -self._level)).astype(np.int64) - self._offset  # (N, D)
        flat = (local + np.arange(self.dim) * self.n_bins).ravel()
        self._hist += np.bincount(flat, minlength=self.dim * self.n_bins).reshape(self._hist.shape)
        return self

    def merge(self, other: RunningStats) -> RunningStats:
        """Fold `other` (e.g. another shard's stats) into self; `other` is unchanged."""
        if other.n_bins != self.n_bins:
            raise ValueError(f"cannot merge sketches of {other.n_bins} and {self.n_bins} bins")
        if other.count == 0:
            return self
        if self.dim is None:
            self._allocate(int(other.dim))  # type: ignore[arg-type]
        if other.dim != self.dim:
            raise ValueError(f"cannot merge stats of {other.dim} and {self.dim} dimensions")
        if self.count == 0:
            self.__dict__.update(copy.deepcopy(other.__dict__))
            return self
        self._merge_moments(other.count, other._mean, other._m2, other._min, other._max)
        self._fit_window(np.maximum(self._level, other._level))
        for d in range(self.dim):
            self._hist[d] += _rebin(other._hist[d], other._window(d), self._window(d))
        return self

    def _window(self, d: int) -> tuple[int, int]:
        return int(self._level[d]), int(self._offset[d])

    def _merge_moments(
        self, n: int, mean: np.ndarray, m2: np.ndarray, lo: np.ndarray, hi: np.ndarray
    ) -> None:
        total = self.count + n
        delta = mean - self._mean
        self._mean = self._mean + delta * (n / total)
        self._m2 = self._m2 + m2 + np.square(delta) * (self.count * n / total)
        self._min = np.minimum(self._min, lo)
        self._max = np.maximum(self._max, hi)
        self.count = total

    def _fit_window(self, at_least: np.ndarray | None = None) -> None:
        """Raise levels / slide windows so [min, max] of every dimension fits in the bins."""
        level = np.maximum(self._level, _min_level(self._min, self._max, self.n_bins))
        if at_least is not None:
            level = np.maximum(level, at_least)
        first = np.floor(np.ldexp(self._min, -level)).astype(np.int64)
        last = np.floor(np.ldexp(self._max, -level)).astype(np.int64)
        outside = (first < self._offset) | (last >= self._offset + self.n_bins)
        for d in np.nonzero((level != self._level) | outside)[0]:
            slack = self.n_bins - int(last[d] - first[d] + 1)
            offset = int(first[d]) - slack // 2  # centre the data: fewer future re-bins
            self._hist[d] = _rebin(self._hist[d], self._window(d), (int(level[d]), offset))
            self._level[d] = level[d]
            self._offset[d] = offset

    def quantile(self, q: float) -> np.ndarray:
        """(D,) approximate q-quantile (np.quantile's linear method), within one bin width."""
        if self.count == 0:
            raise ValueError("no samples: cannot compute quantiles")
        position = (self.count - 1) * float(q)
        low = int(np.floor(position))
        high = min(low + 1, self.count - 1)
        frac = position - low
        return (1 - frac) * self._order_stat(low) + frac * self._order_stat(high)

    def _order_stat(self, rank: int) -> np.ndarray:
        """(D,) estimate of the rank-th smallest value (0-based), assuming values spread evenly
        inside their bin."""
        cum = np.cumsum(self._hist, axis=1)  # (D, n_bins)
        b = (cum <= rank).sum(axis=1)  # (D,) the bin holding the rank-th value
        rows = np.arange(self.dim)
        in_bin = self._hist[rows, b]
        before = cum[rows, b] - in_bin
        where = (rank - before + 0.5) / in_bin
        value = np.ldexp((self._offset + b).astype(np.float64) + where, self._level)
        return np.clip(value, self._min, self._max)

    def result(self) -> dict[str, np.ndarray]:
        """LeRobot-style stats: mean/std/min/max/q01/q10/q50/q90/q99 (D,) float64 and
        count (1,) int64."""
        if self.count == 0:
            raise ValueError("no samples: cannot compute stats")
        std = np.sqrt(np.maximum(self._m2 / self.count, 0.0))
        out = {"mean": self._mean.copy(), "std": std, "min": self._min.copy()}
        out |= {"max": self._max.copy(), "count": np.array([self.count], dtype=np.int64)}
        return out | {name: self.quantile(q) for name, q in QUANTILES.items()}


# ---------------------------------------------------------------------------------------------
# Dataset statistics.


def _feature(ep: Episode, key: str, where: str) -> np.ndarray:
    """(T, D) array of feature `key` ("action", "observation.state", or an extras field)."""
    if key == "action":
        return ep.actions
    if key == "observation.state":
        return ep.states
    if key in ep.extras:
        value = np.asarray(ep.extras[key])
        return value.reshape(value.shape[0], -1)
    raise DatasetError(
        f"{where}: no feature '{key}'; have 'action', 'observation.state' and extras "
        f"{sorted(ep.extras)}"
    )


def _sample_steps(length: int, k: int) -> np.ndarray:
    """Up to k step indices spread evenly over [0, length)."""
    if k >= length:
        return np.arange(length)
    return np.unique(np.round(np.linspace(0, length - 1, k)).astype(np.int64))


def compute_stats(
    source: EpisodeSource,
    keys: Sequence[str] = ("action", "observation.state"),
    *,
    image_sample_frames: int = 8,
    cameras: Sequence[str] | None = None,
    image_max_px: int = 150,
    n_bins: int = 2048,
) -> Stats:
    """Stream every episode of `source` into LeRobot-style stats, one pass, bounded memory.

    Args:
        keys: low-dim features. "action" is `Episode.actions`, "observation.state" is
            `Episode.states` (skipped when the source has no state, S = 0); other names are
            `Episode.extras` fields, flattened to (T, -1).
        image_sample_frames: frames per episode per camera, evenly spaced, decoded through
            `source.frames`; 0 skips images. Each camera gives "observation.images.<cam>" with
            per-channel stats of pixels in [0, 1], shaped (3, 1, 1) like LeRobot, and `count`
            the number of frames sampled (as LeRobot counts them).
        cameras: cameras to sample (default: all of `source.cameras`).
        image_max_px: frames are strided down so their longer side is about this many
            pixels before counting (LeRobot samples at ~150 px too); stats barely change.
        n_bins: quantile sketch bins per dimension (error < 2 * range / (n_bins - 2)).

    Returns `{feature: {stat: array}}`. Raises `DatasetError` naming the episode and feature
    on a dimension mismatch or non-finite values.
    """
    low: dict[str, RunningStats] = {}
    cams = list(source.cameras) if cameras is None else list(cameras)
    for cam in cams:
        if cam not in source.cameras:
            raise DatasetError(f"{source.name}: no camera '{cam}'; have {sorted(source.cameras)}")
    images = {cam: RunningStats(3, n_bins=n_bins) for cam in cams if image_sample_frames > 0}
    frames_seen = dict.fromkeys(images, 0)
    for i in progress(range(len(source)), desc=f"stats {source.name}", unit="ep"):
        ep = source.episode(i, images=False)
        where = f"{source.name}: episode {ep.index}"
        for key in keys:
            values = _feature(ep, key, where)
            if values.shape[1] == 0:
                continue
            try:
                low.setdefault(key, RunningStats(values.shape[1], n_bins=n_bins)).update(values)
            except ValueError as e:
                raise DatasetError(f"{where}: feature '{key}': {e}") from None
        steps = _sample_steps(ep.length, image_sample_frames)
        for cam, stats in images.items():
            frames = np.asarray(source.frames(i, cam, steps))  # (K, Hpx, Wpx, 3) uint8
            stride = max(1, max(frames.shape[1], frames.shape[2]) // image_max_px)
            pixels = frames[:, ::stride, ::stride].reshape(-1, 3)  # (K * h * w, 3)
            stats.update(pixels.astype(np.float64) / 255.0)
            frames_seen[cam] += len(frames)
    out: Stats = {key: stats.result() for key, stats in low.items()}
    for cam, stats in images.items():
        if stats.count == 0:
            continue
        result = {k: v.reshape(3, 1, 1) for k, v in stats.result().items() if k != "count"}
        result["count"] = np.array([frames_seen[cam]], dtype=np.int64)
        out[f"observation.images.{cam}"] = result
    return out


def pad_feature_stats(stats: Mapping[str, Any], dim: int) -> tuple[dict[str, np.ndarray], Any]:
    """Pad one feature's (D,) stats to `dim` for a cross-embodiment mixture.

    Returns (padded stats, (dim,) bool mask, True for real dimensions); pass the mask to
    `Normalizer(masks=...)` so padded dims normalise to 0 and raise no warning.
    """
    d = int(np.asarray(stats["mean"]).shape[-1])
    if d > dim:
        raise ValueError(f"cannot pad {d} dimensions down to {dim}")
    out = {
        name: np.asarray(v) if name == "count" else np.pad(np.asarray(v, np.float64), (0, dim - d))
        for name, v in stats.items()
    }
    return out, np.arange(dim) < d


# ---------------------------------------------------------------------------------------------
# Normalisation.


class Normalizer:
    """Maps features to a model's range and back, per dimension; numpy or torch, last dim D.

    Modes: "mean_std" -> (x - mean) / std; "min_max" -> [min, max] to [-1, 1];
    "quantile" -> [q01, q99] to [-1, 1] (robust to outliers, openpi's pi0.5 choice).
    With `clip`, bounded modes clip to [-1, 1] (unnormalize never clips).

    A dimension whose std (or range) is below eps * (1 + |centre|) normalises to 0 and
    unnormalises to its centre (it was constant), with a `StatsWarning` naming feature and
    dimension: dividing by ~0 amplifies noise and is a known cause of diverging training.
    Masked (padded) dimensions normalise and unnormalise to 0 and never warn.
    """

    def __init__(
        self,
        stats: Mapping[str, Mapping[str, Any]],
        mode: str = "mean_std",
        *,
        keys: Sequence[str] | None = None,
        masks: Mapping[str, Any] | None = None,
        clip: bool = False,
        eps: float = 1e-5,
    ) -> None:
        """`stats` is `{feature: {stat: array}}` (as `compute_stats` or `load_stats` give);
        `keys` picks the features (default: every 1-D feature but LeRobot's index columns);
        `masks` maps a feature to a (D,) bool mask, True for real dimensions."""
        if mode not in MODES:
            raise ValueError(f"unknown normalisation mode {mode!r}; choose one of {MODES}")
        self.mode = mode
        self.clip = bool(clip)
        self.eps = float(eps)
        if keys is None:
            keys = [
                k
                for k, v in stats.items()
                if k not in _INDEX_FEATURES and np.ndim(v.get("mean", ())) == 1
            ]
        parsed = _parse_stats({k: stats[k] for k in keys if k in stats}, "stats")
        self.stats: Stats = {}
        self.masks: dict[str, np.ndarray] = {}
        self._params: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self._torch_cache: dict[tuple[str, str, Any], tuple[Any, Any, Any]] = {}
        for key in keys:
            if key not in parsed:
                raise ValueError(f"stats have no feature '{key}'; have {sorted(stats)}")
            self._add(key, parsed[key], None if masks is None else masks.get(key))

    def _add(self, key: str, feat: dict[str, np.ndarray], mask: Any) -> None:
        for name in _MODE_STATS[self.mode]:
            if name not in feat:
                raise ValueError(f"feature '{key}': mode '{self.mode}' needs stat '{name}'")
        dim = feat["mean"].shape[-1]
        if feat["mean"].ndim != 1:
            raise ValueError(f"feature '{key}': stats shape {feat['mean'].shape} is not (D,)")
        mask = np.ones(dim, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
        if mask.shape != (dim,):
            raise ValueError(f"feature '{key}': mask has shape {mask.shape}, expected ({dim},)")
        if self.mode == "mean_std":
            center, scale, what = feat["mean"], feat["std"], "std"
        else:
            lo, hi = (feat[n] for n in _MODE_STATS[self.mode])
            center, scale = (lo + hi) / 2, (hi - lo) / 2
            what = f"range {_MODE_STATS[self.mode][1]} - {_MODE_STATS[self.mode][0]}"
        tiny = (scale < self.eps * (1 + np.abs(center))) & mask
        for i in np.nonzero(tiny)[0]:
            warnings.warn(
                f"normalisation stats for '{key}' dimension {i}: {what} is "
                f"{float(scale[i] * (1 if self.mode == 'mean_std' else 2)):.3g}, near zero; "
                f"this dimension will normalise to 0. A near-constant dimension is a known "
                f"cause of diverging training: check the data, or mask the dimension",
                StatsWarning,
                stacklevel=3,
            )
        live = mask & ~tiny
        inverse = np.where(live, 1.0 / np.where(live, scale, 1.0), 0.0)
        self.stats[key] = feat
        self.masks[key] = mask
        self._params[key] = (np.where(mask, center, 0.0), np.where(mask, scale, 0.0), inverse)

    @property
    def keys(self) -> list[str]:
        """The features this normaliser handles."""
        return list(self._params)

    @property
    def stats_sha256(self) -> str:
        """`robofm.spaces.stats_hash` of the stats, for `SpacesFile.stats_sha256`."""
        return stats_hash(self.stats)

    def _get(self, key: str, x: Any) -> tuple[Any, Any, Any, Any]:
        """(x as float, centre, scale, inverse) in x's library, dtype and device."""
        if key not in self._params:
            raise KeyError(f"no normalisation stats for '{key}'; have {self.keys}")
        dim = self._params[key][0].shape[0]
        if x.shape[-1] != dim:
            raise ValueError(
                f"'{key}' has last dimension {x.shape[-1]}, its stats have {dim} "
                f"(pad with a mask instead of reshaping)"
            )
        torch = sys.modules.get("torch")
        if torch is not None and isinstance(x, torch.Tensor):
            if not x.is_floating_point():
                x = x.to(torch.float32)
            cache_key = (key, str(x.device), x.dtype)
            if cache_key not in self._torch_cache:
                self._torch_cache[cache_key] = tuple(
                    torch.as_tensor(p, dtype=x.dtype, device=x.device) for p in self._params[key]
                )
            return (x, *self._torch_cache[cache_key])
        x = np.asarray(x)
        if x.dtype.kind != "f":
            x = x.astype(np.float32)
        return (x, *(p.astype(x.dtype) for p in self._params[key]))

    def normalize(self, x: Any, key: str = "action") -> Any:
        """(..., D) robot units -> (..., D) normalised, same library/float dtype/device."""
        x, center, _, inverse = self._get(key, x)
        y = (x - center) * inverse
        if self.clip and self.mode != "mean_std":
            y = y.clip(-1.0, 1.0)
        return y

    def unnormalize(self, y: Any, key: str = "action") -> Any:
        """(..., D) normalised -> (..., D) robot units; the inverse of `normalize`."""
        y, center, scale, _ = self._get(key, y)
        return y * scale + center

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        """Normalise a window sample in place of a copy: "actions" with the "action" stats and
        "state" with "observation.state" (when this normaliser has them and S > 0)."""
        out = dict(sample)
        if "action" in self._params and "actions" in out:
            out["actions"] = self.normalize(out["actions"], "action").astype(np.float32)
        st = out.get("state")
        if "observation.state" in self._params and st is not None and st.shape[-1] > 0:
            out["state"] = self.normalize(st, "observation.state").astype(np.float32)
        return out

    def to_dict(self) -> dict[str, Any]:
        """The versioned JSON-ready form (what `save_stats` writes for a normaliser)."""
        return {
            "format": STATS_FILE_FORMAT,
            "version": STATS_FILE_VERSION,
            "mode": self.mode,
            "clip": self.clip,
            "eps": self.eps,
            "stats": to_jsonable(self.stats),
            "masks": {k: m.tolist() for k, m in self.masks.items() if not m.all()},
        }

    @classmethod
    def from_dict(cls, body: Mapping[str, Any], where: str = "stats") -> Normalizer:
        """Rebuild from `to_dict()` output; raises `DatasetError` naming `where` and the field."""
        _check_envelope(body, where)
        mode = body.get("mode")
        if mode not in MODES:
            raise DatasetError(f"{where}: field 'mode' is {mode!r}; expected one of {MODES}")
        stats = _parse_stats(body.get("stats"), f"{where}: field 'stats'")
        masks = body.get("masks") or {}
        if not isinstance(masks, dict) or any(
            k not in stats or not isinstance(m, list) or not all(isinstance(b, bool) for b in m)
            for k, m in masks.items()
        ):
            raise DatasetError(f"{where}: field 'masks' must map stats features to bool lists")
        options = {"clip": bool(body.get("clip", False)), "eps": float(body.get("eps", 1e-5))}
        try:
            return cls(stats, mode, keys=list(stats), masks=masks, **options)
        except ValueError as e:
            raise DatasetError(f"{where}: {e}") from None


# ---------------------------------------------------------------------------------------------
# Files.


def _check_envelope(body: Any, where: str) -> None:
    if not isinstance(body, Mapping):
        raise DatasetError(f"{where}: expected a JSON object, got {type(body).__name__}")
    for field, want in (("format", STATS_FILE_FORMAT), ("version", STATS_FILE_VERSION)):
        if body.get(field) != want:
            raise DatasetError(
                f"{where}: field '{field}' is {body.get(field)!r}, expected {want!r}"
            )


def _numeric(value: Any, where: str) -> np.ndarray:
    try:
        arr = np.asarray(value)
    except ValueError:  # ragged nested lists
        raise DatasetError(f"{where}: is a ragged nested list") from None
    if arr.dtype.kind not in "iuf" or arr.size == 0:
        raise DatasetError(f"{where}: expected a non-empty array of numbers, got {value!r:.80}")
    arr = arr.astype(np.float64)
    if not np.isfinite(arr).all():
        bad = np.argwhere(~np.isfinite(arr))[0].tolist()
        raise DatasetError(f"{where}: non-finite value {arr[tuple(bad)]} at index {bad}")
    return arr


def _parse_stats(body: Any, where: str) -> Stats:
    """Validate `{feature: {stat: nested list}}`; raise `DatasetError` naming feature and stat."""
    if not isinstance(body, Mapping):
        raise DatasetError(f"{where}: expected an object of features, got {type(body).__name__}")
    out: Stats = {}
    for feature, stats in body.items():
        at = f"{where}: feature '{feature}'"
        if not isinstance(stats, Mapping):
            raise DatasetError(f"{at}: expected an object of stats, got {type(stats).__name__}")
        for name in REQUIRED_STATS:
            if name not in stats:
                raise DatasetError(f"{at}: missing stat '{name}'")
        parsed = {}
        shape = _numeric(stats["mean"], f"{at}: stat 'mean'").shape
        for name in STAT_KEYS:  # other names (LeRobot extensions) are ignored
            if name not in stats:
                continue
            arr = _numeric(stats[name], f"{at}: stat '{name}'")
            if name == "count":
                if arr.size != 1 or arr.ravel()[0] < 0 or arr.ravel()[0] != int(arr.ravel()[0]):
                    raise DatasetError(f"{at}: stat 'count' must be one non-negative integer")
                arr = arr.reshape(1).astype(np.int64)
            elif arr.shape != shape:
                raise DatasetError(
                    f"{at}: stat '{name}' has shape {arr.shape} ({arr.size} values), "
                    f"but 'mean' has shape {shape}"
                )
            parsed[name] = arr
        if (parsed["std"] < 0).any():
            raise DatasetError(f"{at}: stat 'std' is negative")
        if (parsed["min"] > parsed["max"]).any():
            raise DatasetError(f"{at}: stat 'min' exceeds 'max'")
        out[str(feature)] = parsed
    return out


def save_stats(path: str | Path, stats: Stats | Normalizer, *, layout: str = "robofm") -> None:
    """Write stats (or a normaliser with its mode) as JSON atomically.

    layout "robofm": the versioned `{"format": "robofm.stats", "version": 1, "mode": ...,
    "stats": {...}}` (mode null for plain stats); layout "lerobot": LeRobot's plain
    `meta/stats.json` (`{feature: {stat: nested list}}`).
    """
    if layout not in ("robofm", "lerobot"):
        raise ValueError(f"unknown stats layout {layout!r}; choose 'robofm' or 'lerobot'")
    if isinstance(stats, Normalizer):
        body = stats.to_dict()
    else:
        plain = to_jsonable(_parse_stats(stats, "stats"))
        body = {"format": STATS_FILE_FORMAT, "version": STATS_FILE_VERSION, "mode": None}
        body["stats"] = plain
    if layout == "lerobot":
        body = body["stats"]
    atomic_write_text(Path(path), json.dumps(body, indent=2, allow_nan=False) + "\n")


def _read_json(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise DatasetError(f"{path}: cannot read ({e.strerror or e})") from e
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DatasetError(
            f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}"
        ) from None


def _is_envelope(body: Any) -> bool:
    return isinstance(body, dict) and isinstance(body.get("format"), str)


def load_stats(path: str | Path) -> Stats:
    """Read a robofm stats file or LeRobot's `meta/stats.json` into `{feature: {stat: array}}`.

    Arrays keep their stored shapes ((D,) low-dim, (3, 1, 1) images; count (1,) int64).
    Raises `DatasetError` naming the file, feature and stat on malformed content (missing
    stat, wrong length, NaN, non-numbers).
    """
    path = Path(path)
    body = _read_json(path)
    if _is_envelope(body):
        _check_envelope(body, str(path))
        return _parse_stats(body.get("stats"), f"{path}: field 'stats'")
    return _parse_stats(body, str(path))


def load_normalizer(path: str | Path, mode: str | None = None, **kwargs: Any) -> Normalizer:
    """A `Normalizer` from a stats file: a saved normaliser comes back as saved (mode, masks,
    clip); plain stats (robofm or LeRobot layout) need `mode` (kwargs go to `Normalizer`)."""
    path = Path(path)
    body = _read_json(path)
    if _is_envelope(body) and body.get("mode") is not None and mode is None:
        return Normalizer.from_dict(body, str(path))
    if mode is None:
        raise DatasetError(f"{path}: holds no normalisation mode; pass mode= one of {MODES}")
    stats = load_stats(path)
    try:
        return Normalizer(stats, mode, **kwargs)
    except ValueError as e:
        raise DatasetError(f"{path}: {e}") from None
