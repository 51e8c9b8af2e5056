"""Mixture (padding, masks, cameras, normalisers) and MixtureSampler (weights, seeds, ranks,
exact resume)."""

from __future__ import annotations

from itertools import islice

import numpy as np
import pytest
import torch

from robofm.data.episode import DatasetError, Episode, InMemorySource
from robofm.data.mixture import Mixture, MixtureSampler, to_batch
from robofm.data.windows import WindowDataset, collate_windows
from robofm.errors import SpaceError
from robofm.spaces import ActionSpace


def space(robot: str, d: int) -> ActionSpace:
    return ActionSpace(
        robot=robot,
        names=tuple(f"a{i}" for i in range(d)),
        units=("m",) * d,
        mode=("delta",) * d,
        frame="end_effector",
        low=(-1.0,) * d,
        high=(1.0,) * d,
        control_hz=10.0,
        chunk_len=4,
    )


def make_source(
    name: str, d: int, s: int, cams: dict[str, tuple[int, int]], lengths=(6, 9), robot=None
) -> InMemorySource:
    rng = np.random.default_rng(len(name) * 7 + d)
    episodes = []
    for i, n in enumerate(lengths):
        images = {
            cam: rng.integers(1, 256, (n, h, w, 3), dtype=np.uint8) for cam, (h, w) in cams.items()
        }
        episodes.append(
            Episode(
                index=i,
                task=f"{name} task {i}",
                actions=rng.normal(size=(n, d)).astype(np.float32) + 5.0,  # never 0
                states=rng.normal(size=(n, s)).astype(np.float32) + 5.0,
                timestamps=np.arange(n) / 10.0,
                images=images,
            )
        )
    act = space(robot, d) if robot else None
    return InMemorySource(episodes, fps=10, name=name, action_space=act)


@pytest.fixture
def two_robots() -> tuple[WindowDataset, WindowDataset]:
    arm = make_source("arm", 7, 5, {"front": (8, 8), "wrist": (4, 6)}, robot="panda")
    grip = make_source("grip", 4, 3, {"front": (8, 8)}, lengths=(5, 4, 3))  # no action space
    return (
        WindowDataset(arm, n_obs_steps=2, chunk_len=4),
        WindowDataset(grip, n_obs_steps=2, chunk_len=4),
    )


# ---------------------------------------------------------------------------------------------
# Mixture.


def test_padding_masks_and_dims_for_two_embodiments(two_robots) -> None:
    arm, grip = two_robots
    mix = Mixture([grip, arm])
    assert (mix.action_dim, mix.state_dim) == (7, 5)
    assert len(mix) == len(grip) + len(arm)
    assert mix.embodiments == ["grip", "panda"]  # dataset name when there is no action space
    assert mix.cameras == ["front", "wrist"]

    g = mix[3]  # grip, episode 0, step 3
    raw = grip[3]
    assert g["dataset_index"] == 0 and g["embodiment"] == "grip"
    assert g["actions"].shape == (4, 7) and g["state"].shape == (2, 5)
    np.testing.assert_array_equal(g["actions"][:, :4], raw["actions"])
    assert (g["actions"][:, 4:] == 0).all() and (g["state"][:, 3:] == 0).all()
    np.testing.assert_array_equal(g["state"][:, :3], raw["state"])
    assert g["action_mask"].tolist() == [True] * 4 + [False] * 3
    assert g["state_mask"].tolist() == [True] * 3 + [False] * 2
    assert g["image_mask"] == {"front": True, "wrist": False}
    assert g["images"]["wrist"].shape == (2, 4, 6, 3) and not g["images"]["wrist"].any()
    np.testing.assert_array_equal(g["images"]["front"], raw["images"]["front"])

    a = mix[len(grip) + 2]
    assert a["dataset_index"] == 1 and a["embodiment"] == "panda"
    assert a["action_mask"].all() and a["state_mask"].all()
    assert a["image_mask"] == {"front": True, "wrist": True}
    np.testing.assert_array_equal(a["actions"], arm[2]["actions"])
    np.testing.assert_array_equal(a["images"]["wrist"], arm[2]["images"]["wrist"])

    batch = to_batch(collate_windows([g, a]))
    assert batch.actions.shape == (2, 4, 7)
    assert batch.obs.images["wrist"].shape == (2, 2, 3, 4, 6)
    assert batch.obs.image_mask["wrist"].tolist() == [False, True]
    assert batch.dataset_index.tolist() == [0, 1]
    assert batch.obs.embodiment == ["grip", "panda"]
    mask = batch.loss_mask()  # (B, H, D)
    assert mask[0, :, 4:].sum() == 0 and mask[1].sum() == 4 * 7 - 7 * int(a["action_is_pad"].sum())


