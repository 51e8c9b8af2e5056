"""Streaming stats, the quantile sketch, normalisers and stats files."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from robofm.data.episode import DatasetError, Episode, InMemorySource
from robofm.data.stats import (
    QUANTILES,
    Normalizer,
    RunningStats,
    StatsWarning,
    compute_stats,
    load_normalizer,
    load_stats,
    pad_feature_stats,
    save_stats,
)

FIXTURE = "lerobot/synth_video_v3"


def skewed(n: int, seed: int = 0) -> np.ndarray:
    """(n, 5) samples from skewed / multimodal distributions with offsets far from zero."""
    rng = np.random.default_rng(seed)
    return np.stack(
        [
            rng.lognormal(0.0, 1.0, n),
            100.0 + rng.exponential(2.0, n),
            -rng.gamma(0.5, 3.0, n),
            np.where(rng.random(n) < 0.8, rng.normal(0, 0.1, n), rng.normal(5, 1, n)),
            rng.beta(0.3, 4.0, n) * 1e-3,
        ],
        axis=1,
    )


def feed(stats: RunningStats, x: np.ndarray, seed: int = 1, max_chunk: int = 40) -> RunningStats:
    """Update with x split into random small chunks (including empty ones)."""
    rng = np.random.default_rng(seed)
    i = 0
    while i < len(x):
        k = int(rng.integers(0, max_chunk))
        stats.update(x[i : i + k])
        i += k
    return stats


def assert_moments(result: dict, x: np.ndarray) -> None:
    np.testing.assert_allclose(result["mean"], x.mean(0), rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(result["std"], x.std(0), rtol=1e-6)
    np.testing.assert_array_equal(result["min"], x.min(0))
    np.testing.assert_array_equal(result["max"], x.max(0))
    assert result["count"].tolist() == [len(x)]


def test_moments_match_numpy_in_small_chunks_and_merged_halves():
    x = skewed(20_000)
    assert_moments(feed(RunningStats(), x).result(), x)
    first, second = feed(RunningStats(), x[:7_000]), feed(RunningStats(), x[7_000:], seed=2)
    assert_moments(first.merge(second).result(), x)
    assert_moments(RunningStats().merge(second).result(), x[7_000:])  # into an empty one
    assert second.count == 13_000  # merge leaves `other` unchanged


def test_result_keys_are_lerobots():
    result = RunningStats().update(skewed(100)).result()
    assert set(result) == {"mean", "std", "min", "max", "count", *QUANTILES}
    assert result["count"].shape == (1,) and result["q50"].shape == (5,)


@pytest.mark.parametrize("n_bins", [64, 2048])
@pytest.mark.parametrize("order", ["shuffled", "ascending", "descending"])
def test_quantiles_within_documented_bound(n_bins, order):
    x = skewed(100_000)
    if order != "shuffled":  # the range keeps growing: the sketch re-bins many times
        x = np.sort(x, axis=0)[:: 1 if order == "ascending" else -1]
    result = feed(RunningStats(n_bins=n_bins), x, max_chunk=2_000).result()
    span = x.max(0) - x.min(0)
    for name, q in QUANTILES.items():
        error = np.abs(result[name] - np.quantile(x, q, axis=0))
        assert (error < 2 * span / (n_bins - 2)).all(), (name, error / span)
        if n_bins == 2048:
            assert (error < 0.01 * span).all()


def test_merged_sketches_equal_one_stream():
    x = skewed(30_000)
    x[:15_000] *= 1e-3  # halves with very different ranges and bin widths
    whole = feed(RunningStats(), x, max_chunk=500).result()
    merged = RunningStats().update(x[:15_000]).merge(RunningStats().update(x[15_000:])).result()
    for name in QUANTILES:
        np.testing.assert_allclose(merged[name], whole[name], rtol=1e-12)


def test_constant_and_tiny_ranges_are_exact():
    x = np.full((1_000, 2), 3.25)
    x[:, 1] = 1e6 + np.linspace(0, 1e-4, 1_000)
    result = RunningStats().update(x).result()
    for name, q in QUANTILES.items():
        np.testing.assert_allclose(result[name], np.quantile(x, q, axis=0), rtol=0, atol=1e-6)


def test_memory_does_not_grow_with_samples():
    small = RunningStats(n_bins=256).update(skewed(1_000))
    big = feed(RunningStats(n_bins=256), skewed(100_000, seed=3), max_chunk=5_000)
    assert small.nbytes == big.nbytes
    assert big.nbytes <= 5 * 256 * 8 + 1024


def test_update_rejects_bad_samples():
    stats = RunningStats().update(np.zeros((3, 2)))
    with pytest.raises(ValueError, match="3 dimensions, expected 2"):
        stats.update(np.zeros((3, 3)))
    with pytest.raises(ValueError, match=r"dimension\(s\) \[1\]"):
        stats.update(np.array([[0.0, np.nan]]))
    with pytest.raises(ValueError, match="no samples"):
        RunningStats().result()


# ---------------------------------------------------------------------------------------------
# compute_stats


def make_source(n_episodes: int = 3, state_dim: int = 3) -> InMemorySource:
    rng = np.random.default_rng(0)
    episodes = []
    for i in range(n_episodes):
        t = 20 + 7 * i
        episodes.append(
            Episode(
                index=i,
                task="pick",
                actions=rng.normal(i, 1.0, (t, 4)).astype(np.float32),
                states=rng.exponential(1.0, (t, state_dim)).astype(np.float32),
                timestamps=np.arange(t) / 10.0,
                images={"wrist": rng.integers(0, 256, (t, 12, 16, 3), dtype=np.uint8)},
            )
        )
    return InMemorySource(episodes, fps=10)


def test_compute_stats_matches_numpy_over_all_episodes():
    source = make_source()
    stats = compute_stats(source, image_sample_frames=5)
    actions = np.concatenate([ep.actions for ep in source.episodes]).astype(np.float64)
    states = np.concatenate([ep.states for ep in source.episodes]).astype(np.float64)
    assert_moments(stats["action"], actions)
    assert_moments(stats["observation.state"], states)
    np.testing.assert_allclose(stats["action"]["q50"], np.median(actions, 0), atol=1e-2)

    image = stats["observation.images.wrist"]
    frames = np.concatenate(
        [
            ep.images["wrist"][np.round(np.linspace(0, ep.length - 1, 5)).astype(int)]
            for ep in source.episodes
        ]
    )  # (15, H, W, 3)
    pixels = frames.reshape(-1, 3) / 255.0
    assert image["mean"].shape == (3, 1, 1) and image["q99"].shape == (3, 1, 1)
    np.testing.assert_allclose(image["mean"].ravel(), pixels.mean(0), rtol=1e-9)
    np.testing.assert_allclose(image["std"].ravel(), pixels.std(0), rtol=1e-9)
    assert image["count"].tolist() == [15]  # frames, as LeRobot counts image samples
    assert image["min"].min() >= 0.0 and image["max"].max() <= 1.0


def test_compute_stats_shows_progress(monkeypatch, capsys):
    monkeypatch.setenv("ROBOFM_PROGRESS", "1")
    compute_stats(make_source(), image_sample_frames=0)
    err = capsys.readouterr().err
    assert "stats memory" in err and "3/3" in err


def test_compute_stats_skips_missing_state_and_images_when_asked():
    stats = compute_stats(make_source(state_dim=0), image_sample_frames=0)
    assert set(stats) == {"action"}


def test_compute_stats_names_episode_and_feature_on_bad_data():
    source = make_source()
    source.episodes[1].actions[3, 2] = np.nan
    with pytest.raises(DatasetError, match=r"episode 1: feature 'action'.*\[2\]"):
        compute_stats(source, image_sample_frames=0)
    with pytest.raises(DatasetError, match=r"no feature 'observation\.velocity'"):
        compute_stats(make_source(), keys=("observation.velocity",), image_sample_frames=0)


# ---------------------------------------------------------------------------------------------
# Normalizer


def feature_stats(x: np.ndarray) -> dict:
    return RunningStats().update(x).result()


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("mode", ["mean_std", "min_max", "quantile"])
def test_normalize_round_trip(mode, backend):
    x = skewed(5_000)
    norm = Normalizer({"action": feature_stats(x)}, mode)
    data = x.astype(np.float32) if backend == "numpy" else torch.tensor(x, dtype=torch.float32)
    y = norm.normalize(data)
    assert type(y) is type(data) and y.dtype == data.dtype and y.shape == data.shape
    back = norm.unnormalize(y)
    np.testing.assert_allclose(np.asarray(back), x, rtol=1e-5, atol=1e-5 * np.abs(x).max())
    y = np.asarray(y, dtype=np.float64)
    if mode == "mean_std":
        np.testing.assert_allclose(y.mean(0), 0, atol=1e-3)
        np.testing.assert_allclose(y.std(0), 1, atol=1e-3)
    elif mode == "min_max":
        np.testing.assert_allclose(y.min(0), -1, atol=1e-5)
        np.testing.assert_allclose(y.max(0), 1, atol=1e-5)
    else:
        ends = norm.normalize(np.stack([norm.stats["action"]["q01"], norm.stats["action"]["q99"]]))
        np.testing.assert_allclose(ends, [[-1] * 5, [1] * 5], atol=1e-12)
        # ~1% beyond each end where the density is moderate (dims 2 and 4 pile up near 0,
        # within one sketch bin of q99 / q01)
        smooth = [0, 1, 3]
        np.testing.assert_allclose((y[:, smooth] < -1).mean(0), 0.01, atol=2e-3)
        np.testing.assert_allclose((y[:, smooth] > 1).mean(0), 0.01, atol=2e-3)


def test_quantile_clip_bounds_normalised_values():
    x = skewed(2_000)
    norm = Normalizer({"action": feature_stats(x)}, "quantile", clip=True)
    y = norm.normalize(x)
    assert y.min() == -1.0 and y.max() == 1.0


def test_padded_dims_are_masked_and_silent():
    stats, mask = pad_feature_stats(feature_stats(skewed(1_000)[:, :3]), 5)
    assert mask.tolist() == [True, True, True, False, False]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a padded (std 0) dimension must not warn
        norm = Normalizer({"action": stats}, "mean_std", masks={"action": mask})
    x = torch.randn(2, 7, 5) + 3.0
    y = norm.normalize(x)
    assert (y[..., 3:] == 0).all() and (y[..., :3] != 0).all()
    assert (norm.unnormalize(torch.ones(2, 7, 5))[..., 3:] == 0).all()
    with pytest.raises(ValueError, match="last dimension 3, its stats have 5"):
        norm.normalize(np.zeros((4, 3)))


def test_near_constant_dimension_warns_and_normalises_to_zero():
    x = skewed(1_000)
    x[:, 2] = 0.5
    with pytest.warns(StatsWarning, match="'action' dimension 2: std") as caught:
        norm = Normalizer({"action": feature_stats(x)}, "mean_std")
    assert len(caught) == 1
    y = norm.normalize(x + 1e-3)
    assert np.isfinite(y).all() and (y[:, 2] == 0).all()
    np.testing.assert_allclose(norm.unnormalize(y)[:, 2], 0.5)
    with pytest.warns(StatsWarning, match="'action' dimension 2: range"):
        Normalizer({"action": feature_stats(x)}, "min_max")


def test_unknown_mode_and_missing_quantiles_are_errors():
    stats = {k: v for k, v in feature_stats(skewed(100)).items() if not k.startswith("q")}
    with pytest.raises(ValueError, match="unknown normalisation mode"):
        Normalizer({"action": stats}, "zscore")
    with pytest.raises(ValueError, match="feature 'action': mode 'quantile' needs stat 'q01'"):
        Normalizer({"action": stats}, "quantile")


# ---------------------------------------------------------------------------------------------
# Files


def test_save_load_round_trip(tmp_path):
    stats = compute_stats(make_source(), image_sample_frames=2)
    save_stats(tmp_path / "stats.json", stats)
    body = json.loads((tmp_path / "stats.json").read_text())
    assert (body["format"], body["version"], body["mode"]) == ("robofm.stats", 1, None)
    loaded = load_stats(tmp_path / "stats.json")
    assert set(loaded) == set(stats)
    for feature, values in stats.items():
        for name, value in values.items():
            np.testing.assert_array_equal(loaded[feature][name], value)
    save_stats(tmp_path / "lerobot.json", stats, layout="lerobot")
    assert "format" not in json.loads((tmp_path / "lerobot.json").read_text())
    assert load_stats(tmp_path / "lerobot.json")["action"]["q99"].tolist() == (
        stats["action"]["q99"].tolist()
    )


def test_normalizer_save_load_gives_identical_outputs(tmp_path):
    stats, mask = pad_feature_stats(feature_stats(skewed(500)), 6)
    norm = Normalizer({"action": stats}, "quantile", masks={"action": mask}, clip=True)
    save_stats(tmp_path / "stats.json", norm)
    loaded = load_normalizer(tmp_path / "stats.json")
    assert (loaded.mode, loaded.clip, loaded.masks["action"].tolist()) == (
        "quantile",
        True,
        mask.tolist(),
    )
    assert loaded.stats_sha256 == norm.stats_sha256
    x = np.random.default_rng(0).normal(size=(10, 6)).astype(np.float32)
    np.testing.assert_array_equal(loaded.normalize(x), norm.normalize(x))
    np.testing.assert_array_equal(loaded.unnormalize(x), norm.unnormalize(x))


def good_body() -> dict:
    return {"action": {"mean": [0.0, 1.0], "std": [1.0, 2.0], "min": [-1.0, -2.0],
                       "max": [1.0, 3.0], "count": [10], "q01": [-0.9, -1.9]}}  # fmt: skip


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda b: b["action"].pop("std"), "feature 'action': missing stat 'std'"),
        (lambda b: b["action"]["min"].pop(), r"feature 'action': stat 'min' has shape \(1,\)"),
        (lambda b: b["action"]["q01"].append(0.0), r"stat 'q01' has shape \(3,\)"),
        (lambda b: b["action"]["mean"].__setitem__(1, float("nan")), "stat 'mean': non-finite"),
        (lambda b: b["action"]["max"].__setitem__(0, "1.0"), "stat 'max': expected .* numbers"),
        (lambda b: b["action"].__setitem__("count", [1, 2]), "stat 'count' must be one"),
        (lambda b: b.__setitem__("state", [1.0]), "feature 'state': expected an object"),
    ],
)
def test_malformed_stats_file_names_file_and_key(tmp_path, edit, message):
    body = good_body()
    edit(body)
    path = tmp_path / "stats.json"
    path.write_text(json.dumps(body))  # NaN is written as the bare token NaN
    with pytest.raises(DatasetError, match=message) as info:
        load_stats(path)
    assert str(path) in str(info.value)


def test_malformed_envelope_and_json(tmp_path):
    path = tmp_path / "stats.json"
    path.write_text('{"action": {"mean": [1.0,}}')
    with pytest.raises(DatasetError, match="invalid JSON at line 1"):
        load_stats(path)
    path.write_text(json.dumps({"format": "robofm.stats", "version": 9, "stats": good_body()}))
    with pytest.raises(DatasetError, match="field 'version' is 9"):
        load_stats(path)
    path.write_text(json.dumps({"format": "robofm.stats", "version": 1, "stats": good_body()}))
    with pytest.raises(DatasetError, match="holds no normalisation mode"):
        load_normalizer(path)
    assert load_normalizer(path, "mean_std").keys == ["action"]


# ---------------------------------------------------------------------------------------------
# LeRobot's meta/stats.json


def test_lerobot_fixture_stats_load_and_normalize(fixtures_dir):
    path = fixtures_dir / FIXTURE / "meta" / "stats.json"
    stats = load_stats(path)
    assert stats["observation.images.cam"]["mean"].shape == (3, 1, 1)
    assert stats["action"]["q99"].shape == (6,) and stats["action"]["count"].tolist() == [1500]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # index columns (constant task_index) are not normalised
        norm = Normalizer(stats, "mean_std")
    assert sorted(norm.keys) == ["action", "observation.state"]
    mean, std = stats["action"]["mean"], stats["action"]["std"]
    x = torch.tensor(np.stack([mean, mean + std, mean - 2 * std]), dtype=torch.float32)
    np.testing.assert_allclose(norm.normalize(x).numpy(), [[0] * 6, [1] * 6, [-2] * 6], atol=1e-5)
    assert load_normalizer(path, "quantile").normalize(np.asarray(stats["action"]["q99"]))[
        0
    ] == pytest.approx(1.0)


def test_running_stats_agree_with_lerobots_on_its_own_data(fixtures_dir):
    root = fixtures_dir / FIXTURE
    table = pq.read_table(next((root / "data").rglob("*.parquet")))
    reference = load_stats(root / "meta" / "stats.json")
    for key in ("action", "observation.state"):
        values = np.asarray(table.column(key).to_pylist(), dtype=np.float64)  # (N, 6)
        ours = feed(RunningStats(), values, max_chunk=300).result()
        for name in ("mean", "std", "min", "max"):
            np.testing.assert_allclose(ours[name], reference[key][name], rtol=1e-5, atol=1e-6)
        assert ours["count"].tolist() == reference[key]["count"].tolist()
