"""The transfer experiment: pretrained backbones vs the same policy from scratch.

Two arms train with one recipe, compute and data (scripted demonstrations from the `train`
split only) and are evaluated closed-loop on every split:

- `pretrained`: ImageNet MobileNetV2 vision and the MiniLM sentence encoder (frozen), with
  the freeze-then-unfreeze schedule for the vision encoder;
- `scratch`: the same vision architecture from random init and the from-scratch word
  encoder in place of MiniLM, on the same schedule.

The table follows the RT-2 paper's layout (seen tasks, then each unseen category and their
average), one row per arm, mean over training seeds with the spread across seeds. A second
sweep trains both arms on fewer and more demonstrations (data efficiency).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from robofm.atomic import atomic_write_text
from robofm.config import MODEL_PRESETS, DataConfig, ModelConfig, OptimConfig, TrainConfig
from robofm.errors import ConfigError
from robofm.progress import RunLog

ARMS = ("pretrained", "scratch")
UNSEEN = ("novel_object", "novel_instruction", "novel_scene")
TRANSFER_FREEZE_FRAC = 0.8  # freeze-then-unfreeze: the last 20% of steps train the encoder
SPLIT_LABELS = {
    "train": "seen",
    "novel_object": "unseen objects",
    "novel_instruction": "unseen instructions",
    "novel_scene": "unseen scenes",
}


@dataclass(frozen=True)
class Recipe:
    """How one policy is trained and evaluated; shared by both arms and by `robofm demo`."""

    model_preset: str = "small"  # a key of MODEL_PRESETS
    steps: int = 4000  # optimizer steps
    batch_size: int = 64  # windows per step
    lr: float = 1e-3  # peak lr; the readout, trunk and head start from random init
    warmup_steps: int = 50  # linear warmup
    freeze_vision_frac: float = 1.0  # vision frozen for this fraction of the steps
    val_episodes: int = 4  # held out per dataset for the open-loop validation
    eval_episodes: int = 20  # closed-loop episodes per task and split
    replan_every: int = 2  # actions of a chunk executed before asking for the next
    videos: int = 2  # rollout videos kept per task and split
    workers: int = 0  # evaluation processes, 0 = one per core

    def model(self, arm: str) -> tuple[ModelConfig, bool]:
        """The arm's architecture and whether its backbones load pretrained weights."""
        base = MODEL_PRESETS[self.model_preset]
        if arm == "pretrained":
            return base, True
        if arm == "scratch":  # same vision architecture, random init; word encoder for text
            return replace(base, language="word"), False
        raise ConfigError(f"unknown arm {arm!r}; valid arms: {', '.join(ARMS)}")

    def train_config(self, arm: str, data: str, seed: int, out_dir: str | Path) -> TrainConfig:
        """The full `TrainConfig` of one run."""
        model, pretrained = self.model(arm)
        return TrainConfig(
            model=model,
            data=DataConfig(
                paths=(str(data),),
                batch_size=self.batch_size,
                val_episodes=self.val_episodes,
                image_aug=False,  # keeps the frozen-encoder feature cache exact
            ),
            optim=OptimConfig(lr=self.lr, warmup_steps=self.warmup_steps),
            steps=self.steps,
            seed=seed,
            freeze_vision_frac=self.freeze_vision_frac,
            model_pretrained=pretrained,
            out_dir=str(out_dir),
            ckpt_every=self.steps,
            log_every=50,
            keep_last=1,
            resume=False,
        )


def train_policy(recipe: Recipe, arm: str, data: str, seed: int, out_dir: str | Path) -> str:
    """Train one arm on `data`; returns the final checkpoint directory."""
    from robofm.train.loop import train

    result = train(recipe.train_config(arm, data, seed, out_dir))
    if not result["checkpoint"]:
        raise RuntimeError(f"training in {out_dir} produced no checkpoint")
    return result["checkpoint"]