def test_normalizers_are_per_dataset_and_run_before_padding(two_robots) -> None:
    arm, grip = two_robots

    def shift(sample):
        sample["actions"] = sample["actions"] - 5.0
        sample["state"] = sample["state"] * 0.0 + 1.0
        return sample

    mix = Mixture([arm, grip], normalizers={"grip": shift})
    assert mix.normalizers == {"arm": None, "grip": shift}
    g = mix[len(arm) + 1]
    np.testing.assert_allclose(g["actions"][:, :4], grip[1]["actions"] - 5.0)
    assert (g["actions"][:, 4:] == 0).all()  # padding added after normalising
    assert (g["state"][:, :3] == 1).all() and (g["state"][:, 3:] == 0).all()
    np.testing.assert_array_equal(mix[1]["actions"], arm[1]["actions"])  # arm untouched
    with pytest.raises(DatasetError, match="unknown dataset"):
        Mixture([arm, grip], normalizers={"nope": shift})


def test_camera_size_conflict_names_datasets_and_image_size_resizes(two_robots) -> None:
    arm, _ = two_robots
    other = WindowDataset(make_source("other", 4, 3, {"wrist": (6, 6)}), n_obs_steps=2, chunk_len=4)
    with pytest.raises(DatasetError, match=r"'wrist'.*'arm'.*'other'.*image_size"):
        Mixture([arm, other])
    mix = Mixture([arm, other], image_size=(5, 5))
    assert mix.image_sizes == {"front": (5, 5), "wrist": (5, 5)}
    sample = mix[len(arm)]
    assert sample["image_mask"] == {"front": False, "wrist": True}
    assert sample["images"]["wrist"].shape == (2, 5, 5, 3)
    assert sample["images"]["front"].shape == (2, 5, 5, 3)
    # a resize of a constant image stays that constant
    flat = np.full((1, 6, 6, 3), 77, np.uint8)
    from robofm.data.mixture import resize_frames

    assert (resize_frames(flat, 3, 4) == 77).all()


def test_mismatched_action_space_and_chunk_len_are_errors(two_robots) -> None:
    arm, grip = two_robots
    ok = Mixture([arm, grip], action_spaces=[None, space("x", 4)])
    assert ok.embodiments == ["arm", "x"]
    with pytest.raises(SpaceError, match=r"'arm'.*'x' has 4 dims.*has 7"):
        Mixture([arm, grip], action_spaces=[space("x", 4), None])
    short = WindowDataset(grip.source, n_obs_steps=2, chunk_len=3)
    with pytest.raises(DatasetError, match="chunk_len"):
        Mixture([arm, short])
    with pytest.raises(DatasetError, match="repeat"):
        Mixture([grip, grip])


def test_mixture_rejects_per_dataset_transforms_when_filling_cameras(two_robots) -> None:
    arm, grip = two_robots
    tgrip = WindowDataset(grip.source, n_obs_steps=2, chunk_len=4, image_transform=lambda x: x)
    with pytest.raises(DatasetError, match="image_transform"):
        Mixture([arm, tgrip])


# ---------------------------------------------------------------------------------------------
# MixtureSampler.

SIZES = (100, 300, 50)


def dataset_of(indices: np.ndarray, sizes=SIZES) -> np.ndarray:
    return np.searchsorted(np.cumsum(sizes), indices, side="right")


def chi_square(counts: np.ndarray, probs: np.ndarray) -> float:
    expected = probs * counts.sum()
    return float(((counts - expected) ** 2 / expected).sum())


