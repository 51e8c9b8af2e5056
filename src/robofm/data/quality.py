"""The data-quality report behind `robofm data check PATH`.

Fine-tuning data fails in ways training curves only show late: episodes without an
instruction, one template for every episode (the model learns the template), NaNs, teleop
spikes, the robot frozen for seconds, dropped frames, one lighting condition. `check_dataset`
streams any `EpisodeSource` and returns a `QualityReport` of `Issue`s naming episodes, steps
and dimensions; `format_report` prints it, `write_report` saves JSON and PNG plots.

Two passes over the low-dim arrays, memory bounded: pass 1 validates each episode, runs the
per-episode checks, samples a few camera frames for visual statistics and keeps a uniform
random sample of action/state rows; pass 2 uses the sample's median/MAD and ranges to find
action outliers and idle stretches. Low-dim arrays are cached between passes up to
`QualityConfig.cache_lowdim_mb`, otherwise re-read. No full image sequence is ever loaded.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from robofm.data.episode import EpisodeSource
from robofm.data.language import normalize_instruction, task_key
from robofm.progress import progress, to_jsonable

CHECKS = (  # every check, in report order
    "malformed",  # episode fails to load, zero steps, shapes disagree, bad fps
    "skipped",  # the reader dropped episodes (source.skipped)
    "instructions",  # missing, empty or placeholder instruction
    "phrasing",  # too few phrasings per task / one phrasing dominates
    "non_finite",  # NaN/inf in actions, states, timestamps or numeric extras
    "action_outliers",  # robust z-score outliers per action dimension
    "action_bounds",  # actions outside the action space's [low, high]
    "idle",  # stretches where actions and states are frozen
    "timestamps",  # non-monotonic timestamps, gaps, fps mismatch
    "episode_length",  # very short or very long episodes
    "duplicates",  # episodes with identical action arrays
    "visual_diversity",  # spread of visual conditions, near-duplicate episodes
    "gripper",  # gripper values within [closed, open], gripper actually opens and closes
)
DEFAULT_BLOCKING = ("malformed", "non_finite", "instructions")
SEVERITIES = ("error", "warning", "info")
PLACEHOLDER_INSTRUCTIONS = frozenset({"none", "null", "nan", "n a", "na", "todo", "task", "tbd"})


@dataclass(frozen=True)
class QualityConfig:
    """Thresholds of `check_dataset`. Defaults suit 10-50 Hz teleoperated manipulation."""

    idle_speed_frac: float = 0.02  # idle step: every dim moves < this fraction of its range /s
    idle_min_steps: int = 30  # report idle stretches of at least this many consecutive steps
    outlier_z: float = 8.0  # robust z |x - median| / sigma(MAD) above which a value is out
    discrete_max_values: int = 3  # dims with <= this many distinct values skip outlier z-scores
    fps_tolerance: float = 0.05  # allowed relative error of the median step interval vs 1/fps
    gap_factor: float = 1.5  # a step interval longer than this many 1/fps is a gap
    min_episode_steps: int = 10  # episodes shorter than this are flagged
    short_episode_frac: float = 0.2  # ... or shorter than this fraction of the median length
    long_episode_factor: float = 4.0  # episodes longer than this many median lengths are flagged
    min_distinct_phrasings: int = 3  # a task should be phrased at least this many ways
    max_top_template_share: float = 0.5  # max share of a task's episodes using one phrasing
    phrasing_min_episodes: int = 5  # judge phrasing only for tasks with this many episodes
    frames_per_episode: int = 3  # frames sampled per episode and camera for visual stats
    thumbnail_px: int = 8  # side of the RGB thumbnail used as a visual embedding
    min_visual_diversity: float = 0.05  # mean pairwise RMS thumbnail distance (0..1) floor
    duplicate_visual_dist: float = 0.005  # RMS thumbnail distance of near-duplicate episodes
    visual_max_episodes: int = 2000  # episodes (evenly spaced) used for visual stats
    gripper_tolerance_frac: float = 0.05  # slack beyond [closed, open], fraction of the span
    gripper_reach_frac: float = 0.25  # "closes"/"opens" = within this fraction of the end
    stats_sample_rows: int = 200_000  # action/state rows sampled for median/MAD/quantiles
    cache_lowdim_mb: float = 256.0  # cache low-dim arrays between passes up to this size
    histogram_bins: int = 50  # bins of the per-dimension action histograms
    max_issues_per_check: int = 20  # issues listed one by one per check; the rest are folded
    blocking: tuple[str, ...] = DEFAULT_BLOCKING  # checks whose errors block fine-tuning
    skip: tuple[str, ...] = ()  # checks not to run (e.g. "visual_diversity" for speed)
    seed: int = 0  # RNG seed of the row sample


@dataclass(frozen=True)
class Issue:
    """One finding. `episodes` are dataset episode indices (empty for dataset-wide ones)."""

    severity: str  # "error" | "warning" | "info"
    check: str  # one of CHECKS
    message: str  # names episode, field, step and dimension where they apply
    episodes: list[int] = field(default_factory=list)


@dataclass
class QualityReport:
    """Result of `check_dataset`: issues (worst first within a check) and summary numbers."""

    issues: list[Issue]
    summary: dict[str, Any]  # counts, lengths, language, actions, visual, per-check status
    data: dict[str, Any] = field(default_factory=dict)  # plot inputs (histograms, lengths, ...)
    blocking_checks: tuple[str, ...] = DEFAULT_BLOCKING

    @property
    def blocking(self) -> bool:
        """True when an error-severity issue belongs to a blocking check."""
        return any(i.severity == "error" and i.check in self.blocking_checks for i in self.issues)

    def by_check(self, check: str) -> list[Issue]:
        """Issues of one check."""
        return [i for i in self.issues if i.check == check]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (non-finite floats become strings)."""
        issues = [asdict(i) for i in self.issues]
        out = dict(blocking=self.blocking, blocking_checks=self.blocking_checks, issues=issues)
        return to_jsonable({**out, "summary": self.summary, "data": self.data})

    def to_json(self, indent: int | None = 2) -> str:
        """Strict JSON text of `to_dict`."""
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> QualityReport:
        """Inverse of `to_dict`."""
        issues = [Issue(**i) for i in d["issues"]]
        return cls(issues, d["summary"], d.get("data", {}), tuple(d["blocking_checks"]))


