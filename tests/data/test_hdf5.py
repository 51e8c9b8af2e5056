"""HDF5Source against real robomimic- and LIBERO-style files written with h5py."""

from __future__ import annotations

import json
import multiprocessing
import os
import pickle
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from robofm.data.episode import DatasetError, EpisodeSource
from robofm.data.hdf5 import HDF5Source, task_from_file_name

# robomimic: demo_10 exists so that numeric order (0, 1, 2, 10) differs from lexicographic.
ROBO_LENGTHS = {"demo_0": 6, "demo_1": 9, "demo_2": 5, "demo_10": 7}
ROBO_ORDER = ["demo_0", "demo_1", "demo_2", "demo_10"]
LIBERO_LENGTHS = {"demo_0": 10, "demo_1": 14, "demo_11": 12}
LIBERO_ORDER = ["demo_0", "demo_1", "demo_11"]
LIBERO_NAME = "KITCHEN_SCENE1_put_the_black_bowl_on_the_plate_demo.hdf5"
# Deliberately not the text the file name encodes, so the two sources can be told apart.
LIBERO_INSTRUCTION = "place the black bowl onto the plate"

Arrays = dict[str, dict[str, np.ndarray]]  # demo -> dataset path inside the demo -> array


def write_robomimic(path: Path) -> Arrays:
    """A robomimic image.hdf5-style file: one camera, robot0_* low-dim obs, filter keys."""
    rng = np.random.default_rng(0)
    written: Arrays = {}
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["env_args"] = json.dumps(
            {"env_name": "Lift", "type": 1, "env_kwargs": {"control_freq": 20}}
        )
        data.attrs["total"] = sum(ROBO_LENGTHS.values())
        for name in ["demo_10", "demo_2", "demo_0", "demo_1"]:  # creation order is not the order
            t = ROBO_LENGTHS[name]
            arrays = {
                "actions": rng.uniform(-1, 1, (t, 7)),
                "obs/robot0_eef_pos": rng.normal(size=(t, 3)),
                "obs/robot0_eef_quat": rng.normal(size=(t, 4)).astype(np.float32),
                "obs/robot0_gripper_qpos": rng.normal(size=(t, 2)),
                "obs/agentview_image": rng.integers(0, 256, (t, 8, 10, 3), dtype=np.uint8),
                "states": rng.normal(size=(t, 12)),
                "rewards": rng.uniform(size=t),
                "dones": (np.arange(t) == t - 1).astype(np.int64),
            }
            group = data.create_group(name)
            for key, value in arrays.items():
                group.create_dataset(key, data=value)
            group.attrs["num_samples"] = t
            written[name] = arrays
        data["demo_1"].attrs["lang"] = "lift the cube"
        data["demo_2"].attrs["language_instruction"] = b"lift the red cube"
        f.create_dataset("mask/train", data=np.array([b"demo_10", b"demo_0"], dtype="S7"))
        f.create_dataset("mask/valid", data=np.array([b"demo_2", b"demo_1"], dtype="S7"))
    return written


