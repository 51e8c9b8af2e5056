"""Wilson intervals against known values, per-(task, split) summaries, the success table."""

from __future__ import annotations

import math

import numpy as np
import pytest

from robofm.eval.metrics import pool_tasks, summarize, wilson_interval
from robofm.eval.reports import success_table
from robofm.eval.rollouts import EpisodeResult


@pytest.mark.parametrize(
    ("successes", "n", "low", "high"),
    [
        (0, 10, 0.0, 0.27754),
        (10, 10, 0.72246, 1.0),
        (5, 10, 0.23659, 0.76341),
        (50, 100, 0.40383, 0.59617),
        (1, 6, 0.03005, 0.56351),
        (3, 7, 0.15822, 0.74955),
    ],
)
def test_wilson_matches_known_values(successes, n, low, high):
    lo, hi = wilson_interval(successes, n)
    assert lo == pytest.approx(low, abs=1e-4) and hi == pytest.approx(high, abs=1e-4)
    assert 0.0 <= lo <= successes / n <= hi <= 1.0


def test_wilson_edges_symmetry_and_width():
    assert wilson_interval(0, 0) == (0.0, 1.0)
    assert wilson_interval(0, 7)[0] == 0.0 and wilson_interval(7, 7)[1] == 1.0  # exact ends
    lo, hi = wilson_interval(2, 9)
    lo2, hi2 = wilson_interval(7, 9)
    assert lo == pytest.approx(1 - hi2, abs=1e-12) and hi == pytest.approx(1 - lo2, abs=1e-12)
    lo99, hi99 = wilson_interval(5, 10, z=2.5758)  # 99% is wider than 95%
    assert lo99 < 0.23659 and hi99 > 0.76341
    assert wilson_interval(500, 1000)[1] - wilson_interval(500, 1000)[0] < 0.07  # narrows with n
    with pytest.raises(ValueError):
        wilson_interval(11, 10)


def _ep(task, split, success, steps, latency, seed=0):
    return EpisodeResult(task, split, seed, success, steps, "pick up the red cube", latency)


@pytest.fixture
def results():
    return [
        _ep("lift", "train", True, 10, [1.0, 2.0]),
        _ep("lift", "novel_object", False, 50, [100.0]),
        _ep("lift", "train", True, 20, [3.0]),
        _ep("pick_place", "train", False, 90, [0.5, 0.5]),
        _ep("lift", "train", False, 50, [4.0, 5.0, 6.0]),
        _ep("lift", "train", True, 12, [7.0, 8.0, 9.0, 10.0]),
        _ep("pick_place", "train", True, 30, [1.5]),
    ]


def test_summarize_groups_by_task_and_split(results):
    s = summarize(results)
    assert list(s) == ["lift", "pick_place"] and list(s["lift"]) == ["train", "novel_object"]
    row = s["lift"]["train"]
    assert (row["n"], row["successes"], row["rate"]) == (4, 3, 0.75)
    assert (row["ci_low"], row["ci_high"]) == wilson_interval(3, 4)
    assert row["mean_steps"] == pytest.approx(23.0)
    assert row["latency_ms_mean"] == pytest.approx(5.5)  # over all 10 calls, not per episode
    assert row["latency_ms_p90"] == pytest.approx(9.1)
    other = s["lift"]["novel_object"]
    assert (other["n"], other["successes"], other["latency_ms_mean"]) == (1, 0, 100.0)
    assert s["pick_place"]["train"]["rate"] == 0.5
    assert s["pick_place"]["train"]["mean_steps"] == 60.0


def test_pool_tasks_recomputes_the_interval_from_counts(results):
    pooled = pool_tasks(summarize(results))
    assert set(pooled) == {"train", "novel_object"}
    train = pooled["train"]
    assert (train["n"], train["successes"]) == (6, 4)
    assert (train["ci_low"], train["ci_high"]) == wilson_interval(4, 6)
    assert train["mean_steps"] == pytest.approx((10 + 20 + 50 + 12 + 90 + 30) / 6)


def test_success_table_rows(results):
    table = success_table(summarize(results))
    lines = table.splitlines()
    lo, hi = wilson_interval(3, 4)
    assert f"| lift | train | 3/4 | 75.0% | [{100 * lo:.1f}%, {100 * hi:.1f}%] | 23.0 |" in table
    assert any(x.startswith("| lift | novel_object | 0/1 | 0.0% |") for x in lines)
    assert any(x.startswith("| pick_place | train | 1/2 | 50.0% |") for x in lines)
    assert any(x.startswith("| all | train | 4/6 | 66.7% |") for x in lines)
    assert len(lines) == 2 + 3 + 2  # header, 3 (task, split) rows, 2 pooled splits
    single = success_table(summarize([r for r in results if r.task == "lift"]))
    assert "| all |" not in single


def test_summary_without_latency_is_nan():
    s = summarize([_ep("lift", "train", True, 0, [])])
    assert math.isnan(s["lift"]["train"]["latency_ms_mean"])
    assert np.isnan(s["lift"]["train"]["latency_ms_p90"])