# ---------------------------------------------------------------------------------------------
# Pass 1 and pass 2 state.


class _Scan:
    """Accumulates findings and bounded statistics while episodes stream past."""

    def __init__(self, source: EpisodeSource, cfg: QualityConfig) -> None:
        self.source, self.cfg = source, cfg
        self.rng = np.random.default_rng(cfg.seed)
        self.found: dict[str, list[tuple[float, str, str, list[int]]]] = defaultdict(list)
        self.lengths: dict[int, int] = {}
        self.tasks: dict[int, str] = {}
        self.dims: tuple[int, int] | None = None  # (D, S) of the first good episode
        self.samples: dict[str, list[tuple[np.ndarray, np.ndarray]]] = defaultdict(list)
        self.lo: np.ndarray | None = None  # (D,) finite action min over the dataset
        self.hi: np.ndarray | None = None
        self.cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self.cache_bytes = 0
        self.hashes: dict[str, list[int]] = defaultdict(list)
        self.visual: dict[int, np.ndarray] = {}  # episode -> (F,) thumbnail features in [0, 1]
        n = len(source)
        k = min(n, cfg.visual_max_episodes)
        self.visual_eps = set(np.linspace(0, n - 1, k).round().astype(int).tolist()) if k else set()
        space = source.action_space
        self.grip = list(space.gripper_dims) if space is not None else []
        self.grip_ends: list[tuple[float, float]] = []  # per gripper dim: (min g, max g)
        self.grip_actuated: list[int] = []
        self.idle_steps = 0  # idle steps in reported stretches, whole dataset
        fps = float(source.fps)
        self.fps = fps if np.isfinite(fps) and fps > 0 else None
        if self.fps is None:
            self.add("malformed", "error", 1.0, f"dataset fps is {source.fps}; must be > 0", [])

    def on(self, check: str) -> bool:
        return check not in self.cfg.skip

    def add(self, check: str, sev: str, score: float, msg: str, eps: list[int]) -> None:
        if self.on(check):
            self.found[check].append((float(score), sev, msg, eps))

    def _sample(self, name: str, rows: np.ndarray | None = None) -> np.ndarray:
        """Bottom-k sampling: keep the k rows with the smallest random keys, a uniform random
        subset of all finite rows seen. Compacts at 2k rows; returns the (<= k, dim) sample."""
        chunks, k = self.samples[name], self.cfg.stats_sample_rows
        if rows is not None:
            rows = rows[np.isfinite(rows).all(axis=1)]
            chunks.append((self.rng.random(len(rows)), rows))
        if rows is None or sum(len(c[0]) for c in chunks) > 2 * k:
            keys = np.concatenate([c[0] for c in chunks]) if chunks else np.zeros(0)
            kept = np.concatenate([c[1] for c in chunks]) if chunks else np.zeros((0, 0))
            keep = np.argpartition(keys, k)[:k] if len(keys) > k else slice(None)
            chunks[:] = [(keys[keep], kept[keep])]
        return chunks[0][1]

    def first_pass(self, i: int) -> None:
        try:
            ep = self.source.episode(i)
            ep.validate()
            actions = np.asarray(ep.actions, dtype=np.float64)  # (T, D)
            states = np.asarray(ep.states, dtype=np.float64)  # (T, S)
            ts = np.asarray(ep.timestamps, dtype=np.float64)  # (T,)
        except Exception as e:  # any reader failure is a finding about this episode
            self.add("malformed", "error", 1.0, f"episode {i}: {type(e).__name__}: {e}", [i])
            return
        dims = (actions.shape[1], states.shape[1])
        space = self.source.action_space
        want = (space.dim if space is not None else (self.dims or dims)[0], (self.dims or dims)[1])
        if dims != want:  # the reference is the action space, else the first good episode
            msg = f"episode {i}: (action, state) dims {dims}, expected {want}"
            self.add("malformed", "error", 1.0, msg, [i])
            return
        self.dims = want
        t = len(actions)
        self.lengths[i] = t
        self.tasks[i] = ep.task if isinstance(ep.task, str) else ""
        self._non_finite(i, {"actions": actions, "states": states, "timestamps": ts}, ep.extras)
        self._sample("actions", actions)
        if dims[1]:
            self._sample("states", states)
        fin = np.where(np.isfinite(actions), actions, np.nan)
        with np.errstate(all="ignore"):
            lo, hi = np.nanmin(fin, axis=0), np.nanmax(fin, axis=0)
        self.lo = lo if self.lo is None else np.fmin(self.lo, lo)
        self.hi = hi if self.hi is None else np.fmax(self.hi, hi)
        if np.isfinite(ts).all():
            self._timestamps(i, ts)
        if space is not None:
            self._bounds(i, actions)
            if self.grip:
                self._gripper(i, actions)
        digest = hashlib.sha1(actions.astype(np.float32).tobytes() + str(actions.shape).encode())
        self.hashes[digest.hexdigest()].append(i)
        if i in self.visual_eps and self.source.cameras and self.on("visual_diversity"):
            self._visual(i, t)
        size = actions.nbytes + states.nbytes
        if self.cache_bytes + size <= self.cfg.cache_lowdim_mb * 2**20:
            self.cache[i] = (actions, states)
            self.cache_bytes += size

    def _non_finite(self, i: int, fields: dict[str, np.ndarray], extras: dict[str, Any]) -> None:
        for key, value in extras.items():
            arr = np.asarray(value)
            if arr.dtype.kind in "fc" and arr.ndim >= 1:
                fields[f"extras.{key}"] = arr
        for name, arr in fields.items():
            bad = ~np.isfinite(arr)
            if bad.any():
                steps = np.flatnonzero(bad.reshape(len(arr), -1).any(axis=1))
                where = np.argwhere(bad)[0]
                dim = f" (dim {int(where[1])})" if arr.ndim > 1 else ""
                msg = (
                    f"episode {i}: '{name}' has {int(bad.sum())} NaN/inf value(s) in "
                    f"{len(steps)} step(s), first at step {int(steps[0])}{dim}"
                )
                self.add("non_finite", "error", int(bad.sum()), msg, [i])

    def _timestamps(self, i: int, ts: np.ndarray) -> None:
        if self.fps is None or len(ts) < 2:
            return
        dt_ref = 1.0 / self.fps
        d = np.diff(ts)  # (T-1,) seconds
        back = np.flatnonzero(d <= 0)
        if back.size:
            k = int(back[0]) + 1
            msg = (
                f"episode {i}: timestamps not increasing at {back.size} step(s), first at step "
                f"{k} ({ts[k - 1]:.4f}s -> {ts[k]:.4f}s)"
            )
            self.add("timestamps", "error", back.size, msg, [i])
        gaps = np.flatnonzero(d > self.cfg.gap_factor * dt_ref)
        if gaps.size:
            k = int(gaps[np.argmax(d[gaps])])
            msg = (
                f"episode {i}: {gaps.size} gap(s) longer than {self.cfg.gap_factor:g}/fps, "
                f"largest {d[k]:.3f}s after step {k} (expected {dt_ref:.4f}s)"
            )
            self.add("timestamps", "warning", float(d[gaps].sum() / dt_ref), msg, [i])
        med = float(np.median(d))
        if med > 0 and abs(med / dt_ref - 1) > self.cfg.fps_tolerance:
            msg = f"episode {i}: recorded at ~{1 / med:.2f} Hz, dataset fps is {self.fps:g}"
            self.add("timestamps", "warning", abs(med / dt_ref - 1), msg, [i])
        if abs(ts[0]) > 0.5 * dt_ref:
            self.add("timestamps", "warning", 0.0, f"episode {i}: starts at {ts[0]:.3f}s", [i])

    def _bounds(self, i: int, actions: np.ndarray) -> None:
        space = self.source.action_space
        assert space is not None
        low, high = np.asarray(space.low), np.asarray(space.high)
        tol = 1e-6 * (high - low) + 1e-9
        excess = np.maximum(actions - (high + tol), (low - tol) - actions)  # (T, D) > 0: out
        out = np.nan_to_num(excess, nan=0.0) > 0
        if out.any():
            t, d = np.unravel_index(np.argmax(np.nan_to_num(excess, nan=-np.inf)), excess.shape)
            msg = (
                f"episode {i}: {int(out.sum())} action value(s) outside the action space bounds, "
                f"worst {actions[t, d]:.4g} at step {t} dim {d} ({space.names[d]}: "
                f"[{low[d]:g}, {high[d]:g}])"
            )
            self.add("action_bounds", "warning", int(out.sum()), msg, [i])

    def _gripper(self, i: int, actions: np.ndarray) -> None:
        space = self.source.action_space
        assert space is not None
        closed, opened = space.gripper_closed, space.gripper_open
        tol = self.cfg.gripper_tolerance_frac
        reach = self.cfg.gripper_reach_frac
        actuated = False
        for j, d in enumerate(self.grip):
            g = (actions[:, d] - closed) / (opened - closed)  # (T,) 0 = closed, 1 = open
            g = g[np.isfinite(g)]
            if not g.size:
                continue
            out = np.flatnonzero((g < -tol) | (g > 1 + tol))
            if out.size:
                msg = (
                    f"episode {i}: gripper dim {d} outside [{closed:g}, {opened:g}] at "
                    f"{out.size} step(s), first at step {int(out[0])}"
                )
                self.add("gripper", "warning", out.size, msg, [i])
            if len(self.grip_ends) <= j:
                self.grip_ends.append((np.inf, -np.inf))
            lo, hi = self.grip_ends[j]
            self.grip_ends[j] = (min(lo, float(g.min())), max(hi, float(g.max())))
            actuated |= bool(g.min() <= reach and g.max() >= 1 - reach)
        if actuated:
            self.grip_actuated.append(i)

    def _visual(self, i: int, t: int) -> None:
        steps = np.unique(np.linspace(0, t - 1, self.cfg.frames_per_episode).round().astype(int))
        feats = []
        for cam in sorted(self.source.cameras):
            try:
                frames = np.asarray(self.source.frames(i, cam, steps))  # (K, H, W, 3) uint8
                feats.append(_thumbnail(frames, self.cfg.thumbnail_px).ravel())
            except Exception as e:  # a corrupt video is a finding, not a crash
                msg = f"episode {i}: cannot read camera '{cam}' frames: {type(e).__name__}: {e}"
                self.add("visual_diversity", "warning", 1.0, msg, [i])
                return
        x = np.concatenate(feats)
        first = next(iter(self.visual.values()), x)
        if x.shape == first.shape:
            self.visual[i] = x

    # -- between passes --------------------------------------------------------------------

    def robust_stats(self) -> dict[str, Any]:
        """Median, MAD-based scale and q01..q99 range per action/state dim from the sample."""
        out: dict[str, Any] = {}
        d, s = self.dims or (0, 0)
        for name, dim in (("actions", d), ("states", s)):
            rows = self._sample(name) if self.samples[name] else np.zeros((0, dim))
            if not len(rows):
                nan = np.full(dim, np.nan)
                out[name] = dict(median=nan, scale=nan, q01=nan, q99=nan, range=nan, discrete=[])
                continue
            med = np.median(rows, axis=0)
            scale = np.median(np.abs(rows - med), axis=0) / 0.6745  # MAD as a sigma estimate
            mean_ad = np.mean(np.abs(rows - med), axis=0) * 1.2533  # fallback where MAD == 0
            q01, q99 = np.quantile(rows, 0.01, axis=0), np.quantile(rows, 0.99, axis=0)
            # floor by the q01..q99 spread (= 4.65 sigma if Gaussian): sparse dims that are
            # mostly zero have a tiny MAD, and their ordinary motions are not outliers
            scale = np.maximum(np.where(scale > 0, scale, mean_ad), (q99 - q01) / 4.6527)
            rng = q99 - q01
            full = rows.max(axis=0) - rows.min(axis=0)
            rng = np.where(rng > 0, rng, np.where(full > 0, full, np.inf))  # constant: ignore
            discrete = [
                j for j in range(dim) if len(np.unique(rows[:, j])) <= self.cfg.discrete_max_values
            ]
            out[name] = dict(
                median=med, scale=scale, q01=q01, q99=q99, range=rng, discrete=discrete
            )
        return out

    # -- pass 2 ----------------------------------------------------------------------------

    def second_pass(self, i: int, st: dict[str, Any], hist: list[np.ndarray]) -> None:
        if i in self.cache:
            actions, states = self.cache.pop(i)
        else:
            try:
                ep = self.source.episode(i)
                actions = np.asarray(ep.actions, dtype=np.float64)
                states = np.asarray(ep.states, dtype=np.float64)
            except Exception as e:
                self.add("malformed", "error", 1.0, f"episode {i}: re-read failed: {e}", [i])
                return
        a = st["actions"]
        if self.lo is not None:
            for d, h in enumerate(hist):
                col = actions[:, d]
                edges = _edges(self.lo[d], self.hi[d], self.cfg.histogram_bins)
                h += np.histogram(col[np.isfinite(col)], bins=edges)[0]
        if self.on("action_outliers"):
            skip = set(a["discrete"]) | set(self.grip)
            with np.errstate(all="ignore"):
                z = np.abs(actions - a["median"]) / a["scale"]  # (T, D) modified z-score
            z[:, [j for j in range(z.shape[1]) if j in skip]] = 0.0
            z = np.where(np.isfinite(z), z, 0.0)
            out = z > self.cfg.outlier_z
            if out.any():
                t, d = np.unravel_index(np.argmax(z), z.shape)
                msg = (
                    f"episode {i}: {int(out.sum())} action outlier(s), worst step {t} dim {d} "
                    f"= {actions[t, d]:.4g} (z={z[t, d]:.1f}, median {a['median'][d]:.4g})"
                )
                self.add("action_outliers", "warning", float(z[t, d]), msg, [i])
        if self.on("idle") and self.fps is not None and len(actions) > 1:
            self._idle(i, actions, states, st)

    def _idle(self, i: int, actions: np.ndarray, states: np.ndarray, st: dict) -> None:
        space = self.source.action_space
        da = np.abs(np.diff(actions, axis=0))  # (T-1, D) per-step change
        if space is not None and space.delta_mask.any():
            da[:, space.delta_mask] = np.abs(actions[1:, space.delta_mask])  # delta: |command|
        parts = [da / st["actions"]["range"]]
        if states.shape[1]:
            parts.append(np.abs(np.diff(states, axis=0)) / st["states"]["range"])
        speed = np.concatenate(parts, axis=1).max(axis=1) * self.fps  # (T-1,) range fraction/s
        runs = _runs(speed < self.cfg.idle_speed_frac)
        long = [(s, n) for s, n in runs if n >= self.cfg.idle_min_steps]
        if long:
            start, n = max(long, key=lambda r: r[1])
            total = sum(n for _, n in long)
            self.idle_steps += total
            msg = (
                f"episode {i}: frozen for {total} of {len(actions)} steps in {len(long)} "
                f"stretch(es); longest {n} steps from step {start} ({n / self.fps:.1f}s)"
            )
            self.add("idle", "warning", total / len(actions), msg, [i])