def write_libero(path: Path, *, problem_info: bool = True) -> Arrays:
    """A LIBERO-style file: problem_info language, two cameras, ee/gripper/joint obs."""
    rng = np.random.default_rng(1)
    written: Arrays = {}
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["env_name"] = "Libero_Kitchen_Tabletop_Manipulation"
        data.attrs["env_args"] = json.dumps({"type": 1, "env_kwargs": {"control_freq": 20}})
        if problem_info:
            data.attrs["problem_info"] = json.dumps(
                {
                    "problem_name": "libero_kitchen_tabletop_manipulation",
                    "domain_name": "robosuite",
                    "language_instruction": LIBERO_INSTRUCTION,
                }
            )
        data.attrs["bddl_file_name"] = "libero/bddl_files/libero_90/KITCHEN_SCENE1.bddl"
        data.attrs["macros_image_convention"] = "opengl"
        data.attrs["num_demos"] = len(LIBERO_LENGTHS)
        data.attrs["total"] = sum(LIBERO_LENGTHS.values())
        for name in ["demo_11", "demo_1", "demo_0"]:
            t = LIBERO_LENGTHS[name]
            arrays = {
                "actions": rng.uniform(-1, 1, (t, 7)),
                "obs/agentview_rgb": rng.integers(0, 256, (t, 8, 8, 3), dtype=np.uint8),
                "obs/eye_in_hand_rgb": rng.integers(0, 256, (t, 6, 6, 3), dtype=np.uint8),
                "obs/ee_pos": rng.normal(size=(t, 3)),
                "obs/ee_ori": rng.normal(size=(t, 3)),
                "obs/gripper_states": rng.normal(size=(t, 2)),
                "obs/joint_states": rng.normal(size=(t, 7)),
                "robot_states": rng.normal(size=(t, 9)),
                "states": rng.normal(size=(t, 20)),
                "rewards": (np.arange(t) == t - 1).astype(np.uint8),
                "dones": (np.arange(t) == t - 1).astype(np.uint8),
            }
            group = data.create_group(name)
            for key, value in arrays.items():
                group.create_dataset(key, data=value)
            group.attrs["num_samples"] = t
            group.attrs["init_state"] = arrays["states"][0]
            group.attrs["model_file"] = "<mujoco/>"
            written[name] = arrays
    return written


@pytest.fixture
def robomimic(tmp_path: Path) -> tuple[Path, Arrays]:
    path = tmp_path / "lift_ph_image.hdf5"
    return path, write_robomimic(path)


@pytest.fixture
def libero(tmp_path: Path) -> tuple[Path, Arrays]:
    path = tmp_path / LIBERO_NAME
    return path, write_libero(path)


# -- order, arrays, cameras --------------------------------------------------------------------


def test_demos_in_numeric_order(robomimic):
    path, written = robomimic
    src = HDF5Source(path)
    assert isinstance(src, EpisodeSource)
    assert len(src) == 4
    assert src.demo_names == ROBO_ORDER
    for i, name in enumerate(ROBO_ORDER):
        ep = src.episode(i)
        assert ep.index == i
        assert ep.meta["demo"] == name
        assert ep.length == ROBO_LENGTHS[name]
        np.testing.assert_array_equal(ep.actions, written[name]["actions"].astype(np.float32))


def test_robomimic_arrays_round_trip(robomimic):
    path, written = robomimic
    src = HDF5Source(path, fps=10.0)
    assert src.name == "lift_ph_image"
    assert src.action_space is None
    assert src.skipped == []
    assert src.env_args["env_name"] == "Lift"
    # Default state: every low-dim obs key, sorted; the image is not part of it.
    keys = ["robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos"]
    assert src.state_keys == tuple(keys)
    ep = src.episode(3)  # demo_10
    arrays = written["demo_10"]
    assert ep.actions.dtype == np.float32 and ep.states.dtype == np.float32
    expected = np.concatenate([arrays[f"obs/{k}"] for k in keys], axis=1).astype(np.float32)
    np.testing.assert_array_equal(ep.states, expected)
    assert ep.meta["state_keys"] == {
        "robot0_eef_pos": (0, 3),
        "robot0_eef_quat": (3, 7),
        "robot0_gripper_qpos": (7, 9),
    }
    np.testing.assert_allclose(ep.timestamps, np.arange(7) / 10.0)
    assert ep.timestamps.dtype == np.float64
    assert sorted(ep.extras) == ["dones", "rewards", "states"]
    for key in ("dones", "rewards", "states"):
        np.testing.assert_array_equal(ep.extras[key], arrays[key])
    assert ep.images == {}


def test_explicit_state_keys_keep_their_order(libero):
    path, written = libero
    src = HDF5Source(path, state_keys=["gripper_states", "ee_pos"])
    ep = src.episode(1)
    arrays = written["demo_1"]
    expected = np.concatenate([arrays["obs/gripper_states"], arrays["obs/ee_pos"]], axis=1)
    np.testing.assert_array_equal(ep.states, expected.astype(np.float32))
    assert ep.meta["state_keys"] == {"gripper_states": (0, 2), "ee_pos": (2, 5)}
    assert src.state_dim == 5
    assert HDF5Source(path, state_keys=[]).episode(0).states.shape == (10, 0)


