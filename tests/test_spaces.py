from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from robofm.errors import SpaceError
from robofm.spaces import (
    ActionSpace,
    SpacesFile,
    StateSpace,
    common_dim,
    load_spaces,
    pad_last_dim,
    save_spaces,
    stats_hash,
)


def make_action_space(**overrides) -> ActionSpace:
    fields = dict(
        robot="sim_gripper",
        names=("dx", "dy", "dz", "gripper"),
        units=("m", "m", "m", "1"),
        mode=("delta", "delta", "delta", "absolute"),
        frame="end_effector",
        low=(-0.05, -0.05, -0.05, 0.0),
        high=(0.05, 0.05, 0.05, 1.0),
        control_hz=10.0,
        chunk_len=8,
        gripper_dims=(3,),
        gripper_closed=0.0,
        gripper_open=1.0,
    )
    fields.update(overrides)
    return ActionSpace(**fields)


def test_json_round_trip_gives_equal_space_and_hash():
    space = make_action_space()
    back = ActionSpace.from_json(space.to_json())
    assert back == space
    assert back.hash() == space.hash()
    state = StateSpace(robot="sim_gripper", names=("x", "y", "z", "g"), units=("m",) * 3 + ("1",))
    assert StateSpace.from_json(state.to_json()) == state


def test_hash_is_stable_across_processes_and_sensitive_to_every_field():
    space = make_action_space()
    code = (
        "import json,sys;from robofm.spaces import ActionSpace;"
        "print(ActionSpace.from_json(sys.stdin.read()).hash())"
    )
    other = subprocess.run(
        [sys.executable, "-c", code], input=space.to_json(), capture_output=True, text=True
    )
    assert other.returncode == 0, other.stderr
    assert other.stdout.strip() == space.hash()
    assert len(space.hash()) == 16
    changed = {
        "robot": "other",
        "names": ("a", "b", "c", "d"),
        "units": ("rad", "m", "m", "1"),
        "mode": ("absolute",) * 4,
        "frame": "joint",
        "low": (-0.1, -0.05, -0.05, 0.0),
        "high": (0.05, 0.05, 0.06, 1.0),
        "control_hz": 15.0,
        "chunk_len": 9,
        "gripper_dims": (),
        "gripper_closed": -1.0,
        "gripper_open": 2.0,
    }
    hashes = {make_action_space(**{k: v}).hash() for k, v in changed.items()}
    assert space.hash() not in hashes
    assert len(hashes) == len(changed)
    # The state space of the same robot never collides with the action space.
    state = StateSpace(robot="r", names=("a",), units=("1",))
    assert state.hash() != StateSpace(robot="r", names=("b",), units=("1",)).hash()


def test_check_compatible_names_every_mismatching_field():
    ckpt = make_action_space()
    data = make_action_space(control_hz=15.0, chunk_len=4, units=("m", "m", "rad", "1"))
    with pytest.raises(SpaceError) as err:
        ckpt.check_compatible(data, labels=("checkpoint", "dataset"))
    msg = str(err.value)
    for name in ("control_hz", "chunk_len", "units"):
        assert name in msg
    assert "3 field(s)" in msg
    assert "checkpoint 10.0, dataset 15.0" in msg
    for name in ("names", "low", "robot", "frame"):
        assert f"  - {name}:" not in msg
    assert ckpt.differences(data) == ["units", "control_hz", "chunk_len"]
    ckpt.check_compatible(data, ignore=("control_hz", "chunk_len", "units"))
    ckpt.check_compatible(make_action_space())  # equal spaces: no error


def test_tiny_float_noise_is_compatible_but_real_change_is_not():
    a = make_action_space()
    b = make_action_space(low=(-0.05 * (1 + 1e-9), -0.05, -0.05, 0.0))
    a.check_compatible(b)
    with pytest.raises(SpaceError, match="low"):
        a.check_compatible(make_action_space(low=(-0.06, -0.05, -0.05, 0.0)))


def test_padding_masks_and_arrays_for_mixtures():
    small = make_action_space()
    big = make_action_space(
        names=tuple(f"j{i}" for i in range(7)),
        units=("rad",) * 7,
        mode=("absolute",) * 7,
        frame="joint",
        low=(-3.0,) * 7,
        high=(3.0,) * 7,
        gripper_dims=(6,),
    )
    dim = common_dim([small, big])
    assert dim == 7
    assert small.pad_mask(dim).tolist() == [True] * 4 + [False] * 3
    assert big.pad_mask(dim).all()
    x = np.arange(2 * 4, dtype=np.float32).reshape(2, 4) + 1
    padded = pad_last_dim(x, dim)
    assert padded.shape == (2, 7)
    np.testing.assert_array_equal(padded[:, :4], x)
    assert (padded[:, 4:] == 0).all()
    t = torch.ones(3, 5, 4)
    tp = pad_last_dim(t, dim)
    assert tp.shape == (3, 5, 7) and tp[..., 4:].abs().sum() == 0 and tp[..., :4].sum() == 60
    with pytest.raises(SpaceError):
        big.pad_mask(4)
    with pytest.raises(SpaceError):
        pad_last_dim(np.zeros((1, 7)), 4)


