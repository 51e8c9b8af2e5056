"""`robofm sim tasks|record|play`: the built-in benchmark on the command line."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from robofm.sim.tasks import SPLITS, TASKS


def cmd_tasks(args: argparse.Namespace) -> int:
    from robofm.sim.tasks import TRAIN_TEMPLATES

    for name, fam in TASKS.items():
        print(f"{name:<11} {fam.summary} (max {fam.max_steps} steps)")
        print(f'{"":<11} e.g. "{TRAIN_TEMPLATES[name][0]}"')
    print(f"splits: {', '.join(SPLITS)}")
    return 0


def cmd_record(args: argparse.Namespace) -> int:
    from robofm.sim.record import RecordConfig, record

    cfg = RecordConfig(
        tasks=tuple(args.task),
        episodes=args.episodes,
        split=args.split,
        seed=args.seed,
        noise=args.noise,
        image_size=args.size,
        workers=args.workers,
        keep_failed=args.keep_failed,
    )
    result = record(cfg, args.out, overwrite=args.overwrite)
    for family, s in result["summary"].items():
        print(
            f"{family}: kept {s['kept']} episodes; expert succeeded in {s['succeeded']} of "
            f"{s['tried']} tries ({100 * s['success_rate']:.0f}%)"
        )
    info = result["info"]
    print(f"wrote {args.out}: {info['total_episodes']} episodes, {info['total_frames']} frames")
    return 0


def play_episode(
    task: str,
    out: str | Path,
    *,
    split: str = "train",
    seed: int = 0,
    noise: float = 0.0,
    size: int = 256,
    instruction: str | None = None,
) -> dict[str, Any]:
    """Run the scripted expert on one episode and write an mp4 of both cameras side by side
    (`size` px each, 10 fps) with the instruction and the step's success drawn on top.
    The file appears only once complete. Returns success, steps and the instruction."""
    from PIL import Image, ImageDraw

    from robofm.data.video import VideoEncoder
    from robofm.sim.env import TabletopEnv
    from robofm.sim.experts import ScriptedExpert

    out = Path(out)
    env = TabletopEnv(task=task, split=split, image_size=size)
    options = {"instruction": instruction} if instruction else None
    obs, info = env.reset(seed=seed, options=options)
    expert = ScriptedExpert(env, noise=noise, seed=seed + 1_000_003)
    expert.reset()
    banner = 28
    w, h = size * len(env.config.cameras), size + banner
    tmp = out.with_name(f".{out.name}.part.mp4")
    out.parent.mkdir(parents=True, exist_ok=True)
    enc = VideoEncoder(tmp, env.metadata["render_fps"], w, h)

    def frame(o: dict, status: str) -> None:
        canvas = Image.new("RGB", (w, h))
        tiles = np.concatenate([o["images"][c] for c in env.config.cameras], axis=1)
        canvas.paste(Image.fromarray(tiles), (0, banner))
        draw = ImageDraw.Draw(canvas)
        draw.text((4, 2), o["prompt"][: w // 6], fill=(255, 255, 255))
        draw.text((4, 15), status, fill=(120, 255, 120) if "success" in status else (200, 200, 200))
        enc.write(np.asarray(canvas)[None])

    try:
        frame(obs, f"{task}/{split} seed {seed} step 0")
        done = False
        while not done:
            obs, _, terminated, truncated, info = env.step(expert.act())
            done = terminated or truncated
            status = "success" if info["success"] else f"step {info['step']}"
            frame(obs, f"{task}/{split} seed {seed} {status}")
        enc.close()
        os.replace(tmp, out)
    finally:
        env.close()
        if tmp.exists():
            tmp.unlink()
    return {"success": info["success"], "steps": info["step"], "instruction": obs["prompt"]}


def cmd_play(args: argparse.Namespace) -> int:
    result = play_episode(
        args.task,
        args.out,
        split=args.split,
        seed=args.seed,
        noise=args.noise,
        size=args.size,
        instruction=args.instruction,
    )
    print(json.dumps(result))
    print(f"wrote {args.out}")
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="robofm sim", description="The built-in MuJoCo tabletop benchmark."
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("tasks", help="list task families and splits").set_defaults(fn=cmd_tasks)

    rec = sub.add_parser("record", help="record scripted-expert demonstrations (LeRobot v3)")
    rec.add_argument("--task", nargs="+", required=True, help="families, comma list, or all")
    rec.add_argument("--episodes", type=int, default=50, help="successful episodes per family")
    rec.add_argument("--out", required=True, help="dataset directory to create")
    rec.add_argument("--split", default="train", choices=SPLITS)
    rec.add_argument("--seed", type=int, default=0, help="first seed")
    rec.add_argument("--noise", type=float, default=1.0, help="expert noise scale, 0 = clean")
    rec.add_argument("--size", type=int, default=96, help="camera image size, px")
    rec.add_argument("--workers", type=int, default=0, help="processes, 0 = one per core")
    rec.add_argument("--keep-failed", action="store_true", help="keep failed episodes too")
    rec.add_argument("--overwrite", action="store_true", help="replace an existing dataset")
    rec.set_defaults(fn=cmd_record)

    play = sub.add_parser("play", help="render one expert episode to mp4")
    play.add_argument("--task", required=True, help=f"one of {', '.join(TASKS)}")
    play.add_argument("--out", required=True, help="mp4 path")
    play.add_argument("--split", default="train", choices=SPLITS)
    play.add_argument("--seed", type=int, default=0)
    play.add_argument("--noise", type=float, default=0.0)
    play.add_argument("--size", type=int, default=256, help="px per camera")
    play.add_argument("--instruction", default=None, help="override the instruction text")
    play.set_defaults(fn=cmd_play)

    args = parser.parse_args(argv)
    return args.fn(args)