def test_images_round_trip_two_cameras(libero):
    path, written = libero
    src = HDF5Source(path)
    assert src.cameras == {"agentview": (8, 8), "eye_in_hand": (6, 6)}
    assert src.camera_keys == {"agentview": "agentview_rgb", "eye_in_hand": "eye_in_hand_rgb"}
    assert src.image_convention == "opengl"
    ep = src.episode(2, images=True)  # demo_11
    assert sorted(ep.images) == ["agentview", "eye_in_hand"]
    np.testing.assert_array_equal(ep.images["agentview"], written["demo_11"]["obs/agentview_rgb"])
    np.testing.assert_array_equal(
        ep.images["eye_in_hand"], written["demo_11"]["obs/eye_in_hand_rgb"]
    )
    assert ep.images["agentview"].dtype == np.uint8
    # LIBERO default state: ee_ori, ee_pos, gripper_states, joint_states (3 + 3 + 2 + 7).
    assert ep.states.shape == (12, 15)
    assert sorted(ep.extras) == ["dones", "rewards", "robot_states", "states"]


def test_robomimic_camera_named_without_suffix(robomimic):
    path, written = robomimic
    src = HDF5Source(path)
    assert src.cameras == {"agentview": (8, 10)}
    ep = src.episode(0, images=True)
    np.testing.assert_array_equal(ep.images["agentview"], written["demo_0"]["obs/agentview_image"])
    renamed = HDF5Source(path, camera_keys={"front": "agentview_image"})
    assert renamed.cameras == {"front": (8, 10)}


def test_flip_images_reverses_rows(libero):
    path, written = libero
    src = HDF5Source(path, flip_images=True)
    source = written["demo_0"]["obs/agentview_rgb"]
    ep = src.episode(0, images=True)
    np.testing.assert_array_equal(ep.images["agentview"], source[:, ::-1])
    steps = np.array([4, 2, 2])
    np.testing.assert_array_equal(src.frames(0, "agentview", steps), source[steps][:, ::-1])


# -- frames ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "steps",
    [
        [3, 1, 1, 2],  # dense span: read as one slice
        [13, 0, 0, 7, 13],  # sparse span: point selection
        [-1, 5, -14],  # negative indices count from the end
        [9],
    ],
)
def test_frames_match_numpy_indexing(libero, steps):
    path, written = libero
    src = HDF5Source(path)
    steps = np.array(steps)
    for cam, key in [("agentview", "agentview_rgb"), ("eye_in_hand", "eye_in_hand_rgb")]:
        got = src.frames(1, cam, steps)  # demo_1, 14 steps
        expected = written["demo_1"][f"obs/{key}"][steps]
        assert got.dtype == np.uint8
        assert got.shape == expected.shape
        np.testing.assert_array_equal(got, expected)


def test_frames_edge_cases(libero):
    path, _ = libero
    src = HDF5Source(path)
    assert src.frames(0, "agentview", np.array([], dtype=np.int64)).shape == (0, 8, 8, 3)
    with pytest.raises(IndexError, match="demo_0"):
        src.frames(0, "agentview", np.array([10]))  # demo_0 has 10 steps
    with pytest.raises(KeyError, match="wrist"):
        src.frames(0, "wrist", np.array([0]))
    with pytest.raises(IndexError):
        src.episode(3)


# -- language ----------------------------------------------------------------------------------


def test_language_from_problem_info(libero):
    path, _ = libero
    src = HDF5Source(path, task="ignored: the file has an instruction")
    for i in range(len(src)):
        ep = src.episode(i)
        assert ep.task == LIBERO_INSTRUCTION
        assert ep.meta["task_source"] == "file attribute"
    assert src.problem_info["problem_name"] == "libero_kitchen_tabletop_manipulation"


