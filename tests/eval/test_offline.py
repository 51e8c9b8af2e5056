"""`robofm eval offline`: the pure chunk metrics on arrays with known answers, then a tiny
trained checkpoint on held-out episodes of the toy dataset (metrics, report files, errors, CLI)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from robofm.cli import main
from robofm.data import open_dataset
from robofm.data.episode import Episode, InMemorySource
from robofm.data.lerobot_write import WriteOptions, write_lerobot
from robofm.errors import ConfigError
from robofm.eval.offline import (
    METRICS,
    chunk_metrics,
    executed_actions,
    held_out_episodes,
    offline_eval,
    write_offline_report,
)
from robofm.spaces import ActionSpace
from robofm.train.loop import train
from tests.train.conftest import toy_episodes, write_toy
from tests.train.test_loop import cfg_for

T, H = 10, 4  # synthetic episode length and chunk length


def ramp_truth() -> np.ndarray:
    """(T, 2): dim 0 rises by 1 per step, dim 1 stays at 0."""
    return np.stack([np.arange(T, dtype=np.float64), np.zeros(T)], axis=1)


def chunks_of(truth: np.ndarray, offset) -> np.ndarray:
    """(T, H, D): pred[t, k] = truth[min(t + k, T - 1)] + offset(t) (same offset for all k)."""
    idx = np.minimum(np.arange(T)[:, None] + np.arange(H)[None], T - 1)  # (T, H)
    return truth[idx] + np.asarray([offset(t) for t in range(T)])[:, None, None]


def test_a_perfect_prediction_scores_zero_error_and_the_true_smoothness():
    truth = ramp_truth()
    m = chunk_metrics(chunks_of(truth, lambda t: 0.0), truth, replan_every=2)
    assert set(m) == set(METRICS)
    np.testing.assert_array_equal(m["mae_first"], [0.0, 0.0])
    np.testing.assert_array_equal(m["mae_chunk"], [0.0, 0.0])
    np.testing.assert_array_equal(m["boundary_jump"], [1.0, 0.0])
    np.testing.assert_array_equal(m["within_step"], [1.0, 0.0])
    np.testing.assert_array_equal(m["true_step"], [1.0, 0.0])
    assert m["jump_ratio"][0] == 1.0 and np.isnan(m["jump_ratio"][1])


def test_a_constant_offset_per_chunk_gives_a_known_boundary_jump():
    truth = ramp_truth()
    # the chunk predicted at frame t is off by 0.25 * (t // 2): executed with R = 2, chunk j
    # (frames 2j, 2j + 1) carries offset 0.25 j, so each chunk start jumps by 0.25 extra
    pred = chunks_of(truth, lambda t: 0.25 * (t // 2))
    m = chunk_metrics(pred, truth, replan_every=2)
    offsets = 0.25 * (np.arange(T) // 2)  # (T,) error of every prediction made at t
    assert m["mae_first"][0] == pytest.approx(offsets.mean())  # 0.5
    valid_k = np.minimum(H, T - np.arange(T))  # (T,) chunk entries inside the episode
    assert m["mae_chunk"][0] == pytest.approx((valid_k * offsets).sum() / valid_k.sum())
    np.testing.assert_allclose(m["boundary_jump"], [1.25, 0.25])
    np.testing.assert_allclose(m["within_step"], [1.0, 0.0])
    np.testing.assert_allclose(m["true_step"], [1.0, 0.0])
    assert m["jump_ratio"][0] == pytest.approx(1.25) and m["jump_ratio"][1] == np.inf


def test_executed_sequence_replans_every_r_steps_and_never_past_the_chunk():
    pred = np.arange(T * H, dtype=np.float64).reshape(T, H, 1)  # pred[t, k] = 4 t + k
    np.testing.assert_array_equal(
        executed_actions(pred, 3)[:, 0], [0, 1, 2, 12, 13, 14, 24, 25, 26, 36]
    )
    # R = 10 > H = 4: a chunk runs out after 4 steps, so the policy replans every 4
    np.testing.assert_array_equal(
        executed_actions(pred, 10)[:, 0], [0, 1, 2, 3, 16, 17, 18, 19, 32, 33]
    )
    with pytest.raises(ConfigError, match="replan_every"):
        chunk_metrics(pred, pred[:, 0], replan_every=0)


def test_held_out_episodes_are_the_last_k_and_too_many_names_both_numbers():
    assert held_out_episodes(10, 3) == [7, 8, 9]
    assert held_out_episodes(10, 2, last=False) == [0, 1]
    with pytest.raises(ConfigError, match=r"--episodes 11 .* 10 episodes in dataset d/x"):
        held_out_episodes(10, 11, where="d/x")


# ---------------------------------------------------------------------------------------------
# A tiny checkpoint trained two steps on the toy dataset (10 episodes of 20 steps).


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[str, str]:
    root = tmp_path_factory.mktemp("offline")
    data = write_toy(root / "toy")
    result = train(cfg_for(data, root / "run", steps=2, ckpt_every=2))
    return str(result["checkpoint"]), data


@pytest.fixture(scope="module")
def result(trained) -> dict:
    ckpt, data = trained
    return offline_eval(ckpt, data, [8, 9], replan_every=3)


def test_metrics_cover_every_action_dim_and_match_the_predictions(result, trained):
    assert result["dims"] == ["a0", "a1", "a2"] and result["units"] == ["m", "m", "1"]
    source = open_dataset(trained[1])
    preds, truths = [], []
    for ep, pos in zip(result["per_episode"], [8, 9], strict=True):
        assert ep["predictions"].shape == (20, 4, 3) and ep["truth"].shape == (20, 3)
        np.testing.assert_array_equal(ep["truth"], source.episode(pos).actions)
        preds.append(ep["predictions"][:, 0])
        truths.append(ep["truth"])
    by_hand = np.abs(np.concatenate(preds) - np.concatenate(truths)).mean(0)  # (D,)
    got = np.array([result["per_dim"][d]["mae_first"] for d in result["dims"]])
    np.testing.assert_allclose(got, by_hand, rtol=1e-6)
    for name, row in result["per_dim"].items():
        assert set(row) == set(METRICS), name
        for k in METRICS:
            assert np.isfinite(row[k]) and row[k] >= 0, (name, k)
        assert row["jump_ratio"] == pytest.approx(row["boundary_jump"] / row["within_step"])
    overall = result["overall"]
    assert overall["jump_ratio"] == pytest.approx(overall["boundary_jump"] / overall["within_step"])
    # 2 episodes of 20 steps, replanning every 3: chunk starts at t = 3, 6, ..., 18
    assert result["counts"] == {
        "frames": 40,
        "chunk_pairs": 2 * (20 + 19 + 18 + 17),
        "boundary_steps": 12,
        "within_steps": 26,
    }


def test_report_files_are_written(result, tmp_path):
    paths = write_offline_report(result, tmp_path / "report")
    body = json.loads(paths["json"].read_text())
    assert body["episodes"] == [8, 9] and body["dataset"].endswith("toy")
    assert body["per_dim"]["a1"]["mae_chunk"] == pytest.approx(result["per_dim"]["a1"]["mae_chunk"])
    assert "predictions" not in body["per_episode"][0]
    table = paths["table"].read_text()
    assert table.startswith("| dim | unit | mae_first | mae_chunk | boundary_jump |")
    assert "| a2 | 1 |" in table and "| mean |" in table
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _wide_space() -> ActionSpace:
    return ActionSpace(
        robot="toy",
        names=("a0", "a1", "a2", "a3"),
        units=("m",) * 4,
        mode=("delta",) * 4,
        frame="end_effector",
        low=(-1.0,) * 4,
        high=(1.0,) * 4,
        control_hz=10.0,
        chunk_len=4,
    )


def test_a_dataset_that_does_not_fit_the_checkpoint_is_named(trained, tmp_path):
    ckpt, _ = trained
    eps = toy_episodes(n=2, length=6)
    for ep in eps:
        ep.actions = np.concatenate([ep.actions, np.zeros((6, 1), np.float32)], axis=1)
    wide = tmp_path / "wide"
    write_lerobot(
        InMemorySource(eps, fps=10.0, name="wide", action_space=_wide_space()),
        wide,
        WriteOptions(video=False),
    )
    with pytest.raises(ConfigError, match=rf"dataset {wide}: field 'action' has 4 dims"):
        offline_eval(ckpt, wide, [0])
    other_cam = [
        Episode(e.index, e.task, e.actions, e.states, e.timestamps, {"wrist": e.images["front"]})
        for e in toy_episodes(n=1, length=6)
    ]
    with pytest.raises(ConfigError, match=r"dataset wristonly: field 'cameras' lacks \['front'\]"):
        offline_eval(ckpt, InMemorySource(other_cam, fps=10.0, name="wristonly"), [0])


def test_cli_writes_the_report_and_rejects_too_many_episodes(trained, tmp_path, capsys):
    ckpt, data = trained
    out = tmp_path / "out"
    args = ["eval", "offline", ckpt, "--data", data, "--episodes", "1", "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "| a0 | m |" in printed and "20 frames of episodes [9]" in printed
    assert json.loads((out / "offline.json").read_text())["episodes"] == [9]
    assert (out / "predicted_vs_true.png").is_file() and (out / "offline.md").is_file()
    assert main(["eval", "offline", ckpt, "--data", data, "--episodes", "11"]) == 2
    assert "--episodes 11 is more than the 10 episodes" in capsys.readouterr().err