def _edges(lo: float, hi: float, bins: int) -> np.ndarray:
    if not (np.isfinite(lo) and np.isfinite(hi)):
        lo, hi = 0.0, 1.0
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    return np.linspace(lo, hi, bins + 1)


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """(start, length) of each run of True in a 1-D bool array."""
    m = np.concatenate([[0], mask.astype(np.int8), [0]])
    d = np.diff(m)
    starts, ends = np.flatnonzero(d == 1), np.flatnonzero(d == -1)
    return [(int(s), int(e - s)) for s, e in zip(starts, ends, strict=True)]


def _thumbnail(frames: np.ndarray, px: int) -> np.ndarray:
    """(K, H, W, 3) uint8 -> (px, px, 3) float in [0, 1]: block means, averaged over K."""
    _, h, w, _ = frames.shape
    rows = (np.arange(min(px, h)) * h) // min(px, h)
    cols = (np.arange(min(px, w)) * w) // min(px, w)
    x = np.add.reduceat(frames.astype(np.float32), rows, axis=1)
    x = np.add.reduceat(x, cols, axis=2)  # (K, px, px, 3) block sums
    area = np.diff(np.append(rows, h))[:, None] * np.diff(np.append(cols, w))[None, :]
    return (x / area[None, :, :, None] / 255.0).mean(axis=0)


