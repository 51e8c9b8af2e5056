"""Success rates with honest error bars, and per-(task, split) summaries of rollouts.

A success rate from 20 episodes is a coarse estimate: 15/20 is compatible with anything from
about 53% to 89%. Every rate is therefore reported with its 95% Wilson score interval, which
(unlike the normal approximation) stays inside [0, 1] and is sensible at 0/n and n/n.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval (ci_low, ci_high) for `successes` out of `n` Bernoulli trials.

    `z` is the normal quantile (1.96 for 95%). With no trials nothing is known: (0.0, 1.0).
    """
    if n < 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n, got {successes} of {n}")
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    low = 0.0 if successes == 0 else max(0.0, centre - half)  # exact at the ends, where
    high = 1.0 if successes == n else min(1.0, centre + half)  # rounding could cross p
    return low, high


def rate_row(successes: int, n: int) -> dict[str, Any]:
    """{"n", "successes", "rate", "ci_low", "ci_high"} for one group of episodes."""
    low, high = wilson_interval(successes, n)
    return {
        "n": n,
        "successes": successes,
        "rate": successes / n if n else 0.0,
        "ci_low": low,
        "ci_high": high,
    }


def _row(results: list) -> dict[str, Any]:
    latencies = np.asarray([ms for r in results for ms in r.latency_ms], dtype=np.float64)
    row = rate_row(sum(bool(r.success) for r in results), len(results))
    row["mean_steps"] = float(np.mean([r.steps for r in results])) if results else math.nan
    row["latency_ms_mean"] = float(latencies.mean()) if latencies.size else math.nan
    row["latency_ms_p90"] = float(np.percentile(latencies, 90)) if latencies.size else math.nan
    return row


def summarize(results: Iterable) -> dict[str, dict[str, dict[str, Any]]]:
    """Per task, per split: {"n", "successes", "rate", "ci_low", "ci_high" (95% Wilson),
    "mean_steps" (episode length, control steps), "latency_ms_mean", "latency_ms_p90"
    (one policy call, i.e. one action chunk, in ms)}.

    `results` are `EpisodeResult`s (anything with task, split, success, steps, latency_ms).
    The returned dict is `summary[task][split]`, in first-seen order, JSON-ready.
    """
    groups: dict[str, dict[str, list]] = {}
    for r in results:
        groups.setdefault(r.task, {}).setdefault(r.split, []).append(r)
    return {
        task: {split: _row(rs) for split, rs in splits.items()} for task, splits in groups.items()
    }


def pool_tasks(summary: dict[str, dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per split, pooled over tasks: {"n", "successes", "rate", "ci_low", "ci_high",
    "mean_steps"} (the interval is recomputed from the pooled counts, not averaged)."""
    pooled: dict[str, dict[str, Any]] = {}
    for splits in summary.values():
        for split, row in splits.items():
            acc = pooled.setdefault(split, {"n": 0, "successes": 0, "steps": 0.0})
            acc["n"] += row["n"]
            acc["successes"] += row["successes"]
            acc["steps"] += row["mean_steps"] * row["n"]
    out = {}
    for split, acc in pooled.items():
        out[split] = rate_row(acc["successes"], acc["n"])
        out[split]["mean_steps"] = acc["steps"] / acc["n"] if acc["n"] else math.nan
    return out