def test_language_from_demo_attributes_then_task_argument(robomimic):
    path, _ = robomimic
    tasks = [ep.task for ep in (HDF5Source(path, task="lift").episode(i) for i in range(4))]
    # demo_0 and demo_10 have no attribute: the task argument; demo_1 `lang`; demo_2 bytes.
    assert tasks == ["lift", "lift the cube", "lift the red cube", "lift"]
    # Without a task argument, the file name: "lift_ph_image" -> "lift ph image".
    src = HDF5Source(path)
    assert src.episode(0).task == "lift ph image"
    assert src.episode(0).meta["task_source"] == "file name"
    assert src.episode(1).meta["task_source"] == "demo attribute 'lang'"


def test_demo_attribute_beats_problem_info(libero):
    path, _ = libero
    with h5py.File(path, "r+") as f:
        f["data/demo_1"].attrs["language_instruction"] = "open the drawer"
    src = HDF5Source(path)
    assert [src.episode(i).task for i in range(3)] == [
        LIBERO_INSTRUCTION,
        "open the drawer",
        LIBERO_INSTRUCTION,
    ]


def test_language_from_libero_file_name(tmp_path):
    path = tmp_path / "LIVING_ROOM_SCENE2_put_both_the_soup_and_the_sauce_in_the_basket_demo.hdf5"
    write_libero(path, problem_info=False)
    ep = HDF5Source(path).episode(0)
    assert ep.task == "put both the soup and the sauce in the basket"
    assert ep.meta["task_source"] == "file name"


def test_task_from_file_name_rule():
    assert task_from_file_name(LIBERO_NAME) == "put the black bowl on the plate"
    assert task_from_file_name("pick_up_the_ketchup_and_place_it_in_the_basket_demo.hdf5") == (
        "pick up the ketchup and place it in the basket"
    )
    assert task_from_file_name("/data/low_dim.hdf5") == "low dim"
    assert task_from_file_name("DEMO.hdf5") == "DEMO"  # never strips everything


# -- filter keys -------------------------------------------------------------------------------


def test_filter_key_selects_demos_in_numeric_order(robomimic):
    path, written = robomimic
    train = HDF5Source(path, filter_key="train")
    assert train.demo_names == ["demo_0", "demo_10"]
    ep = train.episode(1)
    assert ep.meta["filter_key"] == "train"
    np.testing.assert_array_equal(ep.actions, written["demo_10"]["actions"].astype(np.float32))
    assert HDF5Source(path, filter_key="valid").demo_names == ["demo_1", "demo_2"]


def test_unknown_filter_key_lists_available(robomimic):
    path, _ = robomimic
    with pytest.raises(DatasetError, match=r"mask/test.*\['train', 'valid'\]") as info:
        HDF5Source(path, filter_key="test")
    assert str(path) in str(info.value)


def test_filter_key_naming_missing_demo(robomimic):
    path, _ = robomimic
    with h5py.File(path, "r+") as f:
        del f["mask/valid"]
        f.create_dataset("mask/valid", data=np.array([b"demo_1", b"demo_7"]))
    with pytest.raises(DatasetError, match="demo_7") as info:
        HDF5Source(path, filter_key="valid")
    assert str(path) in str(info.value)
    src = HDF5Source(path, filter_key="valid", skip_bad=True)
    assert src.demo_names == ["demo_1"]
    assert src.skipped == [
        f"{path}: demo_7: listed in mask/valid but there is no group data/demo_7"
    ]


# -- bad input ---------------------------------------------------------------------------------


def _replace(f: h5py.File, key: str, value: np.ndarray) -> None:
    del f[key]
    f.create_dataset(key, data=value)


def _zero_steps(f: h5py.File) -> None:
    group = f["data/demo_2"]
    for key in list(group):
        del group[key]
    group.create_dataset("actions", data=np.zeros((0, 7)))
    group.create_dataset("obs/agentview_image", data=np.zeros((0, 8, 10, 3), np.uint8))


def _short_obs(f: h5py.File) -> None:  # 8 frames for 9 actions
    _replace(f, "data/demo_1/obs/agentview_image", np.zeros((8, 8, 10, 3), np.uint8))