def evaluate_policy(
    recipe: Recipe,
    checkpoint: str,
    tasks: tuple[str, ...],
    splits: tuple[str, ...],
    out_dir: str | Path,
    seed: int = 0,
) -> dict[str, Any]:
    """Closed-loop evaluation of `checkpoint`; writes the eval report to `out_dir` and returns
    {"summary": per task per split, "pooled": per split over tasks (rates in [0, 1])}."""
    from robofm.eval.metrics import pool_tasks, summarize
    from robofm.eval.rollouts import EVAL_SEED0, evaluate

    results = evaluate(
        {"kind": "checkpoint", "path": str(checkpoint)},
        list(tasks),
        list(splits),
        recipe.eval_episodes,
        seed0=EVAL_SEED0 + 10_000 * seed,
        replan_every=recipe.replan_every,
        workers=recipe.workers,
        video_episodes=recipe.videos,
        out_dir=out_dir,
    )
    summary = summarize(results)
    return {"summary": summary, "pooled": pool_tasks(summary)}


# ---------------------------------------------------------------------------------------------
# The experiment.


@dataclass(frozen=True)
class TransferConfig:
    """Options of `robofm eval transfer`."""

    out_dir: str = "runs/transfer"
    tasks: tuple[str, ...] = ("lift",)  # task families trained and evaluated
    demos: int = 1500  # demonstrations per task for the arm comparison (the demo's count)
    seeds: tuple[int, ...] = (0, 1)  # training seeds per arm
    efficiency_demos: tuple[int, ...] = (250, 750, 1500)  # data-efficiency sweep (seed 0)
    recipe: Recipe = field(default_factory=lambda: Recipe(freeze_vision_frac=TRANSFER_FREEZE_FRAC))


@dataclass
class Run:
    """One trained and evaluated policy."""

    arm: str
    demos: int
    seed: int
    checkpoint: str
    pooled: dict[str, Any]  # split -> {"rate", "n", "successes", ...} pooled over tasks
    train_s: float
    eval_s: float


def record_demos(tasks: tuple[str, ...], n: int, out: Path, seed: int = 0) -> str:
    """`n` scripted demonstrations per task on the train split (nested: the first n of a
    larger recording are these same episodes); reuses a complete earlier recording."""
    from robofm.sim.record import RecordConfig, record

    path = out / f"{'-'.join(tasks)}_{n}"  # names what it holds, so reuse is safe
    if (path / "meta" / "info.json").exists():
        return str(path)
    record(RecordConfig(tasks=tasks, episodes=n, seed=seed), path, overwrite=True)
    return str(path)


def run_transfer(cfg: TransferConfig) -> dict[str, Any]:
    """Record, train every (arm, demos, seed) run, evaluate on all splits, write the report.

    Returns the report dict (also `transfer.json`); plots `transfer.png` (arms by split,
    error bars = spread over seeds) and `data_efficiency.png`.
    """
    import time

    from robofm.sim.tasks import SPLITS

    if not cfg.seeds:
        raise ConfigError("transfer needs at least one training seed")
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plan = [(arm, cfg.demos, s) for arm in ARMS for s in cfg.seeds]
    plan += [(arm, n, cfg.seeds[0]) for n in cfg.efficiency_demos if n != cfg.demos for arm in ARMS]
    runs: list[Run] = []
    with RunLog(out) as log:
        log.log("transfer.start", config=_plain(cfg), runs=len(plan))
        for i, (arm, n, seed) in enumerate(plan):
            data = record_demos(cfg.tasks, n, out / "data")
            name = f"{arm}_d{n}_s{seed}"
            print(f"[{i + 1}/{len(plan)}] {name}: train {cfg.recipe.steps} steps on {n} demos")
            t0 = time.monotonic()
            ckpt = train_policy(cfg.recipe, arm, data, seed, out / "runs" / name)
            t1 = time.monotonic()
            ev = evaluate_policy(cfg.recipe, ckpt, cfg.tasks, SPLITS, out / "eval" / name, seed)
            run = Run(arm, n, seed, ckpt, ev["pooled"], t1 - t0, time.monotonic() - t1)
            runs.append(run)
            log.log("transfer.run", **dataclasses.asdict(run))
        report = transfer_report(runs, cfg)
        atomic_write_text(out / "transfer.json", json.dumps(report, indent=2, allow_nan=False))
        atomic_write_text(out / "transfer.md", report["markdown"])
        plot_transfer(report, out / "transfer.png")
        plot_efficiency(report, out / "data_efficiency.png")
        log.log("transfer.end", table=report["table"])
    return report