def test_clip_uses_bounds():
    space = make_action_space()
    clipped = space.clip(np.array([[1.0, -1.0, 0.01, 2.0]]))
    np.testing.assert_allclose(clipped, [[0.05, -0.05, 0.01, 1.0]], rtol=1e-6)
    with pytest.raises(SpaceError, match="last dimension 3"):
        space.clip(np.zeros((2, 3)))


@pytest.mark.parametrize(
    "field,value,fragment",
    [
        ("units", ("m", "m", "m"), "'units' has 3 entries"),
        ("mode", ("delta", "delta", "delta", "relative"), "mode[3]"),
        ("frame", "world", "'frame'"),
        ("low", (-0.05, math.nan, -0.05, 0.0), "low[1]"),
        ("high", (0.05, 0.05, math.inf, 1.0), "high[2]"),
        ("low", (0.1, -0.05, -0.05, 0.0), "'low[0]' (0.1) is greater than 'high[0]'"),
        ("control_hz", 0.0, "control_hz"),
        ("chunk_len", 0, "chunk_len"),
        ("gripper_dims", (4,), "gripper_dims[0]"),
        ("names", ("a", "a", "b", "c"), "repeats ['a']"),
        ("names", (), "'names' is empty"),
        ("chunk_len", 2.5, "'chunk_len' must be int"),
    ],
)
def test_invalid_values_name_the_field(field, value, fragment):
    with pytest.raises(SpaceError) as err:
        make_action_space(**{field: value})
    assert fragment in str(err.value)


def test_lists_are_accepted_and_stored_as_tuples():
    space = make_action_space(names=["a", "b", "c", "d"])
    assert space.names == ("a", "b", "c", "d")
    assert hash(space) == hash(make_action_space(names=("a", "b", "c", "d")))


def _write_file(tmp_path: Path, mutate) -> Path:
    path = tmp_path / "action_space.json"
    save_spaces(path, SpacesFile(action=make_action_space(), stats_sha256="ab" * 32))
    body = json.loads(path.read_text())
    mutate(body)
    path.write_text(json.dumps(body))
    return path


def test_spaces_file_round_trip(tmp_path):
    state = StateSpace(robot="sim_gripper", names=("x", "g"), units=("m", "1"))
    stats = {"action": {"mean": np.array([0.1, 0.2]), "std": [1.0, 2.0]}}
    f = SpacesFile(action=make_action_space(), state=state, stats_sha256=stats_hash(stats))
    save_spaces(tmp_path / "action_space.json", f)
    assert load_spaces(tmp_path / "action_space.json") == f
    assert [p.name for p in tmp_path.iterdir()] == ["action_space.json"]  # no temp files left


def test_stats_hash_is_value_based():
    a = {"action": {"mean": np.array([0.1, 0.2], dtype=np.float64), "std": [1.0, 2.0]}}
    b = {"action": {"std": torch.tensor([1.0, 2.0]), "mean": [0.1, 0.2]}}
    c = {"action": {"mean": [0.1, 0.25], "std": [1.0, 2.0]}}
    assert stats_hash(a) == stats_hash(b)
    assert stats_hash(a) != stats_hash(c)


@pytest.mark.parametrize(
    "mutate,fragment",
    [
        (lambda b: b["action"].pop("control_hz"), "missing field 'control_hz'"),
        (lambda b: b["action"].__setitem__("chunk_len", "8"), "'chunk_len' must be int"),
        (lambda b: b["action"].__setitem__("low", [-0.05, "x", 0, 0]), "'low[1]' must be float"),
        (lambda b: b["action"].__setitem__("high", [0.05, 0.05, None, 1]), "'high[2]'"),
        (lambda b: b["action"].__setitem__("low", [0.5, -0.05, -0.05, 0]), "'low[0]'"),
        (lambda b: b["action"].__setitem__("names", "dx"), "'names' must be a list"),
        (lambda b: b["action"].__setitem__("colour", "red"), "unknown field(s) ['colour']"),
        (lambda b: b.pop("action"), "missing field 'action'"),
        (lambda b: b.__setitem__("version", 99), "field 'version'"),
        (lambda b: b.__setitem__("state", {"robot": "r", "names": ["a"]}), "'state': missing"),
        (lambda b: b.__setitem__("stats_sha256", 5), "stats_sha256"),
    ],
)
def test_malformed_file_names_the_field(tmp_path, mutate, fragment):
    path = _write_file(tmp_path, mutate)
    with pytest.raises(SpaceError) as err:
        load_spaces(path)
    assert fragment in str(err.value)
    assert str(path) in str(err.value)


def test_nan_bounds_in_file_are_rejected(tmp_path):
    path = tmp_path / "action_space.json"
    save_spaces(path, SpacesFile(action=make_action_space()))
    path.write_text(path.read_text().replace("-0.05,", "NaN,", 1))
    with pytest.raises(SpaceError, match=r"'low\[0\]' is nan"):
        load_spaces(path)


def test_invalid_json_and_missing_file(tmp_path):
    path = tmp_path / "action_space.json"
    path.write_text('{"format": "robofm.spaces", ')
    with pytest.raises(SpaceError, match="invalid JSON at line 1"):
        load_spaces(path)
    with pytest.raises(SpaceError, match="cannot read"):
        load_spaces(tmp_path / "nope.json")
