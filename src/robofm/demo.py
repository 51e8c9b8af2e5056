"""`robofm demo`: the main job on the embedded defaults, as a list of stages.

The full demo records demonstrations in the built-in simulator, checks their quality,
fine-tunes the `small` preset from the pretrained backbones, evaluates on seen and novel
splits and writes a report. Each stage is an entry in `STAGES`; a stage whose capability has
not landed in this build is listed with the reason and skipped, and the report says so, so the
demo never pretends to have done work it did not do.
"""

from __future__ import annotations

import dataclasses
import importlib
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from robofm import __version__
from robofm.atomic import atomic_write_text
from robofm.config import MODEL_PRESETS, TRAIN_PRESETS, config_from_dict, config_to_dict
from robofm.progress import RunLog, progress


@dataclass(frozen=True)
class DemoConfig:
    """Options of `robofm demo`."""

    out_dir: str = "runs/demo"  # where the report, plots, videos and logs are written
    quick: bool = False  # a smaller version for a first look (under 3 minutes)
    full: bool = False  # the complete transfer experiment (pretrained vs scratch, seeds)
    seed: int = 0  # seeds recording, training and evaluation


@dataclass(frozen=True)
class Stage:
    """One step of the demo. `run` is None while its capability has not landed."""

    name: str  # short name shown in progress and the report
    what: str  # one line: what the stage does
    run: Callable[[DemoConfig, Path, RunLog], dict[str, Any]] | None  # returns results to report
    pending: str = ""  # why `run` is None: the capability it waits for


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


DEMO_TASKS = ("lift", "pick_place")  # task families the demo records and trains on
DEMO_EPISODES = {"quick": 8, "default": 100, "full": 200}  # recorded episodes per family


def _size(cfg: DemoConfig) -> str:
    return "quick" if cfg.quick else "full" if cfg.full else "default"


def _record(cfg: DemoConfig, out: Path, log: RunLog) -> dict[str, Any]:
    """Record scripted-expert demonstrations of the demo tasks as a LeRobot v3 dataset."""
    from robofm.sim.record import RecordConfig, record

    rc = RecordConfig(tasks=DEMO_TASKS, episodes=DEMO_EPISODES[_size(cfg)], seed=cfg.seed)
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
    return {
        "errors": counts.get("error", 0),
        "warnings": counts.get("warning", 0),
        "blocking": report.blocking,
        "report": str(paths["json"]),
    }


STAGES: list[Stage] = [
    Stage("setup", "check the installed stack and the embedded presets", _check_setup),
    Stage("record", "record scripted-expert demonstrations in the MuJoCo benchmark", _record),
    Stage("check", "data-quality report on the recorded demonstrations", _check),
    Stage(
        "finetune",
        "fine-tune the `small` preset from pretrained MobileNetV2 + MiniLM",
        None,
        "the models and training recipes (issues #5, #6)",
    ),
    Stage("eval", "closed-loop success on seen and novel splits", None, "evaluation (issue #7)"),
]


def run_demo(cfg: DemoConfig) -> dict[str, Any]:
    """Run every available stage in order, write `report.md` and `log.jsonl` to `cfg.out_dir`.

    Returns {"ran": [...], "skipped": [...], "results": {stage: results}, "report": path}.
    """
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ran: list[str] = []
    skipped: list[str] = []
    results: dict[str, Any] = {}
    t0 = time.monotonic()
    with RunLog(out) as log:
        log.log("demo.start", config=dataclasses.asdict(cfg))
        bar = progress(total=len(STAGES), desc="robofm demo", unit="stage")
        for stage in STAGES:
            bar.set_postfix_str(stage.name, refresh=False)
            if stage.run is None:
                skipped.append(stage.name)
                log.log("stage.skipped", stage=stage.name, waits_for=stage.pending)
            else:
                with log.span(f"stage.{stage.name}") as extra:
                    results[stage.name] = stage.run(cfg, out, log)
                    extra["results"] = results[stage.name]
                ran.append(stage.name)
            bar.update(1)
        bar.close()
        total_s = time.monotonic() - t0
        report = out / "report.md"
        atomic_write_text(report, _report_md(cfg, ran, skipped, results, total_s))
        log.log("demo.end", ran=ran, skipped=skipped, duration_s=total_s)
    return {"ran": ran, "skipped": skipped, "results": results, "report": str(report)}


def _report_md(
    cfg: DemoConfig, ran: list[str], skipped: list[str], results: dict[str, Any], total_s: float
) -> str:
    by_name = {s.name: s for s in STAGES}
    lines = [
        "# robofm demo report",
        "",
        f"robofm {__version__}; finished in {total_s:.1f} s; output in `{cfg.out_dir}`.",
        "",
        "| stage | status | what |",
        "| --- | --- | --- |",
    ]
    for s in STAGES:
        status = "done" if s.name in ran else f"not in this build (waits for {s.pending})"
        lines.append(f"| {s.name} | {status} | {s.what} |")
    lines += ["", "## Results", ""]
    for name in ran:
        lines.append(f"### {name}: {by_name[name].what}")
        lines.append("")
        for key, value in results[name].items():
            lines.append(f"- **{key}**: {value}")
        lines.append("")
    if skipped:
        lines.append(
            "No success rate is reported: the stages that record, train and evaluate a policy "
            "are not in this build yet."
        )
    return "\n".join(lines) + "\n"