def _plain(cfg: Any) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def _spread(values: list[float]) -> dict[str, float]:
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
    return {"mean": mean, "std": math.sqrt(var), "min": min(values), "max": max(values)}


def unseen_average(pooled: dict[str, Any]) -> float:
    """Mean success rate over the unseen categories present in `pooled` (RT-2's average)."""
    rates = [pooled[s]["rate"] for s in UNSEEN if s in pooled]
    return sum(rates) / len(rates) if rates else math.nan


def transfer_report(runs: list[Run], cfg: TransferConfig) -> dict[str, Any]:
    """Aggregate runs: per arm and column, the mean over seeds and the spread across them."""
    columns = ["train", *UNSEEN, "unseen_avg"]
    table: dict[str, dict[str, Any]] = {}
    for arm in ARMS:
        main = [r for r in runs if r.arm == arm and r.demos == cfg.demos]
        if not main:
            continue
        row = {}
        for col in columns:
            vals = [
                unseen_average(r.pooled) if col == "unseen_avg" else r.pooled[col]["rate"]
                for r in main
            ]
            row[col] = {**_spread(vals), "per_seed": vals}
        table[arm] = row
    efficiency: dict[str, list[dict[str, Any]]] = {}
    for arm in ARMS:
        points = []
        for n in sorted({r.demos for r in runs}):
            rs = [r for r in runs if r.arm == arm and r.demos == n]
            if rs:
                points.append(
                    {
                        "demos": n,
                        "seen": _spread([r.pooled["train"]["rate"] for r in rs])["mean"],
                        "unseen_avg": _spread([unseen_average(r.pooled) for r in rs])["mean"],
                        "seeds": [r.seed for r in rs],
                    }
                )
        efficiency[arm] = points
    report = {
        "config": _plain(cfg),
        "episodes_per_split": cfg.recipe.eval_episodes * len(cfg.tasks),
        "table": table,
        "efficiency": efficiency,
        "runs": [dataclasses.asdict(r) for r in runs],
    }
    report["markdown"] = transfer_markdown(report)
    return report


def _cell(c: dict[str, float]) -> str:
    return f"{100 * c['mean']:.0f}% ± {100 * c['std']:.0f}"


