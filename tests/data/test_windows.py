"""WindowDataset: index mapping, action chunks and padding, obs history, frames, DataLoader."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from robofm.data.episode import DatasetError, Episode, InMemorySource
from robofm.data.windows import WindowDataset, collate_windows

LENGTHS = (7, 3, 12, 1)  # includes episodes shorter than the chunk and a single-step one


def make_episode(index: int, length: int, d: int = 4, s: int = 3, size: int = 6) -> Episode:
    """Episode whose every number identifies (episode, step, dim); random distinct frames."""
    rng = np.random.default_rng(100 + index)
    steps = np.arange(length, dtype=np.float32)[:, None]
    return Episode(
        index=index,
        task=f"task {index}",
        actions=(index * 1000 + steps * 10 + np.arange(d)).astype(np.float32),  # (T, D)
        states=(-index * 1000 - steps * 10 - np.arange(s)).astype(np.float32),  # (T, S)
        timestamps=np.arange(length) / 10.0,
        images={
            "front": rng.integers(0, 256, (length, size, size, 3), dtype=np.uint8),
            "wrist": rng.integers(0, 256, (length, size, size + 2, 3), dtype=np.uint8),
        },
    )


def make_source(lengths=LENGTHS, name: str = "toy") -> InMemorySource:
    return InMemorySource([make_episode(i, n) for i, n in enumerate(lengths)], fps=10, name=name)


class LowDimOnlySource(InMemorySource):
    """Fails if asked for whole-episode images; records every frames() request."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.requests: list[tuple[int, str, list[int]]] = []

    def episode(self, i: int, *, images: bool = False) -> Episode:
        assert not images, "WindowDataset must not load whole episodes' images"
        return super().episode(i, images=False)

    def frames(self, i: int, cam: str, steps: np.ndarray) -> np.ndarray:
        self.requests.append((i, cam, np.asarray(steps).tolist()))
        return super().frames(i, cam, steps)


def test_index_covers_every_episode_step_exactly_once() -> None:
    ds = WindowDataset(make_source(), chunk_len=4)
    assert len(ds) == sum(LENGTHS)
    seen = [(s["episode_index"], s["frame_index"]) for s in (ds[i] for i in range(len(ds)))]
    expected = [(e, t) for e, n in enumerate(LENGTHS) for t in range(n)]
    assert seen == expected  # in order, each pair exactly once
    assert ds[-1]["episode_index"] == 3 and ds[-1]["frame_index"] == 0
    with pytest.raises(IndexError):
        ds[len(ds)]
    with pytest.raises(IndexError):
        ds[-len(ds) - 1]


def test_episode_subset_maps_to_source_episodes() -> None:
    ds = WindowDataset(make_source(), episodes=[2, 0], chunk_len=2)
    assert len(ds) == LENGTHS[2] + LENGTHS[0]
    pairs = [(ds[i]["episode_index"], ds[i]["frame_index"]) for i in range(len(ds))]
    assert pairs == [(2, t) for t in range(12)] + [(0, t) for t in range(7)]
    assert ds.locate(12) == (1, 0)
    assert ds[12]["task"] == "task 0"
    assert ds[3]["timestamp"] == pytest.approx(0.3)


@pytest.mark.parametrize("pad_mode", ["repeat_last", "zero"])
def test_action_chunk_content_and_padding(pad_mode: str) -> None:
    h = 5
    src = make_source()
    ds = WindowDataset(src, chunk_len=h, pad_mode=pad_mode)
    for i in range(len(ds)):
        sample = ds[i]
        ep = src.episodes[sample["episode_index"]]
        t, n = sample["frame_index"], ep.length
        real = min(h, n - t)
        assert sample["actions"].shape == (h, 4) and sample["actions"].dtype == np.float32
        np.testing.assert_array_equal(sample["actions"][:real], ep.actions[t : t + h])
        np.testing.assert_array_equal(sample["action_is_pad"], np.arange(h) >= real)
        fill = ep.actions[-1] if pad_mode == "repeat_last" else np.zeros(4, np.float32)
        for k in range(real, h):
            np.testing.assert_array_equal(sample["actions"][k], fill)
    # the mask flips exactly at the episode end: episode 0 has 7 steps
    assert ds[2]["action_is_pad"].tolist() == [False] * 5  # steps 2..6
    assert ds[3]["action_is_pad"].tolist() == [False] * 4 + [True]  # steps 3..6, 7 is past
    assert ds[6]["action_is_pad"].tolist() == [False] + [True] * 4


