"""`robofm deploy distill TEACHER --data DIR [--student PRESET] ...`: the argument parser and the
printed report of `robofm.deploy.distill` (and, with `--eval-episodes`, the closed-loop
student-vs-teacher comparison of `robofm.deploy.compare`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from robofm.deploy.compare import SPLITS


def add_distill(sub) -> None:
    """Register the `distill` subcommand on an argparse subparsers object."""
    from robofm.deploy.distill import DistillConfig

    d = DistillConfig(teacher="", data=())
    p = sub.add_parser(
        "distill",
        help="distil a checkpoint into a small student (teacher labels + DAgger relabelling)",
        description="Train a small student to output TEACHER's action chunks: on the "
        "demonstrations in --data, then on states from the student's own rollouts in the sim "
        "(DAgger), relabelled by the teacher. Writes OUT/student (a checkpoint), "
        "OUT/distill.json and OUT/distill.png; with --eval-episodes also the closed-loop "
        "student-vs-teacher comparison (success per split, latency, control rate).",
    )
    p.add_argument("teacher", help="teacher checkpoint directory")
    p.add_argument("--data", nargs="+", required=True, help="demonstration datasets to label")
    p.add_argument("--student", default=d.student, help=f"student preset (default {d.student})")
    p.add_argument("--student-head", default="", help="override the student preset's head")
    p.add_argument(
        "--student-image-size", type=int, default=0, help="student camera px (0 = preset's)"
    )
    p.add_argument("--out", default=None, help="output directory (default: TEACHER-distill)")
    p.add_argument("--steps", type=int, default=d.steps, help="steps on the labelled demos")
    p.add_argument("--rounds", type=int, default=d.dagger_rounds, help="DAgger rounds")
    p.add_argument("--round-steps", type=int, default=d.dagger_steps, help="steps per round")
    p.add_argument("--rollouts", type=int, default=d.rollouts, help="student episodes per round")
    p.add_argument("--beta", type=float, default=d.beta, help="teacher share in round 1")
    p.add_argument("--task", default=d.task, help="sim task the rollouts run")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--val-episodes", type=int, default=d.val_episodes, help="held-out demos")
    p.add_argument("--max-episodes", type=int, default=0, help="demos used per dataset; 0 = all")
    p.add_argument("--no-pretrained", action="store_true", help="student backbones random")
    p.add_argument("--train-vision", action="store_true", help="also train the student's vision")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--eval-episodes", type=int, default=0, help="closed-loop episodes per split; 0 = skip"
    )
    p.add_argument("--splits", nargs="+", default=list(SPLITS), help="splits to evaluate")
    p.add_argument("--workers", type=int, default=0, help="eval processes; 0 = one per core")


def run_distill(args: argparse.Namespace) -> int:
    """Run `robofm deploy distill` from parsed arguments; prints the report."""
    from robofm.deploy.compare import compare_checkpoints, format_comparison
    from robofm.deploy.distill import DistillConfig, distill

    teacher = Path(args.teacher)
    out = Path(args.out) if args.out else teacher.with_name(teacher.name + "-distill")
    cfg = DistillConfig(
        teacher=str(teacher),
        data=tuple(args.data),
        out_dir=str(out),
        student=args.student,
        student_head=args.student_head,
        student_image_size=args.student_image_size,
        student_pretrained=not args.no_pretrained,
        freeze_vision=not args.train_vision,
        steps=args.steps,
        dagger_rounds=args.rounds,
        dagger_steps=args.round_steps,
        rollouts=args.rollouts,
        beta=args.beta,
        task=args.task,
        batch_size=args.batch_size,
        lr=args.lr,
        val_episodes=args.val_episodes,
        max_episodes=args.max_episodes,
        seed=args.seed,
    )
    report = distill(cfg)
    print(format_report(report))
    if args.eval_episodes:
        rows = compare_checkpoints(
            {"teacher": str(teacher), "student": report["student"]["path"]},
            task=args.task,
            splits=tuple(args.splits),
            episodes=args.eval_episodes,
            workers=args.workers,
            image_size=_image_size(teacher),
            out_dir=out,
        )
        print(format_comparison(rows, tuple(args.splits)))
        print(f"wrote {out / 'comparison.json'} and {out / 'comparison.png'}")
    return 0


def _image_size(ckpt: Path) -> int:
    from robofm.models.checkpoint import read_checkpoint_meta

    return read_checkpoint_meta(ckpt)[0].image_size


def format_report(report: dict[str, Any]) -> str:
    """Student size vs teacher, held-out error per stage and the DAgger rounds, as text."""
    t, s = report["teacher"], report["student"]
    names, units = report["action_names"], report["action_units"]
    lines = [
        f"robofm deploy distill: {report['seconds']:.0f} s; student {s['path']}",
        f"  teacher {t['params'] / 1e6:.1f}M params ({t['vision']} + {t['language']}); "
        f"student {s['params'] / 1e6:.1f}M ({s['vision']} + {s['language']}, preset "
        f"{s['preset']}); {report['demo_rows']} demo states, {report['val_rows']} held out",
        "  student error vs teacher on held-out demo states (mean |a_s - a_t| over the chunk):",
    ]
    head = (
        "    "
        + f"{'when':<16}{'step':>6}{'norm':>8}"
        + "".join(f"{n + ' ' + u:>14}" for n, u in zip(names, units, strict=True))
    )
    lines.append(head)
    for h in report["held_out"]:
        if h["when"] == "train":
            continue
        cells = "".join(f"{v:>14.4g}" for v in h["mae"])
        lines.append(f"    {h['when']:<16}{h['step']:>6}{h['mae_norm']:>8.3f}{cells}")
    for r in report["rounds"]:
        before = r["on_policy_error_before_training"]["mae_norm"]
        after = r["on_policy_error_after_training"]["mae_norm"]
        lines.append(
            f"  DAgger round {r['round']} (beta {r['beta']:.2f}): {r['successes']}/{r['episodes']}"
            f" rollouts succeeded, {r['new_states']} new states relabelled; student error on "
            f"them {before:.3f} before training, {after:.3f} after (normalised)"
        )
    return "\n".join(lines)