def _short_extra(f: h5py.File) -> None:
    _replace(f, "data/demo_10/rewards", np.zeros(3))


def _missing_obs(f: h5py.File) -> None:
    del f["data/demo_1/obs/robot0_eef_quat"]


def _no_actions(f: h5py.File) -> None:
    del f["data/demo_10/actions"]


def _wrong_num_samples(f: h5py.File) -> None:
    f["data/demo_2"].attrs["num_samples"] = 50


def _other_action_dim(f: h5py.File) -> None:
    _replace(f, "data/demo_1/actions", np.zeros((9, 6)))


@pytest.mark.parametrize(
    ("mutate", "demo", "reason"),
    [
        (_zero_steps, "demo_2", "zero steps"),
        (_short_obs, "demo_1", "'agentview_image' has 8 steps but 'actions' has 9"),
        (_short_extra, "demo_10", "'rewards' has 3 steps"),
        (_missing_obs, "demo_1", "missing obs key 'robot0_eef_quat'"),
        (_no_actions, "demo_10", "no 'actions' dataset"),
        (_wrong_num_samples, "demo_2", "num_samples is 50"),
        (_other_action_dim, "demo_1", "6 dims"),
    ],
)
def test_bad_demo_names_file_and_demo(robomimic, mutate, demo, reason):
    path, _ = robomimic
    with h5py.File(path, "r+") as f:
        mutate(f)
    with pytest.raises(DatasetError) as info:
        HDF5Source(path)
    message = str(info.value)
    assert message.startswith(f"{path}: {demo}: "), message
    assert reason in message
    # The same demo is skipped, and only it, with skip_bad.
    src = HDF5Source(path, skip_bad=True)
    assert src.demo_names == [d for d in ROBO_ORDER if d != demo]
    assert len(src.skipped) == 1 and src.skipped[0].startswith(f"{path}: {demo}: ")
    assert reason in src.skipped[0]


def test_requested_obs_key_missing(libero):
    path, _ = libero
    with pytest.raises(DatasetError, match="missing obs key 'wrist_rgb'") as info:
        HDF5Source(path, camera_keys=["agentview_rgb", "wrist_rgb"])
    assert str(info.value).startswith(f"{path}: demo_0: ")
    with pytest.raises(DatasetError, match=r"demo_0: missing obs key 'ee_vel'"):
        HDF5Source(path, state_keys=["ee_pos", "ee_vel"])
    with pytest.raises(DatasetError, match="not uint8"):  # a low-dim key is not a camera
        HDF5Source(path, camera_keys=["ee_pos"])


def test_skip_bad_lists_every_skipped_demo(robomimic):
    path, written = robomimic
    with h5py.File(path, "r+") as f:
        _zero_steps(f)
        _short_obs(f)
    with pytest.raises(DatasetError, match=r"demo_1: .*and 1 more bad demo"):
        HDF5Source(path)
    src = HDF5Source(path, skip_bad=True)
    assert len(src) == 2
    assert src.demo_names == ["demo_0", "demo_10"]
    assert [s.split(": ")[:2] for s in src.skipped] == [
        [str(path), "demo_1"],
        [str(path), "demo_2"],
    ]
    assert "zero steps" in src.skipped[1]
    ep = src.episode(1)
    assert ep.index == 1 and ep.meta["demo"] == "demo_10"
    np.testing.assert_array_equal(ep.actions, written["demo_10"]["actions"].astype(np.float32))


def test_all_demos_bad_is_an_error_even_with_skip_bad(robomimic):
    path, _ = robomimic
    with pytest.raises(DatasetError, match=r"no usable demos.*demo_0: missing obs key 'nope'"):
        HDF5Source(path, state_keys=["nope"], skip_bad=True)


def test_missing_data_group(tmp_path):
    path = tmp_path / "empty.hdf5"
    with h5py.File(path, "w") as f:
        f.create_dataset("actions", data=np.zeros((3, 7)))
    with pytest.raises(DatasetError, match="no 'data' group") as info:
        HDF5Source(path, skip_bad=True)
    assert str(path) in str(info.value)


