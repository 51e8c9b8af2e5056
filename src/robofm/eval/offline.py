"""`robofm eval offline CHECKPOINT --data DIR`: open-loop accuracy and chunk smoothness of a
checkpoint on held-out dataset episodes, with no simulator or robot.

At every frame t of an episode the policy sees that frame (cameras, state, instruction) and
predicts a chunk `pred[t]` of H actions. Against the recorded actions `true` (robot units):

- `mae_first`: mean |pred[t, 0] - true[t]|, the action the robot would run now;
- `mae_chunk`: mean |pred[t, k] - true[t + k]| over every k < H with t + k inside the episode;
- executing chunks open-loop for `replan_every` = R steps (then replanning at t = 0, R, 2R, ...)
  gives the executed sequence `a_exec[t] = pred[t0, t - t0]`, t0 = R * (t // R). Its mean
  |a_exec[t] - a_exec[t - 1]| at chunk starts (`boundary_jump`) against inside chunks
  (`within_step`) shows whether chunks join smoothly: `jump_ratio` = boundary / within is about
  1 for smooth joins; `true_step` is the same consecutive difference of the recorded actions.

Every metric is per action dimension; means pool all frames of all evaluated episodes.
Training holds out the last `val_episodes` episodes of each dataset, so the last K episodes are
the default here. The policy is called at every frame (its observation history then holds the
preceding frames, as in training windows), not only at replanning steps as in a rollout.
"""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from robofm.atomic import atomic_write_bytes, atomic_write_text
from robofm.data import open_dataset
from robofm.data.episode import EpisodeSource
from robofm.errors import ConfigError
from robofm.policy import Policy
from robofm.progress import progress, to_jsonable
from robofm.types import OBS_IMAGES, OBS_PROMPT, OBS_STATE, RESULT_ACTIONS

METRICS = ("mae_first", "mae_chunk", "boundary_jump", "within_step", "jump_ratio", "true_step")
DEFAULT_EPISODES = 5  # held-out episodes evaluated when --episodes is not given
REPORT_FILES = {"json": "offline.json", "table": "offline.md", "plot": "predicted_vs_true.png"}

Sums = dict[str, tuple[np.ndarray, int]]  # metric -> (per-dim sum (D,), number of terms)


# ---------------------------------------------------------------------------------------------
# Pure metrics on arrays.