def test_padding_never_leaks_into_the_dataset_arrays() -> None:
    src = make_source()
    ds = WindowDataset(src, chunk_len=5, pad_mode="zero")
    before = ds.actions.copy()
    for i in range(len(ds)):
        ds[i]["actions"][:] = -1.0  # a caller writing into a sample
    np.testing.assert_array_equal(ds.actions, before)


def test_obs_history_is_clamped_and_flagged() -> None:
    src = make_source()
    ds = WindowDataset(src, n_obs_steps=3, chunk_len=2)
    states = src.episodes[0].states
    for t, pad, rows in [
        (0, [True, True, False], [0, 0, 0]),
        (1, [True, False, False], [0, 0, 1]),
        (2, [False, False, False], [0, 1, 2]),
        (5, [False, False, False], [3, 4, 5]),
    ]:
        sample = ds[t]
        assert sample["obs_is_pad"].tolist() == pad
        assert sample["state"].shape == (3, 3) and sample["state"].dtype == np.float32
        np.testing.assert_array_equal(sample["state"], states[rows])
    # the first step of episode 1 must not see episode 0's history
    first = ds[LENGTHS[0]]
    assert first["episode_index"] == 1
    np.testing.assert_array_equal(first["state"], src.episodes[1].states[[0, 0, 0]])


def test_frames_equal_source_frames_fetched_per_sample() -> None:
    episodes = [make_episode(i, n) for i, n in enumerate(LENGTHS)]
    src = LowDimOnlySource(episodes, fps=10)
    ds = WindowDataset(src, n_obs_steps=2, chunk_len=3)
    assert src.requests == []  # nothing decoded at construction
    for i in range(len(ds)):
        sample = ds[i]
        ep = episodes[sample["episode_index"]]
        t = sample["frame_index"]
        steps = [max(t - 1, 0), t]
        assert set(sample["images"]) == {"front", "wrist"}
        for cam in ("front", "wrist"):
            img = sample["images"][cam]
            assert img.dtype == np.uint8 and img.shape == (2, *ep.images[cam].shape[1:])
            np.testing.assert_array_equal(img, ep.images[cam][steps])
    # one request per camera per sample, each for distinct increasing steps only
    assert len(src.requests) == 2 * len(ds)
    assert all(r == sorted(set(r)) for _, _, r in src.requests)