def transfer_markdown(report: dict[str, Any]) -> str:
    """RT-2-style table (seen, unseen categories, unseen average) plus the efficiency sweep."""
    cfg = report["config"]
    seeds = len(cfg["seeds"])
    lines = [
        "# Transfer: pretrained backbones vs from scratch",
        "",
        f"Tasks {', '.join(cfg['tasks'])}; {cfg['demos']} demonstrations per task from the "
        f"train split; {report['episodes_per_split']} closed-loop episodes per split and run; "
        f"mean ± standard deviation over {seeds} training seed(s).",
        "",
        "| arm | seen | unseen objects | unseen instructions | unseen scenes | unseen average |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for arm, row in report["table"].items():
        cells = [_cell(row[c]) for c in ("train", *UNSEEN, "unseen_avg")]
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    lines += ["", "Per seed (seen / unseen average):", ""]
    for arm, row in report["table"].items():
        pairs = zip(row["train"]["per_seed"], row["unseen_avg"]["per_seed"], strict=True)
        lines.append(f"- {arm}: " + ", ".join(f"{100 * a:.0f}% / {100 * b:.0f}%" for a, b in pairs))
    lines += [
        "",
        f"## Data efficiency (seed {cfg['seeds'][0]}; at {cfg['demos']} demos, all seeds)",
        "",
    ]
    lines += ["| arm | demos | seen | unseen average |", "| --- | --- | --- | --- |"]
    for arm, points in report["efficiency"].items():
        for p in points:
            lines.append(
                f"| {arm} | {p['demos']} | {100 * p['seen']:.0f}% | {100 * p['unseen_avg']:.0f}% |"
            )
    return "\n".join(lines) + "\n"


def plot_transfer(report: dict[str, Any], path: Path) -> Path:
    """Grouped bars: success per split for each arm, error bars = std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = ["train", *UNSEEN, "unseen_avg"]
    labels = [SPLIT_LABELS.get(c, "unseen average") for c in cols]
    fig, ax = plt.subplots(figsize=(8, 3.8))
    arms = list(report["table"])
    width = 0.8 / max(len(arms), 1)
    for i, arm in enumerate(arms):
        row = report["table"][arm]
        xs = [j + (i - (len(arms) - 1) / 2) * width for j in range(len(cols))]
        ax.bar(
            xs,
            [100 * row[c]["mean"] for c in cols],
            width,
            yerr=[100 * row[c]["std"] for c in cols],
            capsize=3,
            label=arm,
        )
    ax.set_xticks(range(len(cols)), labels, rotation=15)
    ax.set_ylabel("success rate (%)")
    ax.set_ylim(0, 105)
    ax.set_title("pretrained vs scratch (mean ± std over seeds)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_efficiency(report: dict[str, Any], path: Path) -> Path:
    """Success vs number of demonstrations, seen and unseen average, per arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.8))
    for arm, points in report["efficiency"].items():
        xs = [p["demos"] for p in points]
        line = ax.plot(xs, [100 * p["seen"] for p in points], "o-", label=f"{arm} seen")[0]
        ax.plot(
            xs,
            [100 * p["unseen_avg"] for p in points],
            "s--",
            color=line.get_color(),
            label=f"{arm} unseen avg",
        )
    ax.set_xlabel("demonstrations per task")
    ax.set_ylabel("success rate (%)")
    ax.set_ylim(0, 105)
    ax.legend(fontsize=8)
    ax.set_title("data efficiency")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def transfer_main(argv: list[str]) -> int:
    """`robofm eval transfer`: run the experiment and print its table."""
    import argparse

    d, r = TransferConfig(), Recipe()
    p = argparse.ArgumentParser(
        prog="robofm eval transfer",
        description="Pretrained (MobileNetV2 + MiniLM) vs scratch (random-init MobileNetV2 + "
        "word encoder) on the same demonstrations, recipe and compute; evaluated on the seen "
        "and unseen splits over several training seeds, plus a data-efficiency sweep.",
    )
    p.add_argument("--out", default=d.out_dir, help="output directory")
    p.add_argument("--task", nargs="+", default=list(d.tasks), help="task families")
    p.add_argument("--demos", type=int, default=d.demos, help="demonstrations per task")
    p.add_argument("--seeds", type=int, nargs="+", default=list(d.seeds), help="training seeds")
    p.add_argument(
        "--efficiency",
        type=int,
        nargs="*",
        default=list(d.efficiency_demos),
        help="demonstration counts of the data-efficiency sweep (none: skip it)",
    )
    p.add_argument("--steps", type=int, default=r.steps, help="training steps per run")
    p.add_argument("--batch-size", type=int, default=r.batch_size, help="windows per step")
    p.add_argument(
        "--freeze-vision-frac",
        type=float,
        default=TRANSFER_FREEZE_FRAC,
        help="vision frozen for this fraction of the steps, then trained",
    )
    p.add_argument("--episodes", type=int, default=r.eval_episodes, help="per task and split")
    p.add_argument("--workers", type=int, default=0, help="evaluation processes, 0 = per core")
    a = p.parse_args(argv)
    recipe = replace(
        r,
        steps=a.steps,
        batch_size=a.batch_size,
        freeze_vision_frac=a.freeze_vision_frac,
        eval_episodes=a.episodes,
        workers=a.workers,
    )
    cfg = TransferConfig(
        out_dir=a.out,
        tasks=tuple(a.task),
        demos=a.demos,
        seeds=tuple(a.seeds),
        efficiency_demos=tuple(a.efficiency),
        recipe=recipe,
    )
    report = run_transfer(cfg)
    print(report["markdown"])
    print(f"report written to {a.out}")
    return 0
