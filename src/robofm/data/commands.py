"""`robofm data info|check|stats|convert|paraphrase|view`: dataset tools on the command line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from robofm.data import detect_format, open_dataset
from robofm.data.episode import Episode, EpisodeSource
from robofm.errors import NotAvailableError


def _open(args: argparse.Namespace) -> EpisodeSource:
    return open_dataset(args.path, split=args.split, skip_bad=args.skip_bad)


def _report_skipped(source: EpisodeSource) -> None:
    if source.skipped:
        print(f"skipped {len(source.skipped)} bad episode(s):")
        for line in source.skipped:
            print(f"  - {line}")


def cmd_info(args: argparse.Namespace) -> int:
    source = _open(args)
    lengths = [source.episode(i).length for i in range(len(source))]
    first = source.episode(0)
    tasks = {source.episode(i).task for i in range(len(source))}
    info = {
        "path": str(args.path),
        "format": detect_format(args.path),
        "episodes": len(source),
        "frames": int(sum(lengths)),
        "fps": source.fps,
        "cameras": {k: list(v) for k, v in source.cameras.items()},
        "action_dim": int(first.actions.shape[1]),
        "state_dim": int(first.states.shape[1]),
        "episode_length": {
            "min": min(lengths),
            "median": float(np.median(lengths)),
            "max": max(lengths),
        },
        "distinct_instructions": len(tasks),
        "action_space": None if source.action_space is None else source.action_space.to_dict(),
    }
    print(json.dumps(info, indent=2))
    _report_skipped(source)
    return 0


def _require(module: str, what: str) -> Any:
    """Import a data module that may not be in this build, with a clear error if missing."""
    import importlib

    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name != module:
            raise
        raise NotAvailableError(f"{what} is not in this build yet ({module} is missing)") from e


def cmd_check(args: argparse.Namespace) -> int:
    quality = _require("robofm.data.quality", "robofm data check")
    QualityConfig, check_dataset = quality.QualityConfig, quality.check_dataset
    format_report, write_report = quality.format_report, quality.write_report

    source = _open(args)
    report = check_dataset(source, QualityConfig())
    print(format_report(report))
    paths = write_report(report, Path(args.out))
    for name, path in paths.items():
        print(f"wrote {name}: {path}")
    _report_skipped(source)
    if report.blocking and not args.no_fail:
        print(
            "robofm data check: blocking problems found (exit 1; --no-fail to ignore)",
            file=sys.stderr,
        )
        return 1
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    from robofm.data.stats import compute_stats, save_stats

    source = _open(args)
    stats = compute_stats(source)
    for key, st in stats.items():
        print(f"{key}:")
        for name in ("mean", "std", "min", "max", "q01", "q99"):
            if name in st:
                values = np.asarray(st[name]).reshape(-1)
                print(f"  {name:>4}: " + " ".join(f"{v:9.4f}" for v in values[:12]))
    if args.out:
        save_stats(Path(args.out), stats)
        print(f"wrote {args.out}")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from robofm.data.lerobot_write import WriteOptions, write_lerobot

    source = _open(args)
    opts = WriteOptions(video=not args.images, codec=args.codec, robot_type=args.robot_type)
    info = write_lerobot(
        source, Path(args.out), opts, overwrite=args.overwrite, skip_bad=args.skip_bad
    )
    print(
        f"wrote LeRobot v3.0 dataset {args.out}: {info['total_episodes']} episodes, "
        f"{info['total_frames']} frames, {info['total_tasks']} tasks"
    )
    if info["skipped"]:
        print(f"skipped {len(info['skipped'])} bad episode(s):")
        for line in info["skipped"]:
            print(f"  - {line}")
    return 0


class _RelabelledSource:
    """A source whose episode instructions are replaced by a list of new ones."""

    def __init__(self, base: EpisodeSource, tasks: list[str]) -> None:
        self.base, self.tasks = base, tasks
        self.name, self.fps, self.cameras = base.name, base.fps, base.cameras
        self.action_space, self.skipped = base.action_space, []

    def __len__(self) -> int:
        return len(self.base)

    def episode(self, i: int, *, images: bool = False) -> Episode:
        ep = self.base.episode(i, images=images)
        ep.task = self.tasks[i]
        return ep

    def frames(self, i: int, cam: str, steps: np.ndarray) -> np.ndarray:
        return self.base.frames(i, cam, steps)


def cmd_paraphrase(args: argparse.Namespace) -> int:
    from robofm.data.lerobot_write import write_lerobot

    diversify_tasks = _require("robofm.data.language", "robofm data paraphrase").diversify_tasks

    source = _open(args)
    old = [source.episode(i).task for i in range(len(source))]
    new = diversify_tasks(old, seed=args.seed)
    write_lerobot(_RelabelledSource(source, new), Path(args.out), overwrite=args.overwrite)
    print(f"wrote {args.out}: {len(set(old))} distinct instruction(s) -> {len(set(new))}")
    for before, after in list(zip(old, new, strict=True))[:8]:
        print(f"  {before!r} -> {after!r}")
    return 0


def cmd_view(args: argparse.Namespace) -> int:
    from robofm.data.view import contact_sheet, episode_video

    source = _open(args)
    out = Path(args.out)
    png = contact_sheet(source, args.episode, out.with_suffix(".png"))
    print(f"wrote {png}")
    if args.mp4:
        print(f"wrote {episode_video(source, args.episode, out.with_suffix('.mp4'))}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="robofm data",
        description="Inspect, check, convert and diversify robot demonstration datasets "
        "(LeRobot v3/v2.1 directories, RLDS/TFDS directories, robomimic/LIBERO .hdf5 files).",
    )
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    def add(name: str, help_text: str, fn: Any) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("path", help="dataset directory or .hdf5 file")
        p.add_argument("--split", default="train", help="RLDS split (default: train)")
        p.add_argument(
            "--skip-bad",
            action="store_true",
            help="skip malformed episodes and list them instead of failing",
        )
        p.set_defaults(fn=fn)
        return p

    add("info", "print format, episodes, frames, cameras and dimensions", cmd_info)
    p = add("check", "data-quality report: terminal summary, JSON and PNG plots", cmd_check)
    p.add_argument("--out", default="runs/data_check", help="report directory")
    p.add_argument("--no-fail", action="store_true", help="exit 0 even on blocking problems")
    p = add("stats", "per-dimension mean/std/min/max/q01/q99 of actions and states", cmd_stats)
    p.add_argument("--out", default="", help="also write the stats as JSON here")
    p = add("convert", "convert any supported dataset to LeRobot v3.0", cmd_convert)
    p.add_argument("out", help="output dataset directory")
    p.add_argument("--images", action="store_true", help="store PNG images instead of mp4")
    p.add_argument("--codec", default="libx264", choices=["libx264", "libsvtav1"])
    p.add_argument("--robot-type", default="unknown")
    p.add_argument("--overwrite", action="store_true")
    p = add("paraphrase", "write a copy with varied instruction phrasings", cmd_paraphrase)
    p.add_argument("out", help="output dataset directory (LeRobot v3.0)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true")
    p = add("view", "contact sheet PNG (and mp4) of one episode with its actions", cmd_view)
    p.add_argument("--episode", type=int, default=0)
    p.add_argument("--out", default="runs/data_view/episode")
    p.add_argument("--mp4", action="store_true", help="also write an mp4 of the episode")
    return parser


def main(argv: list[str]) -> int:
    """Entry point for `robofm data ...`; returns the exit status."""
    args = build_parser().parse_args(argv)
    return int(args.fn(args))