@pytest.mark.parametrize(
    "weights, probs",
    [
        ((0.5, 0.2, 0.3), (0.5, 0.2, 0.3)),
        ((2, 0, 2), (0.5, 0.0, 0.5)),
        (None, (2 / 9, 6 / 9, 1 / 9)),
    ],
)
def test_weights_are_respected_empirically(weights, probs) -> None:
    sampler = MixtureSampler(SIZES, weights, num_samples=20_000, seed=3)
    np.testing.assert_allclose(sampler.weights, probs)
    draws = np.asarray(list(sampler))
    assert len(draws) == 20_000 and draws.min() >= 0 and draws.max() < sum(SIZES)
    counts = np.bincount(dataset_of(draws), minlength=3)
    probs = np.asarray(probs)
    assert (counts[probs == 0] == 0).all()
    live = probs > 0
    # chi-square, 2 degrees of freedom at most: P(> 16) < 0.0004 for a correct sampler
    assert chi_square(counts[live], probs[live] / probs[live].sum()) < 16.0


def test_uniform_within_each_dataset() -> None:
    draws = np.asarray(list(MixtureSampler(SIZES, (1, 1, 1), num_samples=30_000, seed=1)))
    local = draws[dataset_of(draws) == 0]  # dataset 0 holds indices [0, 100)
    counts = np.bincount(local, minlength=100)
    assert counts.min() > 0
    # 99 degrees of freedom: mean 99, sd 14; 170 is five sd out
    assert chi_square(counts, np.full(100, 0.01)) < 170.0
    last = draws[dataset_of(draws) == 2] - 400  # dataset 2 holds [400, 450)
    assert last.min() == 0 and last.max() == 49


def test_deterministic_per_seed_and_independent_of_global_rng() -> None:
    a = list(MixtureSampler(SIZES, num_samples=500, seed=11))
    np.random.seed(0)
    torch.manual_seed(0)
    b = list(MixtureSampler(SIZES, num_samples=500, seed=11))
    np.random.seed(1)
    torch.manual_seed(1)
    c = list(MixtureSampler(SIZES, num_samples=500, seed=12))
    assert a == b
    assert a != c and np.mean(np.asarray(a) == np.asarray(c)) < 0.1


def test_epochs_advance_and_differ() -> None:
    sampler = MixtureSampler(SIZES, num_samples=300, seed=5)
    assert len(sampler) == 300
    e0, e1 = list(sampler), list(sampler)
    assert sampler.epoch == 2 and e0 != e1
    sampler.set_epoch(0)
    assert list(sampler) == e0
    assert e1 == list(islice(_at_epoch(MixtureSampler(SIZES, num_samples=300, seed=5), 1), 300))


def _at_epoch(sampler: MixtureSampler, epoch: int) -> MixtureSampler:
    sampler.set_epoch(epoch)
    return sampler


def test_ranks_are_disjoint_interleaved_shares_of_one_stream() -> None:
    world = 3
    single = list(MixtureSampler(SIZES, num_samples=30_000, seed=9))
    shares = [
        list(MixtureSampler(SIZES, num_samples=30_000, seed=9, rank=r, world_size=world))
        for r in range(world)
    ]
    assert [len(s) for s in shares] == [10_000] * 3
    for r, share in enumerate(shares):
        assert share == single[r::world]  # disjoint positions, union is the whole stream
    assert shares[0] != shares[1]
    # endless streams shard the same way, across the 8192-position block boundaries
    endless = list(islice(MixtureSampler(SIZES, seed=9), 20_000))
    assert endless == single[:20_000]
    r1 = list(islice(MixtureSampler(SIZES, seed=9, rank=1, world_size=2), 10_000))
    assert r1 == endless[1::2]


def test_uneven_num_samples_drops_the_tail_so_ranks_stay_in_step() -> None:
    shares = [list(MixtureSampler(SIZES, num_samples=101, rank=r, world_size=2)) for r in (0, 1)]
    assert [len(s) for s in shares] == [50, 50]


