"""`robofm <verb>`: parse a config, call the library, print and plot the results.

Verbs live in one explicit table (`VERBS`). A verb whose capability has not landed yet still
answers `--help` (saying so) and exits with status 2 when run, rather than pretending.
User errors (`RobofmError`) print one line naming the file or field at fault, exit status 2.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from robofm import __version__
from robofm.errors import RobofmError

EXIT_USAGE = 2  # bad input, unknown verb, or a verb not in this build


@dataclass(frozen=True)
class Verb:
    """One CLI verb. `run(argv) -> exit status`; None while the capability is pending."""

    summary: str  # one line for `robofm --help`
    usage: str  # the sub-verbs / arguments it takes, for `robofm VERB --help`
    run: Callable[[list[str]], int] | None = None  # handler; None = not in this build
    pending: str = ""  # the issue that brings it, when run is None


def _demo(argv: list[str]) -> int:
    import tyro

    from robofm.demo import DemoConfig, run_demo

    cfg = tyro.cli(
        DemoConfig,
        args=argv,
        prog="robofm demo",
        description="Record demonstrations, check them, train a policy from the pretrained "
        "backbones, evaluate it closed-loop on seen and novel splits and report, on the embedded "
        "defaults. --quick: a smaller version for a first look; --full: add the transfer "
        "experiment (pretrained vs scratch).",
    )
    result = run_demo(cfg)
    times = ", ".join(f"{k} {v:.0f}s" for k, v in result["times_s"].items())
    print(f"robofm demo: ran {', '.join(result['ran'])} ({times})")
    if "eval" in result["results"]:
        ev = result["results"]["eval"]
        print(
            f"robofm demo: seen-split success {100 * ev['seen_success']:.0f}%, "
            f"unseen average {100 * ev['unseen_average']:.0f}%"
        )
    print(f"robofm demo: report written to {result['report']}")
    return 0


def _data(argv: list[str]) -> int:
    from robofm.data.commands import main as data_main

    return data_main(argv)


def _bench(argv: list[str]) -> int:
    from robofm.deploy.bench import main as bench_main

    return bench_main(argv)


def _train(argv: list[str]) -> int:
    import tyro

    from robofm.config import TRAIN_PRESETS, get_preset
    from robofm.train.recipes import RECIPES, with_model

    def take(flag: str, default: str) -> str:
        if flag in argv:
            i = argv.index(flag)
            if i + 1 >= len(argv):
                raise SystemExit(f"robofm train: {flag} needs a value")
            value = argv[i + 1]
            del argv[i : i + 2]
            return value
        return default

    argv = list(argv)
    preset = take("--preset", "finetune")
    model_preset = take("--model-preset", "small")
    base = with_model(get_preset(TRAIN_PRESETS, preset, "training preset"), model_preset)
    cfg = tyro.cli(
        type(base),
        default=base,
        args=argv,
        prog="robofm train",
        description=f"Training recipe '{preset}' on model preset '{model_preset}' (choose with "
        f"--preset {'|'.join(RECIPES)} and --model-preset NAME); any field below overrides.",
    )
    result = RECIPES[preset](cfg)
    print(f"robofm train: {result['step']} steps; checkpoint {result['checkpoint']}")
    if result.get("val"):
        print(f"  validation open-loop MAE: {result['val']['val_mae']:.4f} (robot units)")
    if result.get("merged"):
        print(f"  LoRA merged into {result['merged']}")
    return 0


def _eval(argv: list[str]) -> int:
    from robofm.eval.commands import main as eval_main

    return eval_main(argv)


def _serve(argv: list[str]) -> int:
    from robofm.serve.commands import main as serve_main

    return serve_main(argv)


def _run(argv: list[str]) -> int:
    from robofm.serve.run import main as run_main

    return run_main(argv)


def _deploy(argv: list[str]) -> int:
    from robofm.deploy.commands import main as deploy_main

    return deploy_main(argv)


def _sim(argv: list[str]) -> int:
    from robofm.sim.commands import main as sim_main

    return sim_main(argv)


VERBS: dict[str, Verb] = {
    "data": Verb(
        "inspect, check, convert and paraphrase robot datasets",
        "robofm data info|check|stats|convert|paraphrase|view PATH",
        run=_data,
    ),
    "train": Verb(
        "pretrain or fine-tune a VLA policy",
        "robofm train --preset finetune|pretrain [--model-preset small] --data.paths DIR ...",
        run=_train,
    ),
    "eval": Verb(
        "closed-loop and offline evaluation, the transfer experiment",
        "robofm eval CHECKPOINT|expert|random --task T --split train novel_object ... | "
        "robofm eval offline CHECKPOINT --data DIR | robofm eval transfer [--seeds 0 1]",
        run=_eval,
    ),
    "serve": Verb(
        "serve a checkpoint over openpi's websocket protocol",
        "robofm serve CHECKPOINT --port P [--api-key KEY] [--rate-limit-hz R]",
        run=_serve,
    ),
    "run": Verb(
        "drive the sim benchmark through a policy server, the runtime and the safety layer",
        "robofm run --sim TASK --server ws://HOST:PORT [--episodes N] [--execute-k K] [--sync]",
        run=_run,
    ),
    "bench": Verb(
        "parameters, memory, latency and control rate per preset and head, or per checkpoint",
        "robofm bench [--preset NAME ...] [--head NAME ...] [--compile] [--json PATH] | "
        "robofm bench --checkpoint A [--checkpoint B] [--success-task T] | "
        "robofm bench --params [--preset NAME ...]",
        run=_bench,
    ),
    "deploy": Verb(
        "make a checkpoint faster to run: INT8 quantization, distillation, export",
        "robofm deploy quantize CHECKPOINT --int8 [--out DST] | "
        "robofm deploy distill TEACHER --data DIR [--student PRESET] | "
        "robofm deploy export CHECKPOINT --out DIR",
        run=_deploy,
    ),
    "demo": Verb(
        "the main job end to end on the embedded defaults",
        "robofm demo [--quick | --full] [--out-dir DIR]",
        run=_demo,
    ),
    "sim": Verb(
        "the built-in MuJoCo benchmark: record demonstrations, play episodes",
        "robofm sim tasks | record --task T --episodes N --out DIR | play --task T --out F.mp4",
        run=_sim,
    ),
}


def _top_help() -> str:
    width = max(map(len, VERBS))
    lines = [
        f"robofm {__version__}: Vision-Language-Action policies, from pretrained backbones to a "
        "robot.",
        "",
        "usage: robofm VERB [options]     (robofm VERB --help for a verb's options)",
        "",
        "verbs:",
    ]
    for name, verb in VERBS.items():
        note = "" if verb.run else "   [not in this build yet]"
        lines.append(f"  {name:<{width}}  {verb.summary}{note}")
    lines += [
        "",
        "options:",
        "  -h, --help     show this help",
        "  --version      print the version",
    ]
    return "\n".join(lines)


def _pending(name: str, verb: Verb, argv: list[str]) -> int:
    text = (
        f"usage: {verb.usage}\n\n{verb.summary}.\n\n"
        f"robofm {name} is not in this build yet: it lands with {verb.pending}."
    )
    if any(a in ("-h", "--help") for a in argv):
        print(text)
        return 0
    print(f"robofm {name}: not in this build yet (it lands with {verb.pending}).", file=sys.stderr)
    return EXIT_USAGE


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `robofm` console script; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(_top_help())
        return 0 if args else EXIT_USAGE
    if args[0] == "--version":
        print(f"robofm {__version__}")
        return 0
    name, rest = args[0], args[1:]
    verb = VERBS.get(name)
    if verb is None:
        print(f"robofm: unknown verb {name!r}; valid: {', '.join(VERBS)}", file=sys.stderr)
        return EXIT_USAGE
    if verb.run is None:
        return _pending(name, verb, rest)
    try:
        return verb.run(rest)
    except RobofmError as e:
        print(f"robofm {name}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"robofm {name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