# ---------------------------------------------------------------------------------------------
# Dataset-level checks after the passes.


def _language(scan: _Scan, cfg: QualityConfig) -> dict[str, Any]:
    have: dict[int, str] = {}
    for i, text in scan.tasks.items():
        norm = normalize_instruction(text)
        if not norm:
            scan.add("instructions", "error", 1.0, f"episode {i}: instruction is empty", [i])
        elif norm in PLACEHOLDER_INSTRUCTIONS:
            msg = f"episode {i}: instruction {text!r} is a placeholder"
            scan.add("instructions", "error", 1.0, msg, [i])
        else:
            have[i] = text
    groups: dict[str, list[int]] = defaultdict(list)
    for i, text in have.items():
        groups[task_key(text)].append(i)
    tasks = []
    for key, eps in groups.items():
        phrasings = Counter(normalize_instruction(have[i]) for i in eps)
        top, top_n = phrasings.most_common(1)[0]
        share = top_n / len(eps)
        name = Counter(have[i] for i in eps).most_common(1)[0][0]
        stats = dict(episodes=len(eps), phrasings=len(phrasings), top_share=share)
        tasks.append({"task": name, "key": key, **stats})
        few = len(phrasings) < cfg.min_distinct_phrasings
        if len(eps) >= cfg.phrasing_min_episodes and (few or share > cfg.max_top_template_share):
            msg = (
                f"task {name!r}: {len(eps)} episodes, {len(phrasings)} distinct phrasing(s); "
                f"{top!r} used by {share:.0%} (want >= {cfg.min_distinct_phrasings} phrasings, "
                f"top share <= {cfg.max_top_template_share:.0%}); try `robofm data paraphrase`"
            )
            scan.add("phrasing", "warning", len(eps) * share, msg, sorted(eps))
    exact = Counter(have.values())
    top_text, top_count = exact.most_common(1)[0] if exact else ("", 0)
    tasks.sort(key=lambda t: -t["episodes"])
    share = top_count / len(have) if have else 0.0
    out = dict(n_missing=len(scan.tasks) - len(have), n_tasks=len(groups), tasks=tasks[:50])
    return dict(out, distinct_instructions=len(exact), top_instruction=top_text,
                top_template_share=share)  # fmt: skip