@pytest.mark.parametrize("taken", [0, 137, 8190, 8192, 9000])
def test_state_dict_resume_endless_is_exact_continuation(taken: int) -> None:
    reference = list(islice(MixtureSampler(SIZES, seed=4, rank=1, world_size=2), taken + 500))
    original = MixtureSampler(SIZES, seed=4, rank=1, world_size=2)
    assert list(islice(original, taken)) == reference[:taken]
    state = original.state_dict()
    assert state["consumed"] == taken and state["epoch"] == 0
    restored = MixtureSampler(SIZES, seed=4, rank=1, world_size=2)
    restored.load_state_dict(state)
    assert list(islice(restored, 500)) == reference[taken:]
    assert list(islice(original, 500)) == reference[taken:]  # the cursor continues in place too


def test_state_dict_resume_across_epoch_boundary() -> None:
    fresh = MixtureSampler(SIZES, num_samples=200, seed=8)
    epochs = [list(fresh) for _ in range(3)]
    original = MixtureSampler(SIZES, num_samples=200, seed=8)
    list(original)  # epoch 0 done
    assert list(islice(iter(original), 150)) == epochs[1][:150]
    state = original.state_dict()
    assert (state["epoch"], state["consumed"]) == (1, 150)
    restored = MixtureSampler(SIZES, num_samples=200, seed=8)
    restored.load_state_dict(state)
    assert list(restored) == epochs[1][150:]
    assert list(restored) == epochs[2]
    # a state saved right at the end of an epoch resumes with the next epoch
    done = MixtureSampler(SIZES, num_samples=200, seed=8)
    done.load_state_dict({**state, "consumed": 200})
    assert list(done) == epochs[2]


def test_state_dict_consumed_override_and_mismatch_errors() -> None:
    sampler = MixtureSampler(SIZES, seed=2)
    stream = list(islice(sampler, 64))  # as if a DataLoader prefetched 64 indices
    state = sampler.state_dict(consumed=40)  # but training used 40
    restored = MixtureSampler(SIZES, seed=2)
    restored.load_state_dict(state)
    assert list(islice(restored, 24)) == stream[40:]
    with pytest.raises(ValueError, match="seed"):
        MixtureSampler(SIZES, seed=3).load_state_dict(state)
    with pytest.raises(ValueError, match="weights"):
        MixtureSampler(SIZES, (1, 1, 1), seed=2).load_state_dict(state)


def test_sampler_argument_errors() -> None:
    with pytest.raises(ValueError, match="weights"):
        MixtureSampler(SIZES, (1, -1, 1))
    with pytest.raises(ValueError, match="no samples"):
        MixtureSampler((10, 0), (1, 1))
    with pytest.raises(ValueError, match="rank"):
        MixtureSampler(SIZES, rank=2, world_size=2)
    with pytest.raises(TypeError, match="endless"):
        len(MixtureSampler(SIZES))


def test_named_weights_with_a_mixture(two_robots) -> None:
    arm, grip = two_robots
    mix = Mixture([arm, grip])
    sampler = MixtureSampler(mix, {"grip": 3.0, "arm": 1.0}, num_samples=4000, seed=0)
    np.testing.assert_allclose(sampler.weights, [0.25, 0.75])
    ks = np.asarray([mix.locate(i)[0] for i in sampler])
    assert abs(ks.mean() - 0.75) < 0.03
    with pytest.raises(ValueError, match="missing"):
        MixtureSampler(mix, {"grip": 1.0})


def test_dataloader_workers_match_single_process_on_a_mixture(two_robots) -> None:
    mix = Mixture(list(two_robots))

    def batches(workers: int) -> list[dict]:
        sampler = MixtureSampler(mix, num_samples=48, seed=6)
        loader = torch.utils.data.DataLoader(
            mix, batch_size=8, sampler=sampler, num_workers=workers, collate_fn=collate_windows
        )
        return list(loader)

    serial, parallel = batches(0), batches(2)
    assert len(serial) == len(parallel) == 6
    for a, b in zip(serial, parallel, strict=True):
        for key in ("actions", "state", "action_mask", "state_mask", "dataset_index"):
            assert torch.equal(a[key], b[key]), key
        for cam in mix.cameras:
            assert torch.equal(a["images"][cam], b["images"][cam])
            assert torch.equal(a["image_mask"][cam], b["image_mask"][cam])
        assert a["embodiment"] == b["embodiment"]
    assert len({e for b in serial for e in b["embodiment"]}) == 2
