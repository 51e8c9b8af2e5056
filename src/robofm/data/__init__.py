"""Robot demonstration data: readers, writers, training windows, mixtures, stats and checks.

`open_dataset(path)` picks the reader from what is on disk:

- a directory with `meta/info.json` is a LeRobotDataset (v3.0, v2.1, v2.0);
- a directory with `features.json` and `dataset_info.json` (or one version subdirectory
  holding them) is an RLDS/TFDS dataset (`split` picks train/val/...);
- a `.hdf5` / `.h5` file is a robomimic/LIBERO demonstration file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from robofm.data.episode import DatasetError, EpisodeSource


def detect_format(path: str | Path) -> str:
    """ "lerobot", "rlds" or "hdf5" for `path`; `DatasetError` naming the path otherwise."""
    path = Path(path)
    if path.is_file() and path.suffix.lower() in (".hdf5", ".h5"):
        return "hdf5"
    if (path / "meta" / "info.json").is_file():
        return "lerobot"
    if (path / "features.json").is_file() or _rlds_version_dir(path) is not None:
        return "rlds"
    if not path.exists():
        raise DatasetError(f"{path}: no such file or directory")
    raise DatasetError(
        f"{path}: not a recognised dataset (expected meta/info.json for LeRobot, "
        "features.json + dataset_info.json for RLDS, or a .hdf5 file)"
    )


def _rlds_version_dir(path: Path) -> Path | None:
    if not path.is_dir():
        return None
    versions = sorted(p for p in path.iterdir() if (p / "features.json").is_file())
    return versions[-1] if versions else None


def open_dataset(
    path: str | Path, *, split: str = "train", skip_bad: bool = False, **kwargs: Any
) -> EpisodeSource:
    """Open any supported dataset as an `EpisodeSource`; extra kwargs go to the reader."""
    path = Path(path)
    fmt = detect_format(path)
    if fmt == "lerobot":
        from robofm.data.lerobot import LeRobotSource

        return LeRobotSource(path, skip_bad=skip_bad, **kwargs)
    if fmt == "rlds":
        from robofm.data.rlds import RLDSSource

        root = path if (path / "features.json").is_file() else _rlds_version_dir(path)
        return RLDSSource(root, split=split, skip_bad=skip_bad, **kwargs)
    from robofm.data.hdf5 import HDF5Source

    return HDF5Source(path, skip_bad=skip_bad, **kwargs)
