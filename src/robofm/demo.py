"""`robofm demo`: the main job on the embedded defaults, as a list of stages.

The demo records scripted demonstrations in the built-in simulator, checks their quality,
trains the `small` preset on them from the pretrained backbones, evaluates it closed-loop on
the seen and novel splits and writes a report (table, plots, videos). `--quick` does a small
version for a first look; `--full` adds the pretrained-vs-scratch transfer experiment. The
settings of each size are the `DEMO_PLANS` entries.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from robofm import __version__
from robofm.atomic import atomic_write_text
from robofm.config import MODEL_PRESETS, TRAIN_PRESETS, config_from_dict, config_to_dict
from robofm.errors import ConfigError
from robofm.eval.transfer import Recipe
from robofm.progress import RunLog, progress
from robofm.sim.tasks import SPLITS


@dataclass(frozen=True)
class DemoConfig:
    """Options of `robofm demo`."""

    out_dir: str = "runs/demo"  # where the report, plots, videos and logs are written
    quick: bool = False  # a smaller version for a first look (under 3 minutes)
    full: bool = False  # the complete transfer experiment (pretrained vs scratch, seeds)
    seed: int = 0  # seeds recording, training and evaluation


@dataclass(frozen=True)
class Stage:
    """One step of the demo."""

    name: str  # short name shown in progress and the report
    what: str  # one line: what the stage does
    run: Callable[[DemoConfig, Path, RunLog], dict[str, Any]]  # returns results to report


def _check_setup(cfg: DemoConfig, out: Path, log: RunLog) -> dict[str, Any]:
    """Check that the installed stack imports and every preset round-trips through JSON."""
    import torch

    versions = {
        "robofm": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    for module in ("numpy", "pyarrow", "av", "h5py", "mujoco", "transformers", "websockets"):
        try:
            versions[module] = getattr(importlib.import_module(module), "__version__", "?")
        except ImportError:
            versions[module] = "not installed"
    presets = {**MODEL_PRESETS, **TRAIN_PRESETS}
    for name, preset in presets.items():
        back = config_from_dict(type(preset), config_to_dict(preset), f"preset {name}")
        if back != preset:
            raise RuntimeError(f"preset {name!r} does not round-trip through config.json")
    return {
        "versions": versions,
        "cuda_available": bool(torch.cuda.is_available()),
        "torch_threads": torch.get_num_threads(),
        "presets_checked": sorted(presets),
    }


@dataclass(frozen=True)
class DemoPlan:
    """What one demo size records, trains and evaluates."""

    tasks: tuple[str, ...]  # task families recorded, trained on and evaluated
    episodes: int  # scripted demonstrations recorded per family (train split)
    recipe: Recipe  # training and evaluation settings (robofm.eval.transfer.Recipe)
    splits: tuple[str, ...] = SPLITS  # evaluated splits, seen first


DEFAULT_RECIPE = Recipe()
DEFAULT_EPISODES = 1500  # demonstrations per task: scene variety is what teaches localisation
DEMO_PLANS = {
    "quick": DemoPlan(
        tasks=("lift",),
        episodes=10,
        recipe=replace(
            DEFAULT_RECIPE, steps=40, batch_size=16, val_episodes=2, eval_episodes=2, videos=1
        ),
    ),
    "default": DemoPlan(tasks=("lift",), episodes=DEFAULT_EPISODES, recipe=DEFAULT_RECIPE),
}
DEMO_PLANS["full"] = DEMO_PLANS["default"]  # plus the transfer experiment


def _size(cfg: DemoConfig) -> str:
    return "quick" if cfg.quick else "full" if cfg.full else "default"


def _plan(cfg: DemoConfig) -> DemoPlan:
    return DEMO_PLANS[_size(cfg)]


def _record(cfg: DemoConfig, out: Path, log: RunLog) -> dict[str, Any]:
    """Record scripted-expert demonstrations of the demo tasks as a LeRobot v3 dataset."""
    from robofm.sim.record import RecordConfig, record

    plan = _plan(cfg)
    rc = RecordConfig(tasks=plan.tasks, episodes=plan.episodes, seed=cfg.seed)
    result = record(rc, out / "data", overwrite=True)
    log.log("record.summary", summary=result["summary"])
    return {
        "dataset": str(out / "data"),
        "episodes": result["episodes"],
        "frames": result["info"]["total_frames"],
        "expert_success": {
            f: f"{s['succeeded']}/{s['tried']}" for f, s in result["summary"].items()
        },
    }


def _check(cfg: DemoConfig, out: Path, log: RunLog) -> dict[str, Any]:
    """Run the data-quality report on the recorded demonstrations."""
    from robofm.data.lerobot import LeRobotSource
    from robofm.data.quality import QualityConfig, check_dataset, write_report

    report = check_dataset(LeRobotSource(out / "data"), QualityConfig())
    paths = write_report(report, out / "quality")
    counts = report.summary.get("counts", {})
    if report.blocking:
        raise RuntimeError(f"the recorded demonstrations fail the quality check: {paths['json']}")
    return {
        "errors": counts.get("error", 0),
        "warnings": counts.get("warning", 0),
        "blocking": report.blocking,
        "report": str(paths["json"]),
    }


def _finetune(cfg: DemoConfig, out: Path, log: RunLog) -> dict[str, Any]:
    """Train the `small` preset's trunk and flow head on the demonstrations, on top of the
    pretrained MobileNetV2 (frozen, features cached) and MiniLM (frozen) encoders."""
    from robofm.eval.transfer import train_policy

    recipe = _plan(cfg).recipe
    ckpt = train_policy(recipe, "pretrained", str(out / "data"), cfg.seed, out / "train")
    return {
        "checkpoint": ckpt,
        "steps": recipe.steps,
        "batch_size": recipe.batch_size,
        "lr": recipe.lr,
        "curves": str(out / "train" / "training_curves.png"),
    }


def _eval(cfg: DemoConfig, out: Path, log: RunLog) -> dict[str, Any]:
    """Closed-loop rollouts of the fine-tuned policy on the seen and novel splits."""
    from robofm.eval.reports import success_table
    from robofm.eval.transfer import evaluate_policy, unseen_average

    plan = _plan(cfg)
    ckpt = _trained_checkpoint(out)
    ev = evaluate_policy(plan.recipe, ckpt, plan.tasks, plan.splits, out / "eval", cfg.seed)
    pooled = ev["pooled"]
    table = success_table(ev["summary"])
    print(table)
    return {
        "seen_success": pooled["train"]["rate"],
        "unseen_average": unseen_average(pooled),
        "per_split": {s: f"{r['successes']}/{r['n']}" for s, r in pooled.items()},
        "table": table,
        "report": str(out / "eval"),
    }


def _transfer(cfg: DemoConfig, out: Path, log: RunLog) -> dict[str, Any]:
    """The transfer experiment: pretrained vs scratch, two seeds, data efficiency."""
    from robofm.eval.transfer import TRANSFER_FREEZE_FRAC, TransferConfig, run_transfer

    plan = _plan(cfg)
    recipe = replace(plan.recipe, freeze_vision_frac=TRANSFER_FREEZE_FRAC)
    report = run_transfer(
        TransferConfig(out_dir=str(out / "transfer"), tasks=plan.tasks, recipe=recipe)
    )
    return {"table": report["markdown"], "report": str(out / "transfer")}


def _trained_checkpoint(out: Path) -> str:
    from robofm.train.loop import latest_checkpoint

    ckpt = latest_checkpoint(out / "train")
    if ckpt is None:
        raise RuntimeError(f"no trained checkpoint under {out / 'train'}")
    return str(ckpt)


STAGES: list[Stage] = [
    Stage("setup", "check the installed stack and the embedded presets", _check_setup),
    Stage("record", "record scripted-expert demonstrations in the MuJoCo benchmark", _record),
    Stage("check", "data-quality report on the recorded demonstrations", _check),
    Stage(
        "finetune",
        "train the `small` preset on the demonstrations from pretrained MobileNetV2 + MiniLM",
        _finetune,
    ),
    Stage("eval", "closed-loop success on the seen and novel splits", _eval),
    Stage("transfer", "pretrained vs scratch, 2 seeds, data efficiency (--full)", _transfer),
]
FULL_ONLY = frozenset({"transfer"})


def run_demo(cfg: DemoConfig) -> dict[str, Any]:
    """Run the stages in order (the transfer experiment only with `full`), write `report.md`
    and `log.jsonl` to `cfg.out_dir`.

    Returns {"ran": [...], "skipped": [...], "results": {stage: results}, "times_s":
    {stage: seconds}, "report": path}.
    """
    if cfg.quick and cfg.full:
        raise ConfigError("--quick and --full exclude each other")
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stages = [s for s in STAGES if cfg.full or s.name not in FULL_ONLY]
    skipped = [s.name for s in STAGES if s not in stages]
    ran: list[str] = []
    results: dict[str, Any] = {}
    times: dict[str, float] = {}
    t0 = time.monotonic()
    with RunLog(out) as log:
        log.log("demo.start", config=dataclasses.asdict(cfg), plan=_plain(_plan(cfg)))
        bar = progress(total=len(stages), desc="robofm demo", unit="stage")
        for stage in stages:
            bar.set_postfix_str(stage.name, refresh=True)
            ts = time.monotonic()
            with log.span(f"stage.{stage.name}") as extra:
                results[stage.name] = stage.run(cfg, out, log)
                extra["results"] = results[stage.name]
            times[stage.name] = time.monotonic() - ts
            ran.append(stage.name)
            bar.update(1)
        bar.close()
        total_s = time.monotonic() - t0
        report = out / "report.md"
        atomic_write_text(report, _report_md(cfg, ran, skipped, results, times, total_s))
        log.log("demo.end", ran=ran, skipped=skipped, times_s=times, duration_s=total_s)
    return {
        "ran": ran,
        "skipped": skipped,
        "results": results,
        "times_s": times,
        "duration_s": total_s,
        "report": str(report),
    }


def _plain(x: Any) -> Any:
    return json.loads(json.dumps(dataclasses.asdict(x)))


def _report_md(
    cfg: DemoConfig,
    ran: list[str],
    skipped: list[str],
    results: dict[str, Any],
    times: dict[str, float],
    total_s: float,
) -> str:
    plan = _plan(cfg)
    r = plan.recipe
    lines = [
        "# robofm demo report",
        "",
        f"robofm {__version__}, `{_size(cfg)}` settings, finished in {total_s / 60:.1f} min "
        f"({total_s:.0f} s); output in `{cfg.out_dir}`.",
        "",
        f"Tasks {', '.join(plan.tasks)}: {plan.episodes} scripted demonstrations per task "
        f"(train split); `{r.model_preset}` preset, {r.steps} steps of batch {r.batch_size} "
        f"at lr {r.lr:g}; "
        f"{r.eval_episodes} closed-loop episodes per task and split, replanning every "
        f"{r.replan_every} actions.",
        "",
    ]
    ev = results.get("eval")
    if ev:
        lines += [
            f"**Seen-split success: {100 * ev['seen_success']:.0f}%** "
            f"(unseen average {100 * ev['unseen_average']:.0f}%).",
            "",
            ev["table"],
            "",
            "Plots and videos: `eval/success.png`, `eval/videos/`; training curves: "
            "`train/training_curves.png`; data quality: `quality/`.",
            "",
        ]
    lines += ["## Stages", "", "| stage | time | what |", "| --- | --- | --- |"]
    for s in STAGES:
        when = f"{times[s.name]:.0f} s" if s.name in ran else "not run (`--full` only)"
        lines.append(f"| {s.name} | {when} | {s.what} |")
    lines += ["", "## Results", ""]
    for name in ran:
        lines.append(f"### {name}")
        lines.append("")
        for key, value in results[name].items():
            if key == "table":
                continue
            lines.append(f"- **{key}**: {value}")
        lines.append("")
    if "transfer" in results:
        lines += [results["transfer"]["table"], ""]
    return "\n".join(lines) + "\n"
