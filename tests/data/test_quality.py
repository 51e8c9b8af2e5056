"""The data-quality report: each check fires on a dataset with its defect, naming the episodes
(and steps/dims) at fault, and stays quiet on a clean one."""

from __future__ import annotations

import json

import matplotlib.image
import numpy as np
import pytest

from robofm.data.episode import Episode, InMemorySource
from robofm.data.quality import (
    CHECKS,
    QualityConfig,
    QualityReport,
    check_dataset,
    format_report,
    write_report,
)
from robofm.spaces import ActionSpace

FPS = 10.0
T = 60
PHRASES = [
    "pick up the red block",
    "grab the red block",
    "please lift the red block",
    "Grasp the red cube.",
]
SPACE = ActionSpace(
    robot="test_arm",
    names=("dx", "dy", "dz", "gripper"),
    units=("m", "m", "m", "1"),
    mode=("absolute", "absolute", "absolute", "absolute"),
    frame="end_effector",
    low=(-1.0, -1.0, -1.0, 0.0),
    high=(1.0, 1.0, 1.0, 1.0),
    control_hz=FPS,
    chunk_len=4,
    gripper_dims=(3,),
    gripper_closed=0.0,
    gripper_open=1.0,
)


def make_episode(i: int, t: int = T, task: str | None = None) -> Episode:
    """A smooth, moving, well-formed demonstration with its own scene colour."""
    rng = np.random.default_rng(100 + i)
    steps = np.arange(t)
    phase = rng.uniform(0, 2 * np.pi, 3)
    arm = 0.5 * np.sin(2 * np.pi * steps[:, None] / T + phase) + rng.normal(0, 0.01, (t, 3))
    gripper = (steps < t // 2).astype(np.float64)[:, None]  # open, then closed
    actions = np.concatenate([arm, gripper], axis=1).astype(np.float32)  # (T, 4)
    states = (0.3 * np.cos(2 * np.pi * steps[:, None] / T + phase)).astype(np.float32)  # (T, 3)
    base = rng.integers(0, 256, 3)
    img = np.clip(base + rng.normal(0, 10, (t, 24, 32, 3)), 0, 255).astype(np.uint8)
    extras = {"reward": np.zeros(t, np.float32), "note": np.array(["x"] * t)}
    return Episode(
        index=i,
        task=PHRASES[i % len(PHRASES)] if task is None else task,
        actions=actions,
        states=states,
        timestamps=steps / FPS,
        images={"front": img},
        extras=extras,
    )


def make_source(n: int = 12, space: ActionSpace | None = SPACE, **kw) -> InMemorySource:
    return InMemorySource([make_episode(i) for i in range(n)], fps=FPS, action_space=space, **kw)


def episodes_of(report: QualityReport, check: str, severity: str | None = None) -> set[int]:
    return {
        e
        for i in report.by_check(check)
        if severity is None or i.severity == severity
        for e in i.episodes
    }


def test_clean_dataset_has_no_errors_or_warnings():
    report = check_dataset(make_source())
    bad = [i for i in report.issues if i.severity != "info"]
    assert bad == [], bad
    assert not report.blocking
    assert report.summary["counts"]["error"] == 0
    assert set(report.summary["checks"]) == set(CHECKS)
    assert report.summary["lengths"]["median"] == T
    assert report.summary["language"]["n_tasks"] == 1  # all PHRASES are one task
    assert report.summary["language"]["top_template_share"] == pytest.approx(0.25)
    assert report.summary["visual"]["diversity"] > 0.05
    assert report.summary["gripper"]["episodes_actuated"] == 12


def test_missing_instructions_are_blocking_errors():
    src = make_source()
    src.episodes[1].task = ""
    src.episodes[6].task = "   "
    src.episodes[9].task = "None"
    report = check_dataset(src)
    assert episodes_of(report, "instructions", "error") == {1, 6, 9}
    assert report.blocking
    assert report.summary["checks"]["instructions"] == "fail"


def test_single_phrasing_task_is_flagged_and_named():
    eps = [make_episode(i, task="open the drawer") for i in range(6)]  # one phrasing x6
    eps += [make_episode(i) for i in range(6, 12)]  # varied phrasings of another task
    report = check_dataset(InMemorySource(eps, fps=FPS, action_space=SPACE))
    assert episodes_of(report, "phrasing") == set(range(6))
    (issue,) = report.by_check("phrasing")
    assert "open the drawer" in issue.message and "100%" in issue.message
    assert report.summary["language"]["n_tasks"] == 2
    assert not report.blocking  # phrasing is a warning, not a blocker


def test_non_finite_values_name_episode_field_and_step():
    src = make_source()
    src.episodes[2].actions[5, 1] = np.nan
    src.episodes[3].states[40, 0] = np.inf
    src.episodes[4].extras["reward"][7] = np.nan
    report = check_dataset(src)
    msgs = {i.episodes[0]: i.message for i in report.by_check("non_finite")}
    assert set(msgs) == {2, 3, 4}
    assert "'actions'" in msgs[2] and "step 5" in msgs[2] and "dim 1" in msgs[2]
    assert "'states'" in msgs[3] and "step 40" in msgs[3]
    assert "'extras.reward'" in msgs[4] and "step 7" in msgs[4]
    assert report.blocking
    json.loads(report.to_json())  # strict JSON even with NaN in the data


def test_blocking_is_configurable():
    src = make_source()
    src.episodes[2].actions[5, 1] = np.nan
    assert check_dataset(src).blocking
    relaxed = check_dataset(src, QualityConfig(blocking=()))
    assert not relaxed.blocking
    assert relaxed.summary["checks"]["non_finite"] == "error"
    with pytest.raises(ValueError, match="unknown check"):
        check_dataset(src, QualityConfig(blocking=("nan",)))


def test_action_outlier_names_episode_step_and_dim():
    src = make_source()
    src.episodes[5].actions[17, 1] = 9.0
    report = check_dataset(src)
    (issue,) = report.by_check("action_outliers")
    assert issue.episodes == [5]
    assert "step 17 dim 1" in issue.message
    assert 5 in episodes_of(report, "action_bounds")


def test_action_bounds_flag_values_outside_the_space():
    src = make_source()
    src.episodes[2].actions[10, 0] = 1.3  # outside [-1, 1], but not a robust-z outlier
    report = check_dataset(src)
    assert episodes_of(report, "action_bounds") == {2}
    assert "step 10 dim 0" in report.by_check("action_bounds")[0].message
    assert report.by_check("action_outliers") == []


def test_idle_stretch_is_found_with_its_start():
    src = make_source()
    ep = src.episodes[4]
    ep.actions[10:50] = ep.actions[10]
    ep.states[10:50] = ep.states[10]
    report = check_dataset(src)
    (issue,) = report.by_check("idle")
    assert issue.episodes == [4]
    assert "longest 39 steps from step 10" in issue.message
    short = check_dataset(src, QualityConfig(idle_min_steps=45))
    assert short.by_check("idle") == []


def test_timestamp_defects():
    src = make_source()
    src.episodes[3].timestamps[20] = src.episodes[3].timestamps[19] - 0.05  # goes backwards
    src.episodes[6].timestamps[30:] += 0.5  # dropped frames after step 29
    src.episodes[8].timestamps = np.arange(T) * 0.12  # recorded at ~8.3 Hz, not 10
    report = check_dataset(src)
    errors = report.by_check("timestamps")
    assert episodes_of(report, "timestamps", "error") == {3}
    assert any("step 20" in i.message for i in errors if i.episodes == [3])
    gap = [i for i in errors if i.episodes == [6]]
    assert gap and "after step 29" in gap[0].message
    fps = [i for i in errors if i.episodes == [8]]
    assert fps and "8.33 Hz" in fps[0].message
    assert not report.blocking  # timestamp errors are not blocking by default


def test_short_and_zero_length_episodes():
    eps = [make_episode(i) for i in range(10)]
    eps[0] = make_episode(0, t=5)
    src = InMemorySource(eps, fps=FPS, action_space=SPACE)
    empty = make_episode(3, t=0)
    src.episodes[3] = empty  # a reader that yields an empty episode
    report = check_dataset(src)
    assert episodes_of(report, "episode_length") == {0}
    assert episodes_of(report, "malformed", "error") == {3}
    assert "zero steps" in report.by_check("malformed")[0].message
    assert report.blocking
    assert report.summary["episodes_checked"] == 9


def test_action_dim_mismatch_is_malformed():
    eps = [make_episode(i) for i in range(6)]
    eps[5].actions = np.zeros((T, 5), np.float32)
    report = check_dataset(InMemorySource(eps, fps=FPS, action_space=SPACE))
    assert episodes_of(report, "malformed") == {5}
    eps[0].actions = np.zeros((T, 5), np.float32)  # a bad first episode is not the reference
    report = check_dataset(InMemorySource(eps, fps=FPS, action_space=SPACE))
    assert episodes_of(report, "malformed") == {0, 5}
    assert "expected (4, 3)" in report.by_check("malformed")[0].message


def test_duplicate_recordings():
    src = make_source()
    src.episodes[9].actions = src.episodes[4].actions.copy()
    src.episodes[7].images = {"front": src.episodes[2].images["front"].copy()}
    report = check_dataset(src)
    assert episodes_of(report, "duplicates") == {4, 9}
    assert episodes_of(report, "visual_diversity") == {2, 7}
    assert report.summary["visual"]["near_duplicate_groups"] == 1


def test_low_visual_diversity():
    eps = [make_episode(i) for i in range(8)]
    for ep in eps:
        ep.images = {"front": eps[0].images["front"]}
    report = check_dataset(InMemorySource(eps, fps=FPS, action_space=SPACE))
    msgs = [i.message for i in report.by_check("visual_diversity")]
    assert any("barely vary" in m for m in msgs)
    assert episodes_of(report, "visual_diversity") == set(range(8))  # one near-duplicate group
    assert report.summary["visual"]["diversity"] < 1e-6


def test_visual_stats_read_only_sampled_frames():
    class CountingSource(InMemorySource):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.calls: list[int] = []

        def frames(self, i, cam, steps):
            self.calls.append(len(steps))
            return super().frames(i, cam, steps)

        def episode(self, i, *, images=False):
            assert not images, "the quality check must not load whole image sequences"
            return super().episode(i, images=images)

    src = CountingSource([make_episode(i) for i in range(6)], fps=FPS, action_space=SPACE)
    check_dataset(src, QualityConfig(frames_per_episode=2))
    assert src.calls == [2] * 6


def test_gripper_range_and_actuation():
    src = make_source()
    src.episodes[2].actions[3, 3] = 1.5
    report = check_dataset(src)
    assert episodes_of(report, "gripper") == {2}
    assert "step 3" in report.by_check("gripper")[0].message

    never_closes = make_source()
    for ep in never_closes.episodes:
        ep.actions[:, 3] = 1.0
    msgs = [i.message for i in check_dataset(never_closes).by_check("gripper")]
    assert any("never closes" in m for m in msgs)

    no_space = check_dataset(make_source(space=None))
    (note,) = no_space.by_check("gripper")
    assert note.severity == "info" and "[3]" in note.message  # binary dim 3 suggested


def test_reader_skips_are_reported():
    src = make_source()
    src.skipped.append("data/chunk-000.parquet: episode 12: truncated file")
    report = check_dataset(src)
    (issue,) = report.by_check("skipped")
    assert "episode 12: truncated" in issue.message


def test_second_pass_without_cache_and_small_sample_agree():
    src = make_source()
    src.episodes[5].actions[17, 1] = 9.0
    cached = check_dataset(src)
    reread = check_dataset(src, QualityConfig(cache_lowdim_mb=0, stats_sample_rows=200))
    assert episodes_of(cached, "action_outliers") == episodes_of(reread, "action_outliers") == {5}
    assert "step 17 dim 1" in reread.by_check("action_outliers")[0].message
    assert reread.summary["checks"] == cached.summary["checks"]


def test_issue_cap_folds_the_rest():
    src = make_source()
    for ep in src.episodes:
        ep.task = ""
    report = check_dataset(src, QualityConfig(max_issues_per_check=3))
    issues = report.by_check("instructions")
    assert len(issues) == 4
    assert "9 more" in issues[-1].message
    assert episodes_of(report, "instructions") == set(range(12))


def test_skip_checks():
    src = make_source()
    src.episodes[5].actions[17, 1] = 9.0
    report = check_dataset(src, QualityConfig(skip=("action_outliers", "visual_diversity")))
    assert report.by_check("action_outliers") == []
    assert report.summary["checks"]["action_outliers"] == "skipped"
    assert report.summary["visual"] == {}


def test_json_round_trip_and_plots(tmp_path):
    src = make_source()
    src.episodes[2].actions[5, 1] = np.nan
    report = check_dataset(src)
    paths = write_report(report, tmp_path / "report")
    assert set(paths) == {"json", "action_hist", "episode_lengths", "visual_scatter"}
    loaded = json.loads(paths["json"].read_text())
    assert loaded["blocking"] is True
    assert loaded["summary"]["episodes"] == 12
    assert any(i["check"] == "non_finite" and i["episodes"] == [2] for i in loaded["issues"])
    again = QualityReport.from_dict(loaded)
    assert again.issues == report.issues and again.blocking
    hist = loaded["data"]["action_hist"]
    assert sum(hist["counts"][0]) == 12 * T  # dim 0 has no NaN: every value counted
    assert sum(hist["counts"][1]) == 12 * T - 1  # the NaN is left out
    for name in ("action_hist", "episode_lengths", "visual_scatter"):
        assert paths[name].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        img = matplotlib.image.imread(paths[name])
        assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100


def test_format_report_names_offenders():
    src = make_source()
    src.episodes[2].actions[5, 1] = np.nan
    src.episodes[4].task = ""
    text = format_report(check_dataset(src))
    assert "BLOCKING" in text
    assert "[   FAIL] non_finite" in text and "[   FAIL] instructions" in text
    assert "episode 2: 'actions'" in text and "episode 4: instruction is empty" in text
    assert "[     OK] idle" in text
    clean = format_report(check_dataset(make_source()))
    assert "not blocking" in clean and "FAIL" not in clean
