"""`SafetyLayer`: the last filter between a policy's actions and the robot driver.

It knows neither the model nor the driver, only the action contract (bounds, delta or absolute
per dimension, gripper dims) and, for the workspace rule, the end-effector position in the
state. Each control step the runtime calls `filter(action, state)` and sends what comes back.

Rules, in the order they are applied (all quantities in robot units per control step, e.g.
metres per step for the sim's dx, dy, dz; nothing here is per second):

1. **e-stop**: once `estop()` is called, every step outputs the fallback action until
   `reset_estop()` (the latch survives `reset()`).
2. **watchdog**: if no fresh action arrived (`mark_fresh`, called by the runtime when a chunk
   comes in) for more than `watchdog_ms`, the fallback action is sent until one does, whether
   or not old actions are still queued.
3. **no action** (`action is None`, a queue underrun within the deadline): the hold action.
4. **non-finite**: an action with any NaN or inf is replaced whole by the fallback action.
5. **bounds**: clip each dimension to [low, high].
6. **acceleration**, then 7. **velocity**, on the commanded action sequence a_t:
   - delta dims (the action already is a velocity): velocity is |a_t| <= max_velocity and
     acceleration is |a_t - a_{t-1}| <= max_acceleration;
   - absolute dims (a position target): velocity is |a_t - a_{t-1}| <= max_velocity and
     acceleration is the second difference |(a_t - a_{t-1}) - (a_{t-1} - a_{t-2})| <=
     max_acceleration.
   a_{t-1}, a_{t-2} are the actions this layer *sent* (fallbacks included), so a restart
   after a hold ramps up. The change is first clamped to the acceleration window, then to the
   velocity limit, so when both cannot hold (only possible after a fallback) velocity wins.
   Without enough history (first steps after `reset()`) the rules that need it are skipped.
8. **workspace**: for delta end-effector dims, state position + delta is kept inside the box
   [workspace_low, workspace_high] by clamping the delta per axis; from outside the box only
   motion back towards it is allowed; with a non-finite position in the state the position
   deltas are zeroed. This runs last: it may brake harder than the
   acceleration limit (a wall wins over smoothness). Finally bounds are re-applied.

The **hold** action is zero for delta dims and the last sent value for absolute dims (the
gripper stays as it is); before anything was sent, absolute dims hold `hold_absolute`. The
**fallback** is `safe_action` when configured, else hold. Fallbacks skip the rate rules but
not the workspace rule.

Every intervention is counted per reason in `.counts` (one count per affected dimension, or
one per step for whole-action reasons), appended to `.events` (step, reason, dim) and logged
on the `robofm.serve.safety` logger (clamps and underrun holds at INFO, e-stop, watchdog
and non-finite fallbacks at WARNING).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from robofm.errors import ConfigError

logger = logging.getLogger(__name__)

REASONS = (
    "estop",
    "watchdog",
    "no_action",
    "nonfinite",
    "bounds",
    "acceleration",
    "velocity",
    "workspace",
)  # every value `SafetyEvent.reason` can take
FALLBACK_REASONS = ("estop", "watchdog", "no_action", "nonfinite")  # whole-action replacements


@dataclass(frozen=True)
class SafetyConfig:
    """Limits for one robot. Per-dimension tuples have length D (the action dimension)."""

    low: tuple[float, ...]  # (D,) lower bound per action dim, robot units
    high: tuple[float, ...]  # (D,) upper bound per action dim, robot units
    delta_dims: tuple[bool, ...]  # (D,) True where the action is a per-step delta
    max_velocity: tuple[float, ...]  # (D,) units/step: |a_t| (delta) or |a_t - a_t-1|; inf = off
    max_acceleration: tuple[float, ...]  # (D,) units/step^2 (see module doc); inf = off
    names: tuple[str, ...] = ()  # (D,) dimension names for logs and events; () = "a0", "a1", ..
    gripper_dims: tuple[int, ...] = ()  # indices of gripper dims (informational; rates off)
    hold_absolute: tuple[float, ...] | None = None  # (D,) hold values of absolute dims before any
    #   action was sent; None = the dims' midpoints
    safe_action: tuple[float, ...] | None = (
        None  # (D,) fallback on e-stop/watchdog/NaN; None = hold
    )
    watchdog_ms: float | None = 1000.0  # max time without a fresh action, ms; None = off
    workspace_low: tuple[float, ...] | None = None  # (P,) lower corner of the hand box, m
    workspace_high: tuple[float, ...] | None = None  # (P,) upper corner of the hand box, m
    position_state_dims: tuple[int, ...] = ()  # (P,) state indices of the hand position (x, y, z)
    position_action_dims: tuple[int, ...] = ()  # (P,) action indices of its deltas (dx, dy, dz)
    max_events: int = 10_000  # events kept in `SafetyLayer.events`; counts are always exact

    @classmethod
    def from_action_space(
        cls, space: Any, state_space: Any = None, **overrides: Any
    ) -> SafetyConfig:
        """Defaults derived from an `ActionSpace` (and a `StateSpace` for the workspace rule).

        - bounds: the space's low/high;
        - max_velocity: delta dims max(|low|, |high|) (their bound), absolute dims high - low
          (off in effect), grippers inf;
        - max_acceleration: (high - low) / 2 for non-gripper dims (a full reversal takes two
          steps), grippers inf (open/close is a step by design);
        - hold_absolute: grippers `gripper_open`, other absolute dims their midpoint (set it for
          absolute joint robots);
        - watchdog_ms: two chunk durations, 2000 * chunk_len / control_hz, at least 250 ms;
        - workspace dims: with a state space whose names include x, y, z and delta action dims
          dx, dy, dz in the end-effector frame; the box itself must come in `overrides`.

        `overrides` replace any field; an unknown name is a `ConfigError`.
        """
        d = space.dim
        low = np.asarray(space.low, dtype=np.float64)
        high = np.asarray(space.high, dtype=np.float64)
        delta = tuple(bool(m == "delta") for m in space.mode)
        grip = set(space.gripper_dims)
        vel, acc, hold = [], [], []
        for i in range(d):
            if i in grip:
                vel.append(math.inf)
                acc.append(math.inf)
            else:
                vel.append(float(max(abs(low[i]), abs(high[i]))) if delta[i] else high[i] - low[i])
                acc.append(float((high[i] - low[i]) / 2.0))
            hold.append(float(space.gripper_open) if i in grip else float((low[i] + high[i]) / 2))
        watchdog = max(250.0, 2000.0 * space.chunk_len / space.control_hz)
        pos_state: tuple[int, ...] = ()
        pos_action: tuple[int, ...] = ()
        if state_space is not None and space.frame == "end_effector":
            s_names, a_names = list(state_space.names), list(space.names)
            if all(n in s_names for n in "xyz") and all(f"d{n}" in a_names for n in "xyz"):
                pos_state = tuple(s_names.index(n) for n in "xyz")
                pos_action = tuple(a_names.index(f"d{n}") for n in "xyz")
                if not all(delta[i] for i in pos_action):
                    pos_state, pos_action = (), ()
        cfg = cls(
            low=tuple(float(v) for v in low),
            high=tuple(float(v) for v in high),
            delta_dims=delta,
            max_velocity=tuple(vel),
            max_acceleration=tuple(acc),
            names=tuple(space.names),
            gripper_dims=tuple(space.gripper_dims),
            hold_absolute=tuple(hold),
            watchdog_ms=watchdog,
            position_state_dims=pos_state,
            position_action_dims=pos_action,
        )
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ConfigError(f"SafetyConfig has no field(s) {unknown}; fields: {sorted(known)}")
        return dataclasses.replace(cfg, **overrides)


@dataclass(frozen=True)
class SafetyEvent:
    """One intervention: which step, why, which dimension (None = the whole action)."""

    step: int  # control step index since `reset()`
    reason: str  # one of REASONS
    dim: int | None  # action dimension, or None for whole-action fallbacks
    before: float | None  # the value the policy asked for (None for whole-action events)
    after: float | None  # the value sent instead


def _check_config(c: SafetyConfig) -> int:
    """Validate `c`; returns D. Errors name the field at fault."""
    d = len(c.low)
    if d == 0:
        raise ConfigError("SafetyConfig.low is empty; need one bound per action dimension")
    for name in ("high", "delta_dims", "max_velocity", "max_acceleration"):
        if len(getattr(c, name)) != d:
            raise ConfigError(
                f"SafetyConfig.{name} has {len(getattr(c, name))} entries, 'low' has {d}"
            )
    for name in ("names", "hold_absolute", "safe_action"):
        v = getattr(c, name)
        if v and len(v) != d:
            raise ConfigError(f"SafetyConfig.{name} has {len(v)} entries, 'low' has {d}")
    for i, (lo, hi) in enumerate(zip(c.low, c.high, strict=True)):
        if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
            raise ConfigError(
                f"SafetyConfig bounds of dim {i} are [{lo}, {hi}]; need finite lo<=hi"
            )
    for name in ("max_velocity", "max_acceleration"):
        for i, v in enumerate(getattr(c, name)):
            if math.isnan(v) or v < 0:
                raise ConfigError(f"SafetyConfig.{name}[{i}] is {v}; must be >= 0 (inf = off)")
    if c.safe_action is not None:
        a = np.asarray(c.safe_action, dtype=np.float64)
        if not np.all(np.isfinite(a)) or np.any(a < c.low) or np.any(a > c.high):
            raise ConfigError(f"SafetyConfig.safe_action {list(c.safe_action)} is not in bounds")
    if c.watchdog_ms is not None and not c.watchdog_ms > 0:
        raise ConfigError(f"SafetyConfig.watchdog_ms is {c.watchdog_ms}; must be > 0 or None")
    p = len(c.position_action_dims)
    if len(c.position_state_dims) != p:
        raise ConfigError(
            "SafetyConfig.position_state_dims and position_action_dims differ in length"
        )
    for i in c.position_action_dims:
        if not 0 <= i < d or not c.delta_dims[i]:
            raise ConfigError(f"SafetyConfig.position_action_dims has {i}: not a delta dim of {d}")
    if (c.workspace_low is None) != (c.workspace_high is None):
        raise ConfigError("SafetyConfig needs both workspace_low and workspace_high, or neither")
    if c.workspace_low is not None:
        if p == 0:
            raise ConfigError("SafetyConfig has a workspace box but no position dims to check")
        if len(c.workspace_low) != p or len(c.workspace_high) != p:
            raise ConfigError(f"SafetyConfig workspace corners need {p} entries each")
        if any(lo > hi for lo, hi in zip(c.workspace_low, c.workspace_high, strict=True)):
            raise ConfigError("SafetyConfig.workspace_low is above workspace_high on some axis")
    return d


class SafetyLayer:
    """Applies a `SafetyConfig` to one action per control step; see the module doc."""

    def __init__(self, config: SafetyConfig):
        self.dim = _check_config(config)
        self.config = config
        self.names = config.names or tuple(f"a{i}" for i in range(self.dim))
        self._low = np.asarray(config.low, dtype=np.float64)
        self._high = np.asarray(config.high, dtype=np.float64)
        self._delta = np.asarray(config.delta_dims, dtype=bool)
        self._vmax = np.asarray(config.max_velocity, dtype=np.float64)
        self._amax = np.asarray(config.max_acceleration, dtype=np.float64)
        mid = (self._low + self._high) / 2.0
        self._hold0 = np.asarray(config.hold_absolute, np.float64) if config.hold_absolute else mid
        self._estop = threading.Event()
        self._estop_reason = ""
        self.counts: Counter[str] = Counter()  # reason -> interventions since construction
        self.events: list[SafetyEvent] = []  # the first `max_events` interventions
        self.reset()

    # ---- episode / external signals ------------------------------------------------------

    def reset(self, initial_action: np.ndarray | None = None, now_s: float | None = None) -> None:
        """Start a new episode: forget the action history, restart the watchdog clock.

        `initial_action` (D,) is taken as the last sent action (e.g. the robot's current
        gripper and joint targets), so rate limits and hold apply from the first step.
        Counts and events are kept (they cover the layer's life); the e-stop stays latched.
        """
        self.step = 0
        self._prev: np.ndarray | None = None  # a_{t-1} as sent, float64 (D,)
        self._prev2: np.ndarray | None = None  # a_{t-2} as sent
        if initial_action is not None:
            a = np.asarray(initial_action, dtype=np.float64).reshape(-1)
            if a.shape != (self.dim,) or not np.all(np.isfinite(a)):
                raise ConfigError(f"initial_action must be finite ({self.dim},), got {a.tolist()}")
            self._prev = a.copy()
        self._last_fresh_s = time.perf_counter() if now_s is None else now_s

    def mark_fresh(self, now_s: float | None = None) -> None:
        """A fresh action (chunk) arrived from the policy: feed the watchdog. Time in s."""
        self._last_fresh_s = time.perf_counter() if now_s is None else now_s

    def estop(self, reason: str = "requested") -> None:
        """Latch the emergency stop (thread-safe): fallback actions until `reset_estop()`."""
        if not self._estop.is_set():
            self._estop_reason = reason
            logger.warning("safety: e-stop latched (%s)", reason)
        self._estop.set()

    def reset_estop(self) -> None:
        """Release the e-stop latch (an operator's decision, never automatic)."""
        if self._estop.is_set():
            logger.warning("safety: e-stop released")
        self._estop.clear()

    @property
    def estopped(self) -> bool:
        """True while the e-stop is latched."""
        return self._estop.is_set()

    # ---- actions -----------------------------------------------------------------------

    def hold_action(self) -> np.ndarray:
        """(D,) float32: zero deltas, absolute dims at their last sent value."""
        last = self._prev if self._prev is not None else self._hold0
        return np.where(self._delta, 0.0, last).astype(np.float32)

    def fallback_action(self) -> np.ndarray:
        """(D,) float32: `safe_action` when configured, else `hold_action()`."""
        if self.config.safe_action is not None:
            return np.asarray(self.config.safe_action, dtype=np.float32)
        return self.hold_action()

    def filter(
        self,
        action: np.ndarray | None,
        state: np.ndarray | None = None,
        now_s: float | None = None,
    ) -> np.ndarray:
        """The action to send this step: (D,) float32 in robot units.

        `action` (D,) is the policy's action or None when none is available; `state` (S,) is
        the robot's current state (needed by the workspace rule); `now_s` is the clock the
        watchdog uses, in s (default `time.perf_counter()`; a simulated clock also works).
        """
        now = time.perf_counter() if now_s is None else now_s
        fallback: str | None = None
        if self._estop.is_set():
            fallback = "estop"
        elif self._watchdog_expired(now):
            fallback = "watchdog"
        elif action is None:
            fallback = "no_action"
        else:
            a = np.asarray(action, dtype=np.float64).reshape(-1)
            if a.shape != (self.dim,):
                raise ValueError(
                    f"action has shape {a.shape}; the safety layer expects ({self.dim},)"
                )
            bad = np.flatnonzero(~np.isfinite(a))
            if bad.size:
                for i in bad:
                    self._record("nonfinite", int(i), float(a[i]), None)
                fallback = "nonfinite"
        if fallback is not None:
            out = self.hold_action() if fallback == "no_action" else self.fallback_action()
            out = out.astype(np.float64)
            if fallback != "nonfinite":
                self._record(fallback, None, None, None)
        else:
            out = self._limit(a)
        out = self._workspace(out, state)
        bounded = np.clip(out, self._low, self._high)  # a rate limit may overshoot a bound
        self._record_changes("bounds", out, bounded)
        out = bounded
        self._prev2, self._prev = self._prev, out
        self.step += 1
        return out.astype(np.float32)

    # ---- rules -------------------------------------------------------------------------

    def _watchdog_expired(self, now: float) -> bool:
        ms = self.config.watchdog_ms
        return ms is not None and (now - self._last_fresh_s) * 1000.0 > ms

    def _limit(self, a: np.ndarray) -> np.ndarray:
        """Bounds, then acceleration, then velocity (see module doc). float64 (D,)."""
        out = np.clip(a, self._low, self._high)
        self._record_changes("bounds", a, out)
        prev, prev2, delta = self._prev, self._prev2, self._delta
        # vel: this step's velocity. Delta dims: the action itself; absolute dims: the first
        # difference, known only once a_{t-1} is (the placeholder 0 is never limited).
        if prev is None:
            vel = np.where(delta, out, 0.0)
            vel_known = delta.copy()
            prev_vel, prev_known = np.zeros(self.dim), np.zeros(self.dim, dtype=bool)
        else:
            vel = np.where(delta, out, out - prev)
            vel_known = np.ones(self.dim, dtype=bool)
            prev_vel = np.where(delta, prev, prev - (prev2 if prev2 is not None else prev))
            prev_known = delta | (prev2 is not None)
        # acceleration: |vel - prev_vel| <= amax, where prev_vel is known
        lo = np.where(prev_known, prev_vel - self._amax, -np.inf)
        hi = np.where(prev_known, prev_vel + self._amax, np.inf)
        limited = np.clip(vel, lo, hi)
        acc_hit = limited != vel
        # velocity: |vel| <= vmax, where vel is known; applied last, so it wins
        vmax = np.where(vel_known, self._vmax, np.inf)
        capped = np.clip(limited, -vmax, vmax)
        vel_hit = capped != limited
        new = np.where(delta, capped, out if prev is None else prev + capped)
        for i in np.flatnonzero(acc_hit):
            self._record("acceleration", int(i), float(out[i]), float(new[i]))
        for i in np.flatnonzero(vel_hit):
            self._record("velocity", int(i), float(out[i]), float(new[i]))
        return new

    def _workspace(self, a: np.ndarray, state: np.ndarray | None) -> np.ndarray:
        c = self.config
        if c.workspace_low is None:
            return a
        if state is None:
            raise ValueError("the safety layer has a workspace box; filter() needs the state")
        s = np.asarray(state, dtype=np.float64).reshape(-1)
        pos = s[list(c.position_state_dims)]  # (P,) hand position, m
        dims = list(c.position_action_dims)
        if not np.all(np.isfinite(pos)):  # unknown position: no motion can be shown safe
            out = a.copy()
            out[dims] = 0.0
            self._record_changes("workspace", a, out)
            return out
        lo = np.minimum(np.asarray(c.workspace_low) - pos, 0.0)  # never push outward
        hi = np.maximum(np.asarray(c.workspace_high) - pos, 0.0)
        out = a.copy()
        out[dims] = np.clip(a[dims], lo, hi)
        self._record_changes("workspace", a, out)
        return out

    # ---- bookkeeping -------------------------------------------------------------------

    def _record_changes(self, reason: str, before: np.ndarray, after: np.ndarray) -> None:
        for i in np.flatnonzero(before != after):
            self._record(reason, int(i), float(before[i]), float(after[i]))

    def _record(self, reason: str, dim: int | None, before: float | None, after: float | None):
        self.counts[reason] += 1
        if len(self.events) < self.config.max_events:
            self.events.append(SafetyEvent(self.step, reason, dim, before, after))
        where = "action" if dim is None else f"dim {dim} ({self.names[dim]})"
        if reason in ("estop", "watchdog", "nonfinite"):
            extra = f": {self._estop_reason}" if reason == "estop" else ""
            logger.warning("safety step %d: %s on %s%s", self.step, reason, where, extra)
        elif dim is None or before is None or after is None:  # underrun: see runtime stats
            logger.info("safety step %d: %s on %s", self.step, reason, where)
        else:
            logger.info(
                "safety step %d: %s on %s: %.6g -> %.6g", self.step, reason, where, before, after
            )

    def summary(self) -> dict[str, int]:
        """Counts per reason, every reason present (zeros included); JSON-ready."""
        return {r: int(self.counts.get(r, 0)) for r in REASONS}
