"""Distillation: teacher labels on demonstrations, DAgger relabelling, the student checkpoint.

The teacher is a real (barely trained) `tiny` checkpoint with a regression head, recorded and
trained in the MuJoCo sim; the student is a fresh `tiny` model. Labels are checked against the
teacher's own `Policy.infer` on the same raw observations, so a wrong image transform, state
normalisation or history would fail here.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from robofm.deploy import distill as D
from robofm.errors import ConfigError
from robofm.policy import Policy


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    from robofm.sim.record import smoke_checkpoint

    root = tmp_path_factory.mktemp("distill")
    ckpt = smoke_checkpoint(root, episodes=4, steps=20, head="regression")
    return ckpt, root / "lift"


def _cfg(teacher, out, **kw) -> D.DistillConfig:
    ckpt, data = teacher
    base = dict(
        teacher=str(ckpt),
        data=(str(data),),
        out_dir=str(out),
        student="tiny",
        student_head="regression",
        student_pretrained=False,
        steps=150,
        dagger_rounds=0,
        batch_size=16,
        lr=3e-3,
        warmup_steps=10,
        val_episodes=1,
        eval_every=50,
    )
    base.update(kw)
    return D.DistillConfig(**base)


def test_distillation_lowers_student_error_on_held_out_states(teacher, tmp_path):
    report = D.distill(_cfg(teacher, tmp_path))
    held = report["held_out"]
    init, final = held[0], held[-1]
    assert init["when"] == "init" and final["when"] == "after demos"
    assert init["rows"] == final["rows"] == report["val_rows"] > 0
    # matching the teacher's chunks brings the held-out error well down from a fresh student
    assert final["mae_norm"] < 0.6 * init["mae_norm"], (init["mae_norm"], final["mae_norm"])
    assert len(report["loss"]) == 150
    assert (tmp_path / "distill.png").stat().st_size > 0
    body = json.loads((tmp_path / "distill.json").read_text())
    assert body["held_out"][-1]["mae_norm"] == pytest.approx(final["mae_norm"])

    # the student is a normal checkpoint with the teacher's contract and stats
    student = Policy.from_checkpoint(report["student"]["path"])
    t = Policy.from_checkpoint(teacher[0])
    assert student.spaces.action.to_dict() == t.spaces.action.to_dict()
    assert student.normalizer.stats_sha256 == t.normalizer.stats_sha256
    obs = {
        "images": {c: np.zeros((32, 32, 3), np.uint8) for c in t.cameras},
        "state": np.zeros(t.state_dim, np.float32),
        "prompt": "pick up the red cube",
    }
    assert student.infer(obs)["actions"].shape == t.infer(obs)["actions"].shape


def test_labels_are_the_teachers_own_actions(teacher):
    """Buffer rows labelled in batches give what `Policy.infer` gives on the raw observation."""
    from robofm.sim.env import TabletopEnv

    policy = Policy.from_checkpoint(teacher[0])
    env = TabletopEnv(task="lift", split="train", image_size=32)
    raw, states = [], []
    try:
        obs, _ = env.reset(seed=5)
        for _ in range(6):
            raw.append(obs)
            states.append(obs["state"])
            obs, *_ = env.step(np.array([0.01, -0.01, 0.0, 0.5], np.float32))
    finally:
        env.close()
    episode = {
        "images": {c: np.stack([o["images"][c] for o in raw]) for c in policy.cameras},
        "state": policy.normalizer.normalize(np.stack(states).astype(np.float32), D.STATE_KEY),
        "prompt": raw[0]["prompt"],
    }
    buf = D._empty_buffer(policy.cameras, 32, policy.state_dim, 4, 4)
    rows = D._append(buf, [episode], origin=1)
    D.label(policy.model, buf, rows, policy.robot, batch=4, seed=0)
    labels = policy.normalizer.unnormalize(buf.labels.reshape(-1, 4), D.ACTION_KEY)
    labels = policy.spaces.action.clip(labels.reshape(len(rows), 4, 4))
    for i, o in enumerate(raw):
        policy.reset()
        np.testing.assert_allclose(labels[i], policy.infer(o)["actions"], atol=1e-5)
    assert list(buf.origin) == [1] * 6 and list(buf.start) == [0] * 6


def test_dagger_round_relabels_the_students_own_states(teacher, tmp_path):
    report = D.distill(
        _cfg(teacher, tmp_path, steps=30, dagger_rounds=1, dagger_steps=10, rollouts=2, beta=0.0)
    )
    (r,) = report["rounds"]
    assert r["episodes"] == 2 and r["beta"] == 0.0
    assert r["new_states"] > 2  # every visited state, not one per episode
    assert r["buffer_rows"] == report["demo_rows"] + r["new_states"]
    for key in ("on_policy_error_before_training", "on_policy_error_after_training"):
        assert r[key]["rows"] == r["new_states"] and r[key]["mae_norm"] > 0
    assert len(report["loss"]) == 40
    assert [h["when"] for h in report["held_out"]][-1] == "after round 1"


def test_history_repeats_the_episode_start():
    buf = D._empty_buffer(("front",), 4, 2, 1, 1)
    eps = [
        {
            "images": {"front": np.zeros((n, 4, 4, 3), np.uint8)},
            "state": np.zeros((n, 2)),
            "prompt": p,
        }
        for n, p in ((3, "a"), (2, "b"))
    ]
    D._append(buf, eps, origin=0)
    assert buf.history(np.array([0, 2, 3, 4]), 2).tolist() == [[0, 0], [1, 2], [3, 3], [3, 4]]
    assert [buf.prompts[i] for i in buf.prompt] == ["a", "a", "a", "b", "b"]


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("data", (), "no demonstration data"),
        ("beta", 1.5, "beta"),
        ("steps", 0, "steps"),
        ("rollouts", 0, "rollouts"),
    ],
)
def test_bad_config_names_the_field(teacher, tmp_path, field, value, match):
    kw = {field: value}
    if field == "rollouts":
        kw["dagger_rounds"] = 1
    with pytest.raises(ConfigError, match=match):
        D.distill(_cfg(teacher, tmp_path, **kw))


def test_missing_teacher_camera_is_named(teacher):
    from robofm.data import open_dataset

    src = open_dataset(teacher[1])
    assert set(src.cameras) >= {"front", "wrist"}
    with pytest.raises(ConfigError, match="camera"):
        D.load_demonstrations((str(teacher[1]),), None, ("front", "top"), 32, 1)


def test_closed_loop_comparison_reports_both_checkpoints(teacher, tmp_path):
    from robofm.deploy.compare import compare_checkpoints, format_comparison
    from robofm.deploy.quantize import quantize_checkpoint

    int8 = quantize_checkpoint(teacher[0], tmp_path / "int8", min_weights=0)
    splits = ("train", "novel_object")
    rows = compare_checkpoints(
        {"float": teacher[0], "int8": int8},
        splits=splits,
        episodes=2,
        workers=1,
        image_size=32,
        out_dir=tmp_path / "cmp",
    )
    assert [r["name"] for r in rows] == ["float", "int8"]
    for r in rows:
        for s in splits:
            assert r[s]["n"] == 2 and 0 <= r[s]["successes"] <= 2
            assert r[s]["ci_low"] <= r[s]["rate"] <= r[s]["ci_high"]
        assert 0 < r["latency_ms_median"] <= r["latency_ms_p90"]
        assert r["rate_hz_chunked"] == pytest.approx(4 * 1000 / r["latency_ms_p90"], rel=0.01)
        assert r["unseen_avg"] == r["novel_object"]["rate"]
    assert rows[1]["quantized"] and not rows[0]["quantized"]
    assert rows[0]["params_M"] == rows[1]["params_M"]  # INT8 scales are not parameters
    assert rows[1]["disk_MB"] < rows[0]["disk_MB"]
    body = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert [r["name"] for r in body["rows"]] == ["float", "int8"]
    assert (tmp_path / "cmp" / "comparison.png").stat().st_size > 0
    table = format_comparison(rows, splits)
    assert table.count("\n") == 3 and "| int8 |" in table


def test_cli_distills_and_compares(teacher, tmp_path, capsys):
    from robofm.cli import main

    ckpt, data = teacher
    out = tmp_path / "d"
    argv = ["deploy", "distill", str(ckpt), "--data", str(data), "--out", str(out)]
    argv += ["--student", "tiny", "--student-head", "regression", "--no-pretrained"]
    argv += ["--steps", "20", "--rounds", "0", "--val-episodes", "1", "--batch-size", "8"]
    argv += ["--eval-episodes", "1", "--splits", "train", "--workers", "1"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "held-out" in text and "| teacher |" in text and "| student |" in text
    assert Policy.from_checkpoint(out / "student").model.cfg.head == "regression"
    body = json.loads((out / "comparison.json").read_text())
    assert [r["name"] for r in body["rows"]] == ["teacher", "student"]
    assert json.loads((out / "distill.json").read_text())["config"]["steps"] == 20


def test_cli_bad_student_preset_is_named(teacher, tmp_path, capsys):
    from robofm.cli import main

    ckpt, data = teacher
    argv = ["deploy", "distill", str(ckpt), "--data", str(data), "--student", "huge"]
    assert main([*argv, "--out", str(tmp_path / "x")]) != 0
    assert "huge" in capsys.readouterr().err
    assert not (tmp_path / "x" / "student").exists()


def test_dagger_refuses_a_teacher_the_sim_cannot_host(teacher, tmp_path):
    import shutil

    ckpt = tmp_path / "teacher"
    shutil.copytree(teacher[0], ckpt)
    body = json.loads((ckpt / "action_space.json").read_text())
    body["action"]["units"][0] = "cm"  # a robot whose dx is in centimetres
    (ckpt / "action_space.json").write_text(json.dumps(body))
    cfg = _cfg((ckpt, teacher[1]), tmp_path / "out", dagger_rounds=1, rollouts=1)
    with pytest.raises(ConfigError, match="--rounds 0") as err:
        D.distill(cfg)
    assert "units" in str(err.value)
    assert not (tmp_path / "out" / "student").exists()


def test_demonstrations_are_checked_before_decoding(teacher):
    policy = Policy.from_checkpoint(teacher[0])
    args = ((str(teacher[1]),), policy.normalizer, policy.cameras, 32, 0)
    with pytest.raises(ConfigError, match="--max-episodes"):
        D.load_demonstrations(*args, max_bytes=1000)
    with pytest.raises(ConfigError, match="episode 0 has state dim 4; the teacher's robot has 7"):
        D.load_demonstrations(*args, state_dim=7)
    eps = D.load_demonstrations(*args, state_dim=4)
    assert len(eps) == 4 and eps[0]["images"]["front"].shape[1:] == (32, 32, 3)