def test_camera_subset_and_image_transform() -> None:
    src = make_source()

    def to_chw_float(frames: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255.0  # (T, 3, H, W)

    ds = WindowDataset(src, cameras=["wrist"], image_transform=to_chw_float, chunk_len=2)
    sample = ds[4]
    assert list(sample["images"]) == ["wrist"]
    expected = to_chw_float(src.episodes[0].images["wrist"][[4]])
    torch.testing.assert_close(sample["images"]["wrist"], expected)
    assert WindowDataset(src, cameras=[], chunk_len=2)[0]["images"] == {}


def test_invalid_arguments_raise_clear_errors() -> None:
    src = make_source()
    with pytest.raises(DatasetError, match=r"unknown camera.*'top'"):
        WindowDataset(src, cameras=["top"])
    with pytest.raises(ValueError, match="pad_mode"):
        WindowDataset(src, pad_mode="mirror")
    with pytest.raises(DatasetError, match=r"out of range"):
        WindowDataset(src, episodes=[0, 9])
    with pytest.raises(ValueError, match="chunk_len"):
        WindowDataset(src, chunk_len=0)
    bad = [make_episode(0, 4), make_episode(1, 4, d=5)]
    with pytest.raises(DatasetError, match="episode 1: has 5 action dims"):
        WindowDataset(InMemorySource(bad, fps=10))


def test_collate_stacks_into_batched_tensors() -> None:
    ds = WindowDataset(make_source(), n_obs_steps=2, chunk_len=5)
    batch = collate_windows([ds[i] for i in (0, 3, 8)])
    assert batch["actions"].shape == (3, 5, 4) and batch["actions"].dtype == torch.float32
    assert batch["state"].shape == (3, 2, 3)
    assert batch["action_is_pad"].dtype == torch.bool and batch["action_is_pad"].shape == (3, 5)
    assert batch["obs_is_pad"].shape == (3, 2)
    assert batch["images"]["front"].shape == (3, 2, 6, 6, 3)
    assert batch["images"]["wrist"].dtype == torch.uint8
    assert batch["episode_index"].tolist() == [0, 0, 1]
    assert batch["frame_index"].tolist() == [0, 3, 1]
    assert batch["task"] == ["task 0", "task 0", "task 1"]
    torch.testing.assert_close(batch["actions"][1], torch.from_numpy(ds[3]["actions"]))


def test_pickle_round_trip_gives_identical_samples() -> None:
    ds = WindowDataset(make_source(), n_obs_steps=2, chunk_len=4)
    clone = pickle.loads(pickle.dumps(ds))
    for i in (0, 5, len(ds) - 1):
        a, b = ds[i], clone[i]
        np.testing.assert_array_equal(a["actions"], b["actions"])
        np.testing.assert_array_equal(a["images"]["front"], b["images"]["front"])


class _WorkerPidSource(InMemorySource):
    """Stamps the decoding process id into the frames, to prove workers did the work."""

    def frames(self, i: int, cam: str, steps: np.ndarray) -> np.ndarray:
        import os

        out = super().frames(i, cam, steps).copy()
        out[:, 0, 0, :] = np.frombuffer(os.getpid().to_bytes(3, "little"), np.uint8)
        return out


def _loader_batches(ds: WindowDataset, order: list[int], workers: int) -> list[dict]:
    loader = torch.utils.data.DataLoader(
        ds, batch_size=4, sampler=order, num_workers=workers, collate_fn=collate_windows
    )
    return list(loader)


def test_dataloader_two_workers_matches_single_process() -> None:
    ds = WindowDataset(make_source(), n_obs_steps=2, chunk_len=3)
    order = np.random.default_rng(0).permutation(len(ds)).tolist()
    serial = _loader_batches(ds, order, 0)
    parallel = _loader_batches(ds, order, 2)
    assert len(serial) == len(parallel) == -(-len(ds) // 4)
    for a, b in zip(serial, parallel, strict=True):
        assert a.keys() == b.keys()
        for key in ("actions", "state", "action_is_pad", "obs_is_pad", "frame_index"):
            assert torch.equal(a[key], b[key]), key
        for cam in ("front", "wrist"):
            assert torch.equal(a["images"][cam], b["images"][cam])
        assert a["task"] == b["task"]
    assert torch.cat([b["frame_index"] for b in parallel]).tolist() == [
        ds[i]["frame_index"] for i in order
    ]


def test_dataloader_workers_really_run_in_other_processes() -> None:
    import os

    episodes = [make_episode(i, n) for i, n in enumerate(LENGTHS)]
    ds = WindowDataset(_WorkerPidSource(episodes, fps=10), chunk_len=2)
    batches = _loader_batches(ds, list(range(len(ds))), 2)
    pixels = torch.cat([b["images"]["front"][:, 0, 0, 0, :] for b in batches])  # (N, 3)
    stamps = {int.from_bytes(bytes(p.tolist()), "little") for p in pixels}
    assert os.getpid() not in stamps
    assert len(stamps) == 2  # both workers decoded frames