def _lengths(scan: _Scan, cfg: QualityConfig) -> dict[str, Any]:
    if not scan.lengths:
        return {}
    lens = np.array(list(scan.lengths.values()))
    med = float(np.median(lens))
    short = max(cfg.min_episode_steps, cfg.short_episode_frac * med)
    for i, t in scan.lengths.items():
        if t < short:
            msg = f"episode {i}: only {t} steps (median {med:g}); aborted or truncated?"
            scan.add("episode_length", "warning", short - t, msg, [i])
        elif t > cfg.long_episode_factor * med:
            msg = f"episode {i}: {t} steps, {t / med:.1f}x the median {med:g}"
            scan.add("episode_length", "warning", t / med, msg, [i])
    dur = float(lens.sum() / (scan.fps or float("nan")))
    out = dict(min=int(lens.min()), median=med, max=int(lens.max()), mean=float(lens.mean()))
    return dict(out, total_steps=int(lens.sum()), total_duration_s=dur)


def _visual_summary(scan: _Scan, cfg: QualityConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    if not scan.on("visual_diversity"):
        return {}, {}
    if not scan.source.cameras:
        scan.add("visual_diversity", "info", 0.0, "dataset has no cameras; skipped", [])
        return {}, {}
    eps = sorted(scan.visual)
    if len(eps) < 2:
        scan.add("visual_diversity", "info", 0.0, "fewer than 2 episodes with frames", [])
        return {}, {}
    x = np.stack([scan.visual[i] for i in eps]).astype(np.float64)  # (M, F) in [0, 1]
    sq = (x**2).sum(axis=1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * x @ x.T, 0.0) / x.shape[1]
    dist = np.sqrt(d2)  # (M, M) RMS distance per feature
    iu = np.triu_indices(len(eps), 1)
    diversity = float(dist[iu].mean())
    rgb = x.reshape(len(eps), -1, 3).mean(axis=1)  # (M, 3) mean colour over cameras
    bright = rgb @ np.array([0.299, 0.587, 0.114])  # (M,) luma
    if diversity < cfg.min_visual_diversity:
        msg = (
            f"visual conditions barely vary: mean pairwise thumbnail distance {diversity:.4f} "
            f"< {cfg.min_visual_diversity:g} (brightness std {bright.std():.3f}); vary lighting, "
            "backgrounds and object placement"
        )
        scan.add("visual_diversity", "warning", 1.0 - diversity, msg, [])
    close = dist < cfg.duplicate_visual_dist  # (M, M), diagonal True
    label = np.arange(len(eps))  # connected components by min-label propagation
    while (new := np.where(close, label[None, :], len(eps)).min(axis=1)).tolist() != label.tolist():
        label = new
    comps: dict[int, list[int]] = defaultdict(list)
    for k, lab in enumerate(label.tolist()):
        comps[lab].append(eps[k])
    dups = [c for c in comps.values() if len(c) > 1]
    for c in dups:
        msg = (
            f"episodes {c[:10]}{' ...' if len(c) > 10 else ''} look near-identical "
            f"(RMS thumbnail distance < {cfg.duplicate_visual_dist:g})"
        )
        scan.add("visual_diversity", "warning", len(c), msg, sorted(c))
    xc = x - x.mean(axis=0)
    vt = np.linalg.svd(xc, full_matrices=False)[2]
    pca = xc @ vt[:2].T
    pca = np.pad(pca, ((0, 0), (0, 2 - pca.shape[1])))
    summary = dict(diversity=diversity, brightness_mean=bright.mean(), brightness_std=bright.std())
    summary.update(colour_std=rgb.std(axis=0), near_duplicate_groups=len(dups), episodes=len(eps))
    return summary, {"episodes": eps, "pca": pca, "brightness": bright}


def _gripper_summary(scan: _Scan, cfg: QualityConfig, st: dict) -> dict[str, Any]:
    if not scan.on("gripper"):
        return {}
    if not scan.grip:
        cand = st["actions"]["discrete"] if scan.dims else []
        hint = f"; dims {cand} look binary, declare them as gripper_dims" if cand else ""
        msg = f"action space declares no gripper dims: skipped{hint}"
        scan.add("gripper", "info", 0.0, msg, [])
        return {}
    reach = cfg.gripper_reach_frac
    for d, (lo, hi) in zip(scan.grip, scan.grip_ends, strict=False):
        if lo > reach:
            msg = f"gripper dim {d} never closes: lowest opening {lo:.2f} (0 closed, 1 open)"
            scan.add("gripper", "warning", 1.0, msg, [])
        if hi < 1 - reach:
            msg = f"gripper dim {d} never opens: highest opening {hi:.2f} (0 closed, 1 open)"
            scan.add("gripper", "warning", 1.0, msg, [])
    ends = scan.grip_ends
    return dict(dims=scan.grip, episodes_actuated=len(scan.grip_actuated), opening_range=ends)


def _fold(scan: _Scan, cfg: QualityConfig) -> list[Issue]:
    """Issues per check, errors first then worst score; beyond the cap folded into one."""
    issues: list[Issue] = []
    rank = {s: k for k, s in enumerate(SEVERITIES)}
    for check in CHECKS:
        found = sorted(scan.found.get(check, []), key=lambda f: (rank[f[1]], -f[0]))
        cap = cfg.max_issues_per_check
        issues += [Issue(sev, check, msg, eps) for _, sev, msg, eps in found[:cap]]
        rest = found[cap:]
        for sev in SEVERITIES:
            more = [f for f in rest if f[1] == sev]
            if more:
                eps = sorted({e for f in more for e in f[3]})
                msg = f"... and {len(more)} more {sev}(s) like the above in episodes {eps[:30]}"
                issues.append(Issue(sev, check, msg + (" ..." if len(eps) > 30 else ""), eps))
    return issues


def _status(check: str, issues: list[Issue], cfg: QualityConfig) -> str:
    """skipped | fail (blocking error) | error | warn | info | ok."""
    sevs = {i.severity for i in issues if i.check == check}
    if check in cfg.skip:
        return "skipped"
    if "error" in sevs:
        return "fail" if check in cfg.blocking else "error"
    if "warning" in sevs:
        return "warn"
    return "info" if sevs else "ok"


def check_dataset(source: EpisodeSource, cfg: QualityConfig | None = None) -> QualityReport:
    """Run every check of `cfg` (default `QualityConfig()`) over `source`.

    Works on any `EpisodeSource`; reads each episode's low-dim arrays at most twice and
    `cfg.frames_per_episode` frames per camera for up to `cfg.visual_max_episodes` episodes.
    """
    cfg = cfg or QualityConfig()
    unknown = sorted((set(cfg.blocking) | set(cfg.skip)) - set(CHECKS))
    if unknown:
        raise ValueError(f"unknown check name(s) {unknown}; known: {list(CHECKS)}")
    scan = _Scan(source, cfg)
    n = len(source)
    for i in progress(range(n), desc=f"check {source.name} (1/2)", unit="ep"):
        scan.first_pass(i)
    st = scan.robust_stats()
    d = scan.dims[0] if scan.dims else 0
    hist = [np.zeros(cfg.histogram_bins, dtype=np.int64) for _ in range(d)]
    for i in progress(sorted(scan.lengths), desc=f"check {source.name} (2/2)", unit="ep"):
        scan.second_pass(i, st, hist)
    if source.skipped:
        for reason in source.skipped:
            scan.add("skipped", "warning", 0.0, f"reader skipped: {reason}", [])
    for group in scan.hashes.values():
        if len(group) > 1:
            msg = f"episodes {group[:10]} have identical actions (duplicated recording?)"
            scan.add("duplicates", "warning", len(group), msg, group)
    language = _language(scan, cfg)
    lengths = _lengths(scan, cfg)
    visual, visual_data = _visual_summary(scan, cfg)
    gripper = _gripper_summary(scan, cfg, st)
    issues = _fold(scan, cfg)
    counts = {s: sum(i.severity == s for i in issues) for s in SEVERITIES}
    status = {check: _status(check, issues, cfg) for check in CHECKS}
    space = source.action_space
    names = list(space.names) if space is not None else [f"a{j}" for j in range(d)]
    a = st["actions"] if scan.dims else {}
    actions = {"names": names, **{k: a[k] for k in ("median", "q01", "q99") if k in a}}
    summary = dict(dataset=source.name, fps=source.fps, episodes=n, counts=counts, checks=status)
    summary.update(episodes_checked=len(scan.lengths), action_dim=d, cameras=sorted(source.cameras))
    summary.update(state_dim=scan.dims[1] if scan.dims else 0, lengths=lengths, language=language)
    summary.update(actions=actions, idle_steps=scan.idle_steps, visual=visual, gripper=gripper)
    edges = [_edges(scan.lo[j], scan.hi[j], cfg.histogram_bins) for j in range(d)] if d else []
    data = {
        "action_hist": {"names": names, "counts": hist, "edges": edges},
        "lengths": [scan.lengths[i] for i in sorted(scan.lengths)],
        "visual": visual_data,
    }
    return QualityReport(issues, to_jsonable(summary), to_jsonable(data), tuple(cfg.blocking))


from robofm.data.quality_report import format_report, write_report  # noqa: E402  (re-export)

__all__ = [
    "CHECKS",
    "Issue",
    "QualityConfig",
    "QualityReport",
    "check_dataset",
    "format_report",
    "write_report",
]
