"""Evaluation reports: a success table with 95% intervals, bar charts with error bars, the
raw episodes as JSON and mp4s of recorded episodes. Every file appears only once complete.

`write_report(results, out_dir)` writes:
- `results.json`: {"name", "summary" (per task, per split), "pooled" (per split), "episodes"}
- `table.md`: `success_table(summary)`
- `success.png`: success rate per split (one bar per task) with Wilson 95% error bars
- `videos/<task>_<split>_<seed>_<success|failure>.mp4`: cameras side by side, with the
  instruction and the outcome drawn on top, for episodes evaluated with frames
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from robofm.atomic import atomic_write_bytes, atomic_write_text
from robofm.eval.metrics import pool_tasks, summarize
from robofm.progress import to_jsonable
from robofm.sim.tasks import SPLITS

BANNER_PX = 28  # text band above the camera images in videos
VIDEO_FPS = 10.0  # the env's control rate: videos play in real time


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _ms(x: float) -> str:
    return "-" if not np.isfinite(x) else f"{x:.2f}"


def success_table(summary: dict[str, dict[str, dict[str, Any]]]) -> str:
    """A markdown table, one row per (task, split): successes, rate, 95% CI, mean episode
    length and policy-call latency; with several tasks, pooled "all" rows per split follow."""
    lines = [
        "| task | split | success | rate | 95% CI | mean steps | latency ms (mean / p90) |",
        "|---|---|---|---|---|---|---|",
    ]

    def row(task: str, split: str, r: dict[str, Any]) -> str:
        latency = (
            f"{_ms(r.get('latency_ms_mean', np.nan))} / {_ms(r.get('latency_ms_p90', np.nan))}"
        )
        return (
            f"| {task} | {split} | {r['successes']}/{r['n']} | {_pct(r['rate'])} | "
            f"[{_pct(r['ci_low'])}, {_pct(r['ci_high'])}] | {r['mean_steps']:.1f} | {latency} |"
        )

    for task, splits in summary.items():
        lines += [row(task, split, r) for split, r in splits.items()]
    if len(summary) > 1:
        lines += [row("all", split, r) for split, r in pool_tasks(summary).items()]
    return "\n".join(lines) + "\n"


def _split_order(splits: set[str]) -> list[str]:
    return [s for s in SPLITS if s in splits] + sorted(s for s in splits if s not in SPLITS)


def _bar_chart(series: dict[str, dict[str, dict[str, Any]]], title: str, path: Path) -> Path:
    """Grouped bars: one group per split, one bar per series, Wilson CI error bars."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    splits = _split_order({s for rows in series.values() for s in rows})
    n = max(1, len(series))
    width = 0.8 / n
    x = np.arange(len(splits))
    fig = Figure(figsize=(max(4.5, 1.6 + 1.4 * len(splits) + 0.3 * n), 3.4), layout="constrained")
    ax = fig.subplots()
    for k, (label, rows) in enumerate(series.items()):
        rate = np.array([rows[s]["rate"] if s in rows else np.nan for s in splits])
        low = np.array([rows[s]["ci_low"] if s in rows else np.nan for s in splits])
        high = np.array([rows[s]["ci_high"] if s in rows else np.nan for s in splits])
        yerr = np.clip(np.stack([rate - low, high - rate]), 0, None)  # (2, n_splits)
        pos = x - 0.4 + width * (k + 0.5)
        ax.bar(pos, rate, width, label=label, yerr=yerr, capsize=3)
    ax.set_xticks(x, splits)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("success rate (95% CI)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    atomic_write_bytes(Path(path), buf.getvalue())
    return Path(path)


def compare_chart(summaries: dict[str, dict[str, dict[str, dict[str, Any]]]], path) -> Path:
    """PNG comparing policies (e.g. pretrained vs scratch): one group per split, one bar per
    policy name, success pooled over tasks, with 95% CI error bars."""
    series = {name: pool_tasks(summary) for name, summary in summaries.items()}
    return _bar_chart(series, "success rate by split", Path(path))


def video_name(result) -> str:
    """`<task>_<split>_<seed>_<success|failure>.mp4`."""
    outcome = "success" if result.success else "failure"
    return f"{result.task}_{result.split}_{result.seed}_{outcome}.mp4"


def write_episode_video(result, path: str | Path, fps: float = VIDEO_FPS) -> Path:
    """An mp4 of `result.frames` (one video frame per observation) with the instruction and
    the step and outcome drawn on a band above the images; renamed into place when done."""
    from PIL import Image, ImageDraw

    from robofm.data.video import VideoEncoder

    frames = result.frames  # (T, H, W, 3)
    if frames is None:
        raise ValueError(f"episode {result.task}/{result.split} seed {result.seed} has no frames")
    path = Path(path)
    h, w = frames.shape[1] + BANNER_PX, frames.shape[2]
    tmp = path.with_name(f".{path.name}.part.mp4")
    path.parent.mkdir(parents=True, exist_ok=True)
    outcome = "SUCCESS" if result.success else "FAILURE"
    colour = (120, 255, 120) if result.success else (255, 120, 120)
    enc = VideoEncoder(tmp, fps, w, h)
    try:
        for t, img in enumerate(frames):
            canvas = Image.new("RGB", (w, h))
            canvas.paste(Image.fromarray(img), (0, BANNER_PX))
            draw = ImageDraw.Draw(canvas)
            draw.text((4, 2), result.instruction[: w // 6], fill=(255, 255, 255))
            status = f"step {t}/{len(frames) - 1} {outcome}"
            draw.text((4, 15), status, fill=colour)
            enc.write(np.asarray(canvas)[None])
        enc.close()
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def write_report(results: list, out_dir: str | Path, name: str = "policy") -> dict[str, Any]:
    """Write results.json, table.md, success.png and the videos of recorded episodes into
    `out_dir`; returns {"results", "table", "chart": Path, "videos": [Path]}."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(results)
    doc = {
        "name": name,
        "summary": summary,
        "pooled": pool_tasks(summary),
        "episodes": [r.to_dict() for r in results],
    }
    paths: dict[str, Any] = {"results": out / "results.json", "table": out / "table.md"}
    atomic_write_text(paths["results"], json.dumps(to_jsonable(doc), indent=2, allow_nan=False))
    atomic_write_text(paths["table"], f"# {name}\n\n" + success_table(summary))
    paths["chart"] = _bar_chart(summary, f"{name}: success rate by split", out / "success.png")
    paths["videos"] = [
        write_episode_video(r, out / "videos" / video_name(r))
        for r in results
        if r.frames is not None
    ]
    return paths
