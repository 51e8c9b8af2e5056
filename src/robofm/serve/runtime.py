"""`ControlLoop`: a fixed-rate robot control loop fed by action chunks, through a `SafetyLayer`.

Every control period (1 / control_hz s) the loop reads the robot's observation, takes the
action for this step from a time-indexed queue (the policy's action when there is one, else
an *underrun*: the safety layer's hold action is sent), filters it through the safety layer
and applies it. Chunks come from a `ChunkSource` (`infer(obs) -> {"actions": (H, D)}`, e.g. a
`PolicyClient` or an in-process `Policy`) in one of two modes:

- **async** (default): a background thread computes the next chunk while the robot executes
  the current one. The request for the next chunk goes out `lead` steps before the current
  chunk's `execute_k` actions run out, where lead = ceil(p90 of the recent inference latencies
  in control steps) + `margin_steps`. A chunk requested at step t0 that arrives at step t1 was
  computed from the observation at t0, so its first (t1 - t0) actions are in the past and are
  dropped; the rest is merged with what is still queued (see blending). A chunk's later
  actions (beyond k) stay queued as a reserve, so a late chunk does not stall the robot.
- **sync**: request, wait, execute k: when the queue is empty the loop requests a chunk and
  waits for it (sending hold actions on every tick that passes meanwhile, which count as
  underruns); the chunk starts where it arrives (the robot held still) and k actions run.

Blending (`blend`): **ACT temporal ensembling** (Zhao et al. 2023): every queued step keeps
all predictions made for it; the action executed is their weighted mean with weights
exp(-m * i), i = 0 for the oldest prediction (m = `ensemble_m`, ACT's 0.01 by default; m > 0
favours older predictions, m < 0 newer ones). `blend="none"`: a new chunk replaces the queue.
(Real-time chunking's prefix constraint was not chosen: it needs the server's sampler to
inpaint the committed prefix, which the openpi protocol cannot ask for.)

Timing (`realtime=True`, the default for robots): pacing with `time.perf_counter` and sleep;
a tick that starts more than a period late is counted in `late_steps` and the schedule
restarts from it (no burst of catch-up steps). When the queue is empty and a chunk is in
flight the loop waits for it until half the period has passed. `realtime=False` (fast sim
runs): a simulated clock (step / control_hz s); each chunk is computed inline and becomes
available `sim_latency_steps` steps after its request, so runs are deterministic.

Per episode the loop records (`LoopStats`): achieved rate (Hz), inference latency (ms),
underruns, the action jump at chunk boundaries (|first action executed from a new chunk -
last policy action executed before it|, per dim, robot units), dropped stale actions and
safety interventions per reason.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from robofm.errors import ConfigError, RobofmError
from robofm.serve.safety import REASONS, SafetyLayer

logger = logging.getLogger(__name__)

MODES = ("async", "sync")
BLENDS = ("ensemble", "none")


class ChunkSource(Protocol):
    """What produces action chunks: a `PolicyClient`, a `Policy`, or any object like them."""

    def infer(self, obs: dict[str, Any]) -> dict[str, Any]: ...  # {"actions": (H, D) float32}

    def reset(self) -> None: ...  # new episode


class Robot(Protocol):
    """What the loop drives. `observe()` returns the latest observation dict ("images",
    "state" (S,), "prompt"), a fresh one after every `apply` (the loop hands it to the
    inference thread without copying); `apply(action (D,))` executes one action and returns
    True when the episode is over."""

    def observe(self) -> dict[str, Any]: ...

    def apply(self, action: np.ndarray) -> bool: ...


class InferenceError(RobofmError, RuntimeError):
    """The chunk source failed `max_consecutive_errors` times in a row."""


@dataclass(frozen=True)
class LoopConfig:
    """How the control loop runs."""

    control_hz: float  # loop rate, Hz; robots: the ActionSpace's control_hz
    execute_k: int = 0  # actions executed from each chunk (async: the request period); 0 = H
    mode: str = "async"  # "async" (infer ahead in a thread) or "sync" (request, wait, execute k)
    blend: str = "ensemble"  # "ensemble" (ACT temporal ensembling) or "none" (replace queue)
    ensemble_m: float = 0.01  # ACT's m: i-th prediction of a step (0 = oldest) weighs exp(-m*i)
    margin_steps: int = 1  # extra lead over the p90 latency when requesting ahead, steps
    latency_window: int = 20  # recent latencies the p90 is taken over
    initial_latency_ms: float = 0.0  # latency assumed before the first measurement, ms
    realtime: bool = True  # wall-clock pacing; False = simulated clock (see module doc)
    sim_latency_steps: int = 0  # realtime=False: steps between a request and its chunk
    max_consecutive_errors: int = 3  # inference failures in a row before InferenceError
    drain_timeout_s: float = 30.0  # at episode end, longest wait for an in-flight chunk, s

    def check(self) -> None:
        """Raise `ConfigError` naming the bad field."""
        if not (math.isfinite(self.control_hz) and self.control_hz > 0):
            raise ConfigError(f"LoopConfig.control_hz is {self.control_hz}; must be > 0")
        if self.execute_k < 0:
            raise ConfigError(f"LoopConfig.execute_k is {self.execute_k}; must be >= 0 (0 = H)")
        if self.mode not in MODES:
            raise ConfigError(f"LoopConfig.mode is {self.mode!r}; expected one of {MODES}")
        if self.blend not in BLENDS:
            raise ConfigError(f"LoopConfig.blend is {self.blend!r}; expected one of {BLENDS}")
        for name in ("margin_steps", "sim_latency_steps"):
            if getattr(self, name) < 0:
                raise ConfigError(f"LoopConfig.{name} is {getattr(self, name)}; must be >= 0")
        if self.latency_window < 1 or self.max_consecutive_errors < 1:
            raise ConfigError("LoopConfig.latency_window and max_consecutive_errors must be >= 1")


@dataclass
class LoopStats:
    """What one episode of the loop measured (times from the loop's clock)."""

    target_hz: float  # configured loop rate, Hz
    steps: int = 0  # control steps executed (policy actions and holds)
    duration_s: float = 0.0  # realtime: last tick start - first + one period; else wall, s
    policy_steps: int = 0  # steps that sent a policy action (not a hold)
    underruns: int = 0  # steps with no queued action: the hold action was sent
    late_steps: int = 0  # ticks that started more than one period late (realtime)
    chunks_requested: int = 0  # inference requests sent
    chunks_received: int = 0  # chunks merged into the queue
    stale_chunks: int = 0  # chunks that arrived with every action already in the past
    dropped_actions: int = 0  # stale leading actions dropped from arriving chunks
    inference_errors: int = 0  # failed requests (server error, timeout, ...)
    latency_ms: list[float] = field(default_factory=list)  # request -> chunk available, ms
    boundary_jumps: list[np.ndarray] = field(default_factory=list)  # (D,) |a_new - a_old| each
    safety: dict[str, int] = field(default_factory=dict)  # interventions per reason
    _step_jump_sum: np.ndarray | None = None  # sum of |a_t - a_t-1| over policy steps, (D,)
    _step_jump_n: int = 0

    @property
    def rate_hz(self) -> float:
        """Achieved loop rate, Hz (steps / duration)."""
        return self.steps / self.duration_s if self.duration_s > 0 else math.nan

    def summary(self) -> dict[str, Any]:
        """JSON-ready summary: rates (Hz), latency percentiles (ms), counts, jumps (robot
        units per dim, and their mean over dims)."""
        return summarize([self])


def summarize(stats: list[LoopStats]) -> dict[str, Any]:
    """Pool several episodes' `LoopStats` into one JSON-ready dict (see `LoopStats.summary`)."""
    steps = sum(s.steps for s in stats)
    dur = sum(s.duration_s for s in stats)
    lat = np.asarray([x for s in stats for x in s.latency_ms], dtype=np.float64)
    jumps = [j for s in stats for j in s.boundary_jumps]
    jump_dim = np.mean(np.stack(jumps), axis=0) if jumps else None
    sums = [s._step_jump_sum for s in stats if s._step_jump_sum is not None]
    n_pairs = sum(s._step_jump_n for s in stats)
    step_dim = np.sum(sums, axis=0) / n_pairs if sums and n_pairs else None
    safety = {r: sum(s.safety.get(r, 0) for s in stats) for r in REASONS}

    def pct(q: float) -> float:
        return float(np.percentile(lat, q)) if lat.size else math.nan

    return {
        "target_hz": stats[0].target_hz if stats else math.nan,
        "rate_hz": steps / dur if dur > 0 else math.nan,
        "policy_rate_hz": sum(s.policy_steps for s in stats) / dur if dur > 0 else math.nan,
        "steps": steps,
        "duration_s": dur,
        "policy_steps": sum(s.policy_steps for s in stats),
        "underruns": sum(s.underruns for s in stats),
        "underrun_frac": sum(s.underruns for s in stats) / steps if steps else math.nan,
        "late_steps": sum(s.late_steps for s in stats),
        "chunks_requested": sum(s.chunks_requested for s in stats),
        "chunks_received": sum(s.chunks_received for s in stats),
        "stale_chunks": sum(s.stale_chunks for s in stats),
        "dropped_actions": sum(s.dropped_actions for s in stats),
        "inference_errors": sum(s.inference_errors for s in stats),
        "latency_ms_p50": pct(50),
        "latency_ms_p99": pct(99),
        "latency_ms_mean": float(lat.mean()) if lat.size else math.nan,
        "boundaries": len(jumps),
        "boundary_jump_mean": float(jump_dim.mean()) if jump_dim is not None else math.nan,
        "boundary_jump_per_dim": jump_dim.tolist() if jump_dim is not None else [],
        "step_jump_mean": float(step_dim.mean()) if step_dim is not None else math.nan,
        "step_jump_per_dim": step_dim.tolist() if step_dim is not None else [],
        "safety": safety,
    }


@dataclass
class _Result:
    episode: int  # episode counter when requested; other episodes' results are dropped
    t0: int  # step whose observation the chunk was computed from
    actions: np.ndarray | None  # (H, D) float64, None on error
    latency_ms: float  # request -> available, ms
    error: BaseException | None = None
    ready_step: int = 0  # simulated backend: first step at which the chunk is available


class _ThreadedInference:
    """One daemon worker thread; at most one request in flight (realtime mode)."""

    def __init__(self, source: ChunkSource):
        self.source = source
        self._jobs: queue.Queue = queue.Queue()
        self._results: queue.Queue = queue.Queue()
        self.in_flight = False
        self._thread = threading.Thread(target=self._work, name="robofm-chunks", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            episode, t0, obs, t_submit = job
            try:
                actions = _actions(self.source.infer(obs))
                err = None
            except Exception as e:  # reported to the control thread, which decides
                actions, err = None, e
            ms = (time.perf_counter() - t_submit) * 1000.0
            self._results.put(_Result(episode, t0, actions, ms, err))

    def submit(self, episode: int, t0: int, obs: dict[str, Any]) -> None:
        self.in_flight = True
        self._jobs.put((episode, t0, obs, time.perf_counter()))

    def poll(self, step: int, timeout_s: float = 0.0) -> _Result | None:
        """The finished request, waiting up to `timeout_s`; None if still running."""
        if not self.in_flight:
            return None
        try:
            res = (
                self._results.get(timeout=timeout_s)
                if timeout_s > 0
                else self._results.get_nowait()
            )
        except queue.Empty:
            return None
        self.in_flight = False
        return res

    def drain(self, timeout_s: float) -> None:
        """Wait up to `timeout_s` for an in-flight request and discard its result."""
        if self.in_flight and self.poll(0, timeout_s) is None:
            logger.warning("an inference request is still running; its chunk will be ignored")

    def close(self) -> None:
        self._jobs.put(None)


class _SimulatedInference:
    """Inline inference on a simulated clock: a chunk is available `latency_steps` later."""

    def __init__(self, source: ChunkSource, latency_steps: int):
        self.source = source
        self.latency_steps = latency_steps
        self._pending: _Result | None = None

    @property
    def in_flight(self) -> bool:
        return self._pending is not None

    def submit(self, episode: int, t0: int, obs: dict[str, Any]) -> None:
        t = time.perf_counter()
        try:
            actions, err = _actions(self.source.infer(obs)), None
        except Exception as e:
            actions, err = None, e
        ms = (time.perf_counter() - t) * 1000.0
        self._pending = _Result(episode, t0, actions, ms, err, t0 + self.latency_steps)

    def poll(self, step: int, timeout_s: float = 0.0) -> _Result | None:
        res = self._pending
        if res is None or step < res.ready_step:
            return None
        self._pending = None
        return res

    def drain(self, timeout_s: float) -> None:
        self._pending = None

    def close(self) -> None:
        pass


def _actions(reply: dict[str, Any]) -> np.ndarray:
    if not isinstance(reply, dict) or "actions" not in reply:
        raise RobofmError(f"chunk source returned no 'actions': {type(reply).__name__}")
    a = np.array(reply["actions"], dtype=np.float64)  # copy: decoded arrays are read-only
    if a.ndim != 2 or a.shape[0] == 0:
        raise RobofmError(f"chunk source returned actions of shape {a.shape}; need (H, D)")
    return a


class ControlLoop:
    """Runs episodes of a `Robot` at `config.control_hz` with chunks from `source`, every
    action through `safety`. Use as a context manager (it owns an inference thread)."""

    def __init__(self, source: ChunkSource, safety: SafetyLayer, config: LoopConfig):
        config.check()
        self.source = source
        self.safety = safety
        self.config = config
        self.period_s = 1.0 / config.control_hz
        if config.realtime:
            self._backend: Any = _ThreadedInference(source)
        else:
            self._backend = _SimulatedInference(source, config.sim_latency_steps)
        self._episode = 0
        self._origin = 0.0  # perf_counter time at which tick 0 of the schedule was due
        self._latencies: deque[float] = deque(maxlen=config.latency_window)

    def close(self) -> None:
        """Stop the inference thread."""
        self._backend.close()

    def __enter__(self) -> ControlLoop:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- latency estimate ----------------------------------------------------------------

    def lead_steps(self) -> int:
        """Steps ahead of need at which the next chunk is requested (async mode)."""
        cfg = self.config
        if not cfg.realtime:
            return cfg.sim_latency_steps + cfg.margin_steps
        lat = np.percentile(self._latencies, 90) if self._latencies else cfg.initial_latency_ms
        return math.ceil(lat / 1000.0 * cfg.control_hz) + cfg.margin_steps

    # ---- one episode ---------------------------------------------------------------------

    def run_episode(
        self,
        robot: Robot,
        max_steps: int,
        *,
        initial_action: np.ndarray | None = None,
        should_stop: Any = None,
    ) -> LoopStats:
        """Run until `robot.apply` reports the end or `max_steps` steps; returns the stats.

        `initial_action` (D,) seeds the safety layer's history (what the robot is doing now,
        e.g. gripper open). `should_stop()` is checked each tick for an operator abort.
        """
        cfg = self.config
        self._episode += 1
        ep = self._episode
        self._backend.drain(cfg.drain_timeout_s)
        if hasattr(self.source, "reset"):
            self.source.reset()
        stats = LoopStats(target_hz=cfg.control_hz)
        safety_before = dict(self.safety.counts)
        self.safety.reset(initial_action, now_s=self._now(0))
        self._queue: deque[list] = deque()  # per future step: [sum (D,), weight sum, count]
        self._anchor = 0  # step of action 0 of the chunk whose k-window runs now
        self._k = 1  # that chunk's k: actions executed from it before the next takes over
        self._boundary = False  # the next policy action is the first from a new chunk
        self._last_policy: np.ndarray | None = None  # (D,) last policy action executed
        self._errors = 0
        wall0 = first_tick = last_tick = time.perf_counter()
        for t in range(max_steps):
            if cfg.realtime:
                last_tick = self._pace(t, stats)
                if t == 0:
                    first_tick = last_tick
            now = self._now(t)
            obs = robot.observe()
            self._handle(self._backend.poll(t), ep, t, now, stats)
            if self._wants_chunk(t):
                self._backend.submit(ep, t, obs)
                stats.chunks_requested += 1
            if not self._queue and self._backend.in_flight:  # nothing to send: wait a little
                left = 0.5 * self.period_s - (time.perf_counter() - last_tick)
                self._handle(self._backend.poll(t, max(left, 0.0)), ep, t, now, stats)
            action = self._next_action(stats)
            sent = self.safety.filter(action, obs.get("state"), now)
            stats.steps += 1
            done = robot.apply(sent)
            if done or (should_stop is not None and should_stop()):
                break
        if cfg.realtime:  # from tick starts: steps ticks span (steps - 1) periods + one
            stats.duration_s = (last_tick - first_tick) + self.period_s if stats.steps else 0.0
        else:  # as fast as the sim runs: wall time
            stats.duration_s = time.perf_counter() - wall0
        stats.safety = {r: self.safety.counts.get(r, 0) - safety_before.get(r, 0) for r in REASONS}
        self._backend.drain(cfg.drain_timeout_s)
        return stats

    def _wants_chunk(self, t: int) -> bool:
        """Request now? sync: when the queue is empty; async: also `lead` steps before the
        current chunk's k actions are spent. Never with a request in flight."""
        if self._backend.in_flight:
            return False
        if not self._queue:
            return True
        return self.config.mode == "async" and t >= self._anchor + self._k - self.lead_steps()

    def _handle(self, res: _Result | None, ep: int, t: int, now: float, stats: LoopStats) -> None:
        """Account for a finished request: merge its chunk or count its error."""
        if res is None or res.episode != ep:
            return  # nothing, or a late answer to a previous episode's request
        if res.error is not None:
            self._errors += 1
            stats.inference_errors += 1
            logger.warning("inference failed at step %d: %s", t, res.error)
            if self._errors >= self.config.max_consecutive_errors:
                raise InferenceError(
                    f"{self._errors} inference requests failed in a row; last: "
                    f"{type(res.error).__name__}: {res.error}"
                ) from res.error
            return
        self._errors = 0
        self._latencies.append(res.latency_ms)
        stats.latency_ms.append(res.latency_ms)
        if self._merge(self._queue, res, t, stats):
            self.safety.mark_fresh(now)
            h = len(res.actions)
            self._k = min(self.config.execute_k or h, h)
            self._anchor = res.t0 if self.config.mode == "async" else t
            self._boundary = self._last_policy is not None

    def _next_action(self, stats: LoopStats) -> np.ndarray | None:
        """Pop this step's action (blended), or None on an underrun; records jumps."""
        if not self._queue:
            stats.underruns += 1
            return None
        total, weight, _ = self._queue.popleft()
        action = total / weight  # (D,)
        stats.policy_steps += 1
        if self._last_policy is not None:
            jump = np.abs(action - self._last_policy)
            if self._boundary:
                stats.boundary_jumps.append(jump)
            prev = stats._step_jump_sum
            stats._step_jump_sum = jump if prev is None else prev + jump
            stats._step_jump_n += 1
        self._boundary = False
        self._last_policy = action
        return action

    def _merge(self, q: deque, res: _Result, t: int, stats: LoopStats) -> bool:
        """Put a chunk's still-valid actions into the queue; False if none were."""
        cfg = self.config
        actions = res.actions
        assert actions is not None
        if cfg.mode == "sync":
            k = min(cfg.execute_k or len(actions), len(actions))
            q.clear()
            q.extend([a.copy(), 1.0, 1] for a in actions[:k])  # starts now: the robot held
            stats.chunks_received += 1
            return True
        stale = t - res.t0  # actions for steps t0 .. t-1 are in the past
        if stale >= len(actions):
            stats.stale_chunks += 1
            stats.dropped_actions += len(actions)
            return False
        stats.dropped_actions += stale
        stats.chunks_received += 1
        fresh = actions[stale:]  # (H - stale, D), fresh[j] is for step t + j
        if cfg.blend == "none":
            q.clear()
            q.extend([a.copy(), 1.0, 1] for a in fresh)
            return True
        for j, a in enumerate(fresh):
            if j < len(q):
                entry = q[j]
                w = math.exp(-cfg.ensemble_m * entry[2])  # ACT: i-th prediction weighs e^(-m i)
                entry[0] = entry[0] + w * a
                entry[1] += w
                entry[2] += 1
            else:
                q.append([a.copy(), 1.0, 1])
        return True

    def _pace(self, t: int, stats: LoopStats) -> float:
        """Sleep until tick t is due; returns its start time (perf_counter, s). Ticks are due
        at origin + t / control_hz; a tick more than a period late is counted and restarts
        the schedule from now (no burst of catch-up ticks)."""
        now = time.perf_counter()
        if t == 0:
            self._origin = now
            return now
        due = self._origin + t * self.period_s
        if now < due:
            time.sleep(due - now)
            return time.perf_counter()
        if now - due > self.period_s:
            stats.late_steps += 1
            self._origin = now - t * self.period_s
        return now

    def _now(self, t: int) -> float:
        """The safety watchdog's clock at step t, s: wall clock, or simulated."""
        return time.perf_counter() if self.config.realtime else t * self.period_s