def executed_actions(pred: np.ndarray, replan_every: int) -> np.ndarray:
    """(T, D) actions run open-loop from the (T, H, D) chunks `pred`, replanning every
    min(replan_every, H) steps: step t runs pred[t0, t - t0] with t0 the last replanning step."""
    t_len, h = pred.shape[:2]
    n = _exec_len(replan_every, h)
    steps = np.arange(t_len)  # (T,)
    starts = (steps // n) * n  # (T,) frame whose chunk runs at each step
    return pred[starts, steps - starts]  # (T, D)


def _exec_len(replan_every: int, chunk_len: int) -> int:
    """Actions executed per chunk: a chunk cannot run past its own length (as in `rollout`)."""
    if replan_every < 1:
        raise ConfigError(f"replan_every is {replan_every}; must be >= 1")
    return min(replan_every, chunk_len)


def _metric_sums(pred: np.ndarray, true: np.ndarray, replan_every: int) -> Sums:
    """Per-dimension sums and term counts of every metric but the ratio, for pooling."""
    t_len, h, d = pred.shape  # (T, H, D) predicted chunks
    if true.shape != (t_len, d):
        raise ValueError(f"true actions have shape {true.shape}; predictions need ({t_len}, {d})")
    pred = pred.astype(np.float64)
    true = true.astype(np.float64)  # (T, D)
    chunk_sum, chunk_n = np.zeros(d), 0
    for k in range(min(h, t_len)):
        chunk_sum += np.abs(pred[: t_len - k, k] - true[k:]).sum(0)  # (T - k, D) -> (D,)
        chunk_n += t_len - k
    n = _exec_len(replan_every, h)
    steps = np.abs(np.diff(executed_actions(pred, replan_every), axis=0))  # (T - 1, D), t = 1..
    at_boundary = (np.arange(1, t_len) % n) == 0  # (T - 1,)
    true_steps = np.abs(np.diff(true, axis=0))  # (T - 1, D)
    return {
        "mae_first": (np.abs(pred[:, 0] - true).sum(0), t_len),
        "mae_chunk": (chunk_sum, chunk_n),
        "boundary_jump": (steps[at_boundary].sum(0), int(at_boundary.sum())),
        "within_step": (steps[~at_boundary].sum(0), int((~at_boundary).sum())),
        "true_step": (true_steps.sum(0), t_len - 1),
    }


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den elementwise; inf where only den is 0, nan where both are (or either is nan)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.asarray(num, np.float64) / np.asarray(den, np.float64)


def _means(sums: Sums) -> dict[str, np.ndarray]:
    """Per-dimension means (nan where a metric had no terms) plus `jump_ratio`."""
    out = {k: s / n if n else np.full_like(s, np.nan) for k, (s, n) in sums.items()}
    out["jump_ratio"] = _ratio(out["boundary_jump"], out["within_step"])
    return {k: out[k] for k in METRICS}


def chunk_metrics(pred: np.ndarray, true: np.ndarray, replan_every: int = 5) -> dict[str, Any]:
    """Offline metrics of one episode: each of `METRICS` -> (D,) float64, robot units (the
    ratio is unitless).

    `pred` is (T, H, D): the chunk predicted at each frame; `true` is (T, D): the recorded
    actions. A metric with no terms (e.g. `boundary_jump` when T <= R) is nan; `jump_ratio` is
    inf where chunks jump but never move inside.
    """
    return _means(_metric_sums(np.asarray(pred), np.asarray(true), replan_every))


def _pool(per_episode: list[Sums]) -> Sums:
    """Sum the per-episode sums and counts, so means weight every frame equally."""
    return {
        k: (sum(s[k][0] for s in per_episode), sum(s[k][1] for s in per_episode))
        for k in per_episode[0]
    }


# ---------------------------------------------------------------------------------------------
# Running a policy over episodes.


def held_out_episodes(n_episodes: int, k: int, *, last: bool = True, where: str = "") -> list[int]:
    """Positions of the last (or first) `k` of `n_episodes` episodes; `ConfigError` when the
    dataset `where` has fewer."""
    if k < 1:
        raise ConfigError(f"--episodes is {k}; must be >= 1")
    if k > n_episodes:
        raise ConfigError(
            f"--episodes {k} is more than the {n_episodes} episodes in dataset {where}".rstrip()
        )
    return list(range(n_episodes - k, n_episodes)) if last else list(range(k))


def _dataset_label(source: EpisodeSource) -> str:
    """The dataset's path when the reader knows it, else its name (for error messages)."""
    for attr in ("root", "path"):
        if getattr(source, attr, None) is not None:
            return str(getattr(source, attr))
    return str(source.name)


def _check_compatible(policy: Policy, source: EpisodeSource, episodes: list[int]) -> list[int]:
    """Raise `ConfigError` naming the dataset and field where it cannot feed `policy`; return
    the episodes' lengths T."""
    where = _dataset_label(source)
    missing = sorted(set(policy.cameras) - set(source.cameras))
    if missing:
        raise ConfigError(
            f"dataset {where}: field 'cameras' lacks {missing} that the checkpoint needs "
            f"{list(policy.cameras)}; the dataset has {sorted(source.cameras)}"
        )
    d, names = policy.spaces.action.dim, list(policy.spaces.action.names)
    lengths = []
    for pos in episodes:
        if not 0 <= pos < len(source):
            raise ConfigError(
                f"dataset {where}: episode {pos} is out of range 0..{len(source) - 1}"
            )
        ep = source.episode(pos)
        if ep.actions.shape[1] != d:
            raise ConfigError(
                f"dataset {where}: field 'action' has {ep.actions.shape[1]} dims in episode "
                f"{ep.index}; the checkpoint's action space has {d} {names}"
            )
        if ep.states.shape[1] != policy.state_dim:
            raise ConfigError(
                f"dataset {where}: field 'state' has {ep.states.shape[1]} dims in episode "
                f"{ep.index}; the checkpoint expects {policy.state_dim}"
            )
        lengths.append(ep.length)
    return lengths


def offline_eval(
    policy_or_path: Policy | str | Path,
    source: EpisodeSource | str | Path,
    episodes: list[int],
    replan_every: int = 5,
) -> dict[str, Any]:
    """Predict a chunk at every frame of `episodes` (positions in `source`) and score it.

    Returns a dict with:
    - `per_dim`: {action dim name: {metric: float}} for each of `METRICS`, robot units
      (`units` lists each dim's unit), pooled over every frame of every episode;
    - `overall`: {metric: mean over dims}; its `jump_ratio` is overall boundary / within;
    - `counts`: frames, (t, k) chunk pairs, boundary and within steps the means divide by;
    - `per_episode`: per episode its position, index, task, length T, `metrics` (as
      `chunk_metrics`), and the arrays `predictions` (T, H, D), `truth` (T, D) and
      `executed` (T, D), all float32 robot units;
    - `checkpoint`, `dataset`, `episodes`, `chunk_len` H, `replan_every`, `exec_len`.
    """
    checkpoint = None
    if isinstance(policy_or_path, (str, Path)):
        checkpoint = str(policy_or_path)
        policy = Policy.from_checkpoint(policy_or_path)
    else:
        policy = policy_or_path
    if isinstance(source, (str, Path)):
        source = open_dataset(source)
    if not episodes:
        raise ConfigError(f"dataset {_dataset_label(source)}: no episodes to evaluate")
    _exec_len(replan_every, 1)  # reject R < 1 before any inference
    lengths = _check_compatible(policy, source, episodes)
    space = policy.spaces.action
    per_episode, sums = [], []
    bar = progress(total=sum(lengths), desc="offline eval", unit="frame")
    try:
        for pos in episodes:
            ep = source.episode(pos, images=True)
            tasks = ep.extras.get("task")  # (T,) per-step instruction when it changes
            policy.reset()
            chunks = []
            for t in range(ep.length):
                obs = {
                    OBS_IMAGES: {cam: ep.images[cam][t] for cam in policy.cameras},
                    OBS_STATE: ep.states[t],  # (S,)
                    OBS_PROMPT: str(tasks[t]) if tasks is not None else ep.task,
                }
                chunks.append(np.asarray(policy.infer(obs)[RESULT_ACTIONS], np.float32))
                bar.update(1)
            pred = np.stack(chunks)  # (T, H, D)
            truth = ep.actions.astype(np.float32)  # (T, D)
            ep_sums = _metric_sums(pred, truth, replan_every)
            sums.append(ep_sums)
            per_episode.append(
                {
                    "position": pos,
                    "index": ep.index,
                    "task": ep.task,
                    "length": ep.length,
                    "metrics": _means(ep_sums),
                    "predictions": pred,
                    "truth": truth,
                    "executed": executed_actions(pred, replan_every),
                }
            )
    finally:
        bar.close()
    pooled = _pool(sums)
    means = _means(pooled)  # metric -> (D,)
    overall = {k: float(v.mean()) for k, v in means.items()}  # nan only when a metric had none
    overall["jump_ratio"] = float(_ratio(overall["boundary_jump"], overall["within_step"]))
    h = per_episode[0]["predictions"].shape[1]
    return {
        "checkpoint": checkpoint,
        "dataset": _dataset_label(source),
        "episodes": list(episodes),
        "episode_index": [e["index"] for e in per_episode],
        "chunk_len": h,
        "replan_every": replan_every,
        "exec_len": _exec_len(replan_every, h),
        "dims": list(space.names),
        "units": list(space.units),
        "per_dim": {
            name: {k: float(means[k][i]) for k in METRICS} for i, name in enumerate(space.names)
        },
        "overall": overall,
        "counts": {
            "frames": pooled["mae_first"][1],
            "chunk_pairs": pooled["mae_chunk"][1],
            "boundary_steps": pooled["boundary_jump"][1],
            "within_steps": pooled["within_step"][1],
        },
        "per_episode": per_episode,
    }


# ---------------------------------------------------------------------------------------------
# Report: table, JSON, plot.


def _num(x: float) -> str:
    return "-" if np.isnan(x) else f"{x:.4g}"


def offline_table(result: dict[str, Any]) -> str:
    """A markdown table of `offline_eval`'s result: one row per action dim, then the mean."""
    lines = [
        "| dim | unit | " + " | ".join(METRICS) + " |",
        "|---|---|" + "---|" * len(METRICS),
    ]
    for name, unit in zip(result["dims"], result["units"], strict=True):
        row = result["per_dim"][name]
        lines.append(f"| {name} | {unit} | " + " | ".join(_num(row[k]) for k in METRICS) + " |")
    lines.append("| mean | - | " + " | ".join(_num(result["overall"][k]) for k in METRICS) + " |")
    return "\n".join(lines) + "\n"


def _plot(result: dict[str, Any]) -> bytes:
    """PNG: per action dim of the first evaluated episode, the recorded actions and the
    open-loop executed sequence over steps, with a dotted line at each replanning step."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    ep = result["per_episode"][0]
    truth, executed = ep["truth"], ep["executed"]  # (T, D) each
    dims = result["dims"]
    fig = Figure(figsize=(7.5, 1.9 * len(dims) + 0.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(len(dims), 1, sharex=True))
    steps = np.arange(ep["length"])
    for i, (ax, name, unit) in enumerate(zip(axes, dims, result["units"], strict=True)):
        ax.plot(steps, truth[:, i], color="black", lw=1.5, label="recorded")
        ax.plot(steps, executed[:, i], color="tab:orange", lw=1.2, label="executed (open loop)")
        for b in range(result["exec_len"], ep["length"], result["exec_len"]):
            ax.axvline(b - 0.5, color="grey", lw=0.6, ls=":")
        ax.set_ylabel(f"{name} [{unit}]")
    axes[0].legend(loc="upper right", fontsize=8)
    axes[0].set_title(
        f"episode {ep['index']}: {ep['task'] or '(no instruction)'}; "
        f"replan every {result['exec_len']} steps",
        fontsize=9,
    )
    axes[-1].set_xlabel("step")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def write_offline_report(result: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Write `offline.json` (every metric, without the prediction arrays), `offline.md` (the
    table) and `predicted_vs_true.png` atomically into `out_dir`; returns their paths."""
    out = Path(out_dir)
    paths = {k: out / name for k, name in REPORT_FILES.items()}
    arrays = ("predictions", "truth", "executed")
    body = {
        **{k: v for k, v in result.items() if k != "per_episode"},
        "per_episode": [
            {k: v for k, v in e.items() if k not in arrays} for e in result["per_episode"]
        ],
    }
    atomic_write_text(paths["json"], json.dumps(to_jsonable(body), indent=2) + "\n")
    atomic_write_text(paths["table"], offline_table(result))
    atomic_write_bytes(paths["plot"], _plot(result))
    return paths


# ---------------------------------------------------------------------------------------------
# CLI.


def offline_main(argv: list[str]) -> int:
    """`robofm eval offline CHECKPOINT --data DIR ...`; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="robofm eval offline",
        description="Open-loop accuracy (MAE of the first action and of the whole chunk) and "
        "chunk-boundary smoothness of a checkpoint on held-out dataset episodes, per action "
        "dimension, in robot units.",
    )
    parser.add_argument("checkpoint", help="checkpoint directory")
    parser.add_argument("--data", required=True, help="dataset (LeRobot dir, RLDS dir, .hdf5)")
    parser.add_argument(
        "--episodes", type=int, default=DEFAULT_EPISODES, help="number of episodes to evaluate"
    )
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--last",
        dest="last",
        action="store_true",
        default=True,
        help="the last K episodes, which training holds out (default)",
    )
    which.add_argument(
        "--first", dest="last", action="store_false", help="the first K episodes instead"
    )
    parser.add_argument("--replan-every", type=int, default=5, help="actions run per chunk")
    parser.add_argument("--out", default="runs/eval_offline", help="report directory")
    args = parser.parse_args(argv)

    if not Path(args.checkpoint).is_dir():
        raise ConfigError(f"{args.checkpoint}: not a checkpoint directory")
    source = open_dataset(args.data)
    episodes = held_out_episodes(len(source), args.episodes, last=args.last, where=args.data)
    result = offline_eval(args.checkpoint, source, episodes, replan_every=args.replan_every)
    write_offline_report(result, args.out)
    print(offline_table(result), end="")
    print(
        f"{result['counts']['frames']} frames of episodes {result['episode_index']}; "
        f"report written to {args.out}"
    )
    return 0
