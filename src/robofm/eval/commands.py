"""`robofm eval POLICY`: closed-loop success of a checkpoint (or the scripted expert, or a
random policy) on built-in tasks and splits, with a table, JSON, a chart and videos."""

from __future__ import annotations

import argparse
from pathlib import Path

from robofm.errors import ConfigError
from robofm.sim.tasks import SPLITS, TASKS


def main(argv: list[str]) -> int:
    if argv and argv[0] == "offline":
        from robofm.eval.offline import offline_main

        return offline_main(argv[1:])
    if argv and argv[0] == "transfer":
        from robofm.eval.transfer import transfer_main

        return transfer_main(argv[1:])
    parser = argparse.ArgumentParser(
        prog="robofm eval",
        description="Closed-loop rollouts in the MuJoCo benchmark. POLICY is a checkpoint "
        "directory, or 'expert' / 'random' for the reference policies. Also: `robofm eval "
        "offline --help` (open-loop metrics on dataset episodes) and `robofm eval transfer "
        "--help` (pretrained vs scratch).",
    )
    parser.add_argument("policy", help="checkpoint directory, 'expert' or 'random'")
    parser.add_argument("--task", nargs="+", default=["pick_place"], help=f"of {list(TASKS)}")
    parser.add_argument("--split", nargs="+", default=["train"], help=f"of {list(SPLITS)}")
    parser.add_argument("--episodes", type=int, default=20, help="episodes per task and split")
    parser.add_argument("--replan-every", type=int, default=5, help="actions run per chunk")
    parser.add_argument("--workers", type=int, default=0, help="processes, 0 = one per core")
    parser.add_argument("--seed", type=int, default=1_000_000, help="first evaluation seed")
    parser.add_argument("--instructions", default=None, help="file of phrasings, one per line")
    parser.add_argument("--videos", type=int, default=2, help="videos per task and split")
    parser.add_argument("--out", default="runs/eval", help="report directory")
    args = parser.parse_args(argv)

    from robofm.eval.metrics import summarize
    from robofm.eval.reports import success_table
    from robofm.eval.rollouts import evaluate

    if args.policy in ("expert", "random"):
        spec = (
            {"kind": args.policy, "noise": 0.0} if args.policy == "expert" else {"kind": "random"}
        )
    else:
        if not Path(args.policy).is_dir():
            raise ConfigError(f"{args.policy}: not a checkpoint directory (or 'expert'/'random')")
        spec = {"kind": "checkpoint", "path": args.policy}
    phrasings = None
    if args.instructions:
        lines = Path(args.instructions).read_text(encoding="utf-8").splitlines()
        phrasings = [x.strip() for x in lines if x.strip()]
        if not phrasings:
            raise ConfigError(f"{args.instructions}: no instructions in the file")
    results = evaluate(
        spec,
        list(args.task),
        list(args.split),
        args.episodes,
        seed0=args.seed,
        replan_every=args.replan_every,
        workers=args.workers,
        instructions=phrasings,
        video_episodes=args.videos,
        out_dir=args.out,
    )
    print(success_table(summarize(results)))
    print(f"report written to {args.out}")
    return 0