def test_not_an_hdf5_file(tmp_path):
    path = tmp_path / "notes.hdf5"
    path.write_text("not hdf5")
    with pytest.raises(DatasetError, match="cannot open as HDF5") as info:
        HDF5Source(path)
    assert str(path) in str(info.value)


def test_truncated_file(robomimic, tmp_path):
    path, _ = robomimic
    cut = tmp_path / "cut.hdf5"
    blob = path.read_bytes()
    cut.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DatasetError, match="cannot open as HDF5") as info:
        HDF5Source(cut)
    assert str(cut) in str(info.value)


def test_corrupt_chunk_names_file_and_demo(robomimic):
    path, written = robomimic
    with h5py.File(path, "r+") as f:  # store demo_2's actions compressed, then garble them
        del f["data/demo_2/actions"]
        ds = f.create_dataset(
            "data/demo_2/actions",
            data=written["demo_2"]["actions"],
            chunks=True,
            compression="gzip",
        )
        chunk = ds.id.get_chunk_info(0)
    with open(path, "r+b") as raw:
        raw.seek(chunk.byte_offset)
        raw.write(b"\xff" * chunk.size)
    src = HDF5Source(path)  # the metadata is intact, so the file opens
    expected = written["demo_1"]["actions"].astype(np.float32)
    np.testing.assert_array_equal(src.episode(1).actions, expected)
    with pytest.raises(DatasetError) as info:
        src.episode(2)
    assert str(info.value).startswith(f"{path}: demo_2: cannot read")


# -- processes ---------------------------------------------------------------------------------


def _child_read(src: HDF5Source, out: str) -> None:
    ep = src.episode(2, images=True)
    frames = src.frames(1, "eye_in_hand", np.array([5, 0, 5, 13]))
    np.savez(
        out,
        actions=ep.actions,
        states=ep.states,
        agentview=ep.images["agentview"],
        frames=frames,
        own_handle=np.array(src._pid == os.getpid()),
    )


@pytest.mark.skipif(
    "fork" not in multiprocessing.get_all_start_methods(), reason="needs the fork start method"
)
def test_fork_child_reads_identical_arrays(libero, tmp_path):
    path, written = libero
    src = HDF5Source(path)
    before = src.episode(2, images=True)  # the parent's handle is open when it forks
    frames = src.frames(1, "eye_in_hand", np.array([5, 0, 5, 13]))
    out = str(tmp_path / "child.npz")
    child = multiprocessing.get_context("fork").Process(target=_child_read, args=(src, out))
    child.start()
    child.join(60)
    assert child.exitcode == 0
    got = np.load(out)
    assert bool(got["own_handle"]), "the child must open its own handle"
    np.testing.assert_array_equal(got["actions"], before.actions)
    np.testing.assert_array_equal(got["states"], before.states)
    np.testing.assert_array_equal(got["agentview"], before.images["agentview"])
    np.testing.assert_array_equal(got["frames"], frames)
    np.testing.assert_array_equal(got["agentview"], written["demo_11"]["obs/agentview_rgb"])
    # The parent's handle still works after the child closed its copy.
    after = src.episode(2, images=True)
    np.testing.assert_array_equal(after.images["agentview"], before.images["agentview"])


def test_pickle_round_trip_reopens(libero, tmp_path):
    path, written = libero
    src = HDF5Source(path, state_keys=["ee_pos"])
    src.episode(0)
    clone = pickle.loads(pickle.dumps(src))
    assert clone.demo_names == LIBERO_ORDER and clone.state_keys == ("ee_pos",)
    np.testing.assert_array_equal(
        clone.episode(1).states, written["demo_1"]["obs/ee_pos"].astype(np.float32)
    )
    # A moved copy of the file is read from its own path.
    moved = tmp_path / "moved" / LIBERO_NAME
    moved.parent.mkdir()
    shutil.copy(path, moved)
    assert HDF5Source(moved).episode(0).meta["file"] == str(moved)
