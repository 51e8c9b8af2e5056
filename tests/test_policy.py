"""Policy.infer: the robot-side contract (plain dicts, robot units), input checks, and the
normalisation that lives inside the policy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from robofm.models.checkpoint import save_checkpoint
from robofm.policy import Policy
from robofm.spaces import SpacesFile
from robofm.types import ObservationError
from tests.models.test_vla import BUILD, build, normalizer, spaces, tiny


def obs(h: int = 48, w: int = 64, state_dim: int = 4) -> dict:
    rng = np.random.default_rng(0)
    return {
        "images": {c: rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for c in ("front", "wrist")},
        "state": rng.normal(size=state_dim).astype(np.float32),
        "prompt": "pick up the red cube",
    }


@pytest.fixture(scope="module")
def policy():
    return Policy(build(tiny(head="flow")), normalizer(), spaces(), seed=0)


def test_infer_returns_a_chunk_in_robot_units_within_bounds(policy):
    out = policy.infer(obs())
    a = out["actions"]
    space = policy.spaces.action
    assert a.dtype == np.float32 and a.shape == (4, 4)  # (H, D) of the robot, not the padded 7
    assert np.all(a >= space.low_array) and np.all(a <= space.high_array)
    assert out["infer_ms"] > 0
    policy.reset()
    first = policy.infer(obs())["actions"]
    policy.reset()
    np.testing.assert_array_equal(policy.infer(obs())["actions"], first)  # reset restarts noise


def test_normalisation_lives_inside_the_policy():
    model = build(tiny(head="regression"))
    with torch.no_grad():
        model.head.out.weight.zero_()
        model.head.out.bias.zero_()  # the model now outputs normalised zeros
    norm = normalizer()
    pol = Policy(model, norm, spaces())
    a = pol.infer(obs())["actions"]
    mean = norm.stats["action"]["mean"].astype(np.float32)
    want = pol.spaces.action.clip(np.broadcast_to(mean, (4, 4)).copy())
    np.testing.assert_allclose(a, want, rtol=1e-6)  # unnormalised to the stats' mean, clipped


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda o: o["images"].pop("wrist"), "wrist"),
        (lambda o: o.__setitem__("state", np.zeros(6, np.float32)), "state"),
        (lambda o: o["images"].__setitem__("front", np.zeros((8, 8, 3), np.float32)), "front"),
        (lambda o: o["images"].__setitem__("front", np.zeros((8, 8), np.uint8)), "front"),
        (lambda o: o.pop("prompt"), "prompt"),
        (lambda o: o.__setitem__("state", np.array([0, np.nan, 0, 0], np.float32)), "state"),
    ],
)
def test_mismatched_observations_are_refused_with_the_key_named(policy, change, message):
    o = obs()
    change(o)
    with pytest.raises(ObservationError, match=message):
        policy.infer(o)


def test_policy_refuses_an_action_space_the_model_has_no_adapter_for():
    s = spaces()
    other = SpacesFile(type(s.action)(**{**s.action.to_dict(), "robot": "someone_else"}), None)
    with pytest.raises(ObservationError, match="someone_else"):
        Policy(build(tiny()), normalizer(), other)


def test_policy_from_checkpoint_matches_the_original(tmp_path):
    model = build(tiny(head="diffusion"))
    path = save_checkpoint(tmp_path / "ckpt", model, normalizer(), spaces(), build=BUILD)
    a = Policy(model, normalizer(), spaces(), seed=3).infer(obs())["actions"]
    b = Policy.from_checkpoint(path, seed=3).infer(obs())["actions"]
    np.testing.assert_array_equal(a, b)
