from __future__ import annotations

import numpy as np
import pytest
import torch

from robofm.types import Batch, Observation, ObservationError, validate_obs_dict


def make_batch(b=2, h=3, d=4) -> Batch:
    obs = Observation(
        images={"front": torch.zeros(b, 1, 3, 8, 8)},
        image_mask={"front": torch.ones(b, dtype=torch.bool)},
        state=torch.zeros(b, 1, 5),
        state_mask=torch.ones(b, 5, dtype=torch.bool),
        prompt=["pick"] * b,
        embodiment=["r"] * b,
    )
    is_pad = torch.zeros(b, h, dtype=torch.bool)
    is_pad[0, -1] = True  # first sample's chunk runs past its episode end
    mask = torch.ones(b, d, dtype=torch.bool)
    mask[1, -2:] = False  # second sample comes from a 2-dim-smaller embodiment
    return Batch(
        obs=obs,
        actions=torch.ones(b, h, d),
        action_is_pad=is_pad,
        action_mask=mask,
        episode_index=torch.arange(b),
        dataset_index=torch.zeros(b, dtype=torch.long),
    )


def test_loss_mask_combines_time_padding_and_dimension_padding():
    batch = make_batch()
    m = batch.loss_mask()
    assert m.shape == (2, 3, 4) and m.dtype == torch.float32
    assert m[0, -1].sum() == 0 and m[0, :-1].sum() == 8
    assert m[1, :, -2:].sum() == 0 and m[1, :, :2].sum() == 6
    assert batch.batch_size == 2 and batch.obs.batch_size == 2
    moved = batch.to("cpu")
    assert torch.equal(moved.loss_mask(), m)


def good_obs():
    return {
        "images": {"front": np.zeros((8, 8, 3), np.uint8)},
        "state": np.zeros(5, np.float32),
        "prompt": "pick up the red cube",
    }


def test_valid_observation_passes_unchanged():
    obs = good_obs()
    obs["state"] = obs["state"].astype(np.float64)  # any float dtype is accepted
    assert validate_obs_dict(obs, cameras={"front": (8, 8)}, state_dim=5) is None
    assert obs["state"].dtype == np.float64 and set(obs) == {"images", "state", "prompt"}


@pytest.mark.parametrize(
    "mutate,fragment",
    [
        (lambda o: o.pop("prompt"), "'prompt' must be a string"),
        (lambda o: o["images"].pop("front"), "missing ['front']"),
        (
            lambda o: o["images"].__setitem__("wrist", np.zeros((8, 8, 3), np.uint8)),
            "unexpected ['wrist']",
        ),
        (
            lambda o: o["images"].__setitem__("front", np.zeros((8, 9, 3), np.uint8)),
            "'images.front' has shape (8, 9, 3)",
        ),
        (
            lambda o: o["images"].__setitem__("front", np.zeros((8, 8, 3), np.float32)),
            "'images.front' must be uint8",
        ),
        (lambda o: o.__setitem__("state", np.zeros(4, np.float32)), "expected (5,)"),
        (
            lambda o: o.__setitem__("state", np.array([0, 0, np.nan, 0, 0], np.float32)),
            "non-finite values at indices [2]",
        ),
        (lambda o: o.__setitem__("state", [0.0] * 5), "'state' must be a numpy array"),
    ],
)
def test_mismatched_observation_names_the_key(mutate, fragment):
    obs = good_obs()
    mutate(obs)
    with pytest.raises(ObservationError) as err:
        validate_obs_dict(obs, cameras={"front": (8, 8)}, state_dim=5)
    assert fragment in str(err.value)
