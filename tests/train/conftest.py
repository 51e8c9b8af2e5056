"""A tiny learnable dataset on disk (LeRobot v3, PNG frames) for training tests."""

from __future__ import annotations

import numpy as np
import pytest

from robofm.data.episode import Episode, InMemorySource
from robofm.data.lerobot_write import WriteOptions, write_lerobot
from robofm.spaces import ActionSpace


def toy_space(robot: str = "toy", high: float = 1.0) -> ActionSpace:
    return ActionSpace(
        robot=robot,
        names=("a0", "a1", "a2"),
        units=("m", "m", "1"),
        mode=("delta", "delta", "absolute"),
        frame="end_effector",
        low=(-high,) * 3,
        high=(high,) * 3,
        control_hz=10.0,
        chunk_len=4,
    )


def toy_episodes(n: int = 10, length: int = 20, seed: int = 0) -> list[Episode]:
    """Learnable: the action is a fixed function of the state and of the instruction."""
    rng = np.random.default_rng(seed)
    eps = []
    for i in range(n):
        state = rng.normal(size=(length, 2)).astype(np.float32)
        sign = 1.0 if i % 2 == 0 else -1.0
        actions = np.stack(
            [0.5 * state[:, 0], sign * 0.5 * np.ones(length), 0.3 * state[:, 1]], axis=1
        ).astype(np.float32)
        img = np.full((length, 16, 16, 3), 60 + 10 * i, dtype=np.uint8)
        task = "go left" if sign > 0 else "go right"
        eps.append(Episode(i, task, actions, state, np.arange(length) / 10.0, {"front": img}))
    return eps


def write_toy(path, space: ActionSpace | None = None, **kw) -> str:
    src = InMemorySource(
        toy_episodes(**kw), fps=10.0, name="toy", action_space=space or toy_space()
    )
    write_lerobot(src, path, WriteOptions(video=False))
    return str(path)


@pytest.fixture(scope="session")
def toy_dataset(tmp_path_factory) -> str:
    return write_toy(tmp_path_factory.mktemp("data") / "toy")
