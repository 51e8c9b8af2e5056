"""Closed-loop comparison of deployable checkpoints: success per split, latency, control rate.

`compare_checkpoints({"teacher": A, "student": B, "int8": C}, ...)` evaluates each checkpoint
on the same seeds of the MuJoCo benchmark (`robofm.eval.rollouts.evaluate`) and reports, per
checkpoint: success per split (with 95% Wilson intervals), the chunk latency measured inside
those episodes (one torch thread per worker, as evaluation runs), the control rates that
latency sustains, the parameter count and the size on disk. This is the generalist vs
specialist (or float vs INT8) trade-off on the benchmark, in one table.

Rates: `rate_hz_chunked` = chunk_len * 1000 / p90 latency, the fastest control loop whose
chunk is ready before the previous one runs out when inference overlaps execution (the
runtime's async mode); `rate_hz_replan` = 1000 / p90, replanning at every step.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from robofm.errors import ConfigError

SPLITS = ("train", "novel_object", "novel_instruction", "novel_scene")


def checkpoint_facts(path: str | Path) -> dict[str, Any]:
    """Parameters (stored tensors, buffers included), chunk length and bytes on disk of a
    checkpoint (INT8 copies included)."""
    from robofm.deploy.quantize import checkpoint_bytes
    from robofm.models.checkpoint import read_checkpoint_meta

    cfg, _ = read_checkpoint_meta(path)
    from safetensors import safe_open

    n = 0
    with safe_open(str(Path(path) / "model.safetensors"), framework="pt") as f:
        for k in f.keys():  # noqa: SIM118  (safe_open has no __iter__)
            if k.endswith(".weight_scale"):  # INT8 per-channel scales are not parameters
                continue
            shape = f.get_slice(k).get_shape()
            n += int(np.prod(shape)) if shape else 1
    return {
        "params_M": round(n / 1e6, 2),
        "chunk_len": cfg.chunk_len,
        "disk_MB": round(checkpoint_bytes(Path(path)) / 1e6, 1),
        "quantized": (Path(path) / "quantization.json").exists(),
    }


def compare_checkpoints(
    checkpoints: dict[str, str | Path],
    *,
    task: str = "lift",
    splits: tuple[str, ...] = SPLITS,
    episodes: int = 20,
    replan_every: int = 2,
    workers: int = 0,
    image_size: int = 96,
    out_dir: str | Path | None = None,
) -> list[dict[str, Any]]:
    """One row per checkpoint (name -> path): success per split, latency, rates, size.

    Every checkpoint plays the same `episodes` seeds per split. With `out_dir`, writes
    `comparison.json` and `comparison.png` there. Returns the rows.
    """
    from robofm.eval.metrics import rate_row
    from robofm.eval.rollouts import evaluate

    if not checkpoints:
        raise ConfigError("compare: no checkpoints given")
    rows = []
    for name, path in checkpoints.items():
        if not Path(path).is_dir():
            raise ConfigError(f"compare: {name}: {path} is not a checkpoint directory")
        results = evaluate(
            {"kind": "checkpoint", "path": str(path)},
            [task],
            list(splits),
            episodes,
            replan_every=replan_every,
            workers=workers,
            image_size=image_size,
        )
        facts = checkpoint_facts(path)
        lat = np.asarray([ms for r in results for ms in r.latency_ms], np.float64)
        p50, p90 = float(np.percentile(lat, 50)), float(np.percentile(lat, 90))
        row: dict[str, Any] = {"name": name, "path": str(path), **facts}
        for split in splits:
            rs = [r for r in results if r.split == split]
            row[split] = rate_row(sum(r.success for r in rs), len(rs))
        unseen = [s for s in splits if s != "train"]
        if unseen:
            row["unseen_avg"] = float(np.mean([row[s]["rate"] for s in unseen]))
        row.update(
            latency_ms_median=round(p50, 2),
            latency_ms_p90=round(p90, 2),
            rate_hz_chunked=round(facts["chunk_len"] * 1000.0 / p90, 1),
            rate_hz_replan=round(1000.0 / p90, 1),
        )
        rows.append(row)
    if out_dir is not None:
        from robofm.atomic import atomic_write_text

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        body = {"task": task, "splits": list(splits), "episodes": episodes, "rows": rows}
        atomic_write_text(out / "comparison.json", json.dumps(body, indent=2) + "\n")
        plot_comparison(rows, splits, out / "comparison.png")
    return rows


def format_comparison(rows: list[dict[str, Any]], splits: tuple[str, ...] = SPLITS) -> str:
    """A Markdown table: one line per checkpoint."""
    head = ["checkpoint", *splits, "unseen avg", "p50 ms", "p90 ms", "chunked Hz", "MB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["name"]]
        cells += [f"{r[s]['successes']}/{r[s]['n']} ({r[s]['rate']:.0%})" for s in splits]
        cells.append(f"{r['unseen_avg']:.0%}" if "unseen_avg" in r else "-")
        cells += [
            f"{r['latency_ms_median']:.1f}",
            f"{r['latency_ms_p90']:.1f}",
            f"{r['rate_hz_chunked']:.0f}",
            f"{r['disk_MB']:.1f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_comparison(rows: list[dict[str, Any]], splits, path: Path) -> Path | None:
    """Grouped bars of success per split (with Wilson intervals) and latency per checkpoint."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.8), gridspec_kw={"width_ratios": [3, 1]})
    w = 0.8 / len(rows)
    x = np.arange(len(splits))
    for i, r in enumerate(rows):
        rate = np.array([r[s]["rate"] for s in splits])
        lo = rate - np.array([r[s]["ci_low"] for s in splits])
        hi = np.array([r[s]["ci_high"] for s in splits]) - rate
        a.bar(x + i * w, rate, w, yerr=[lo, hi], capsize=2, label=r["name"])
    a.set_xticks(x + w * (len(rows) - 1) / 2, list(splits), fontsize=8)
    a.set(ylabel="success rate", ylim=(0, 1.05), title="closed-loop success (95% CI)")
    a.legend(fontsize=8)
    names = [r["name"] for r in rows]
    b.bar(names, [r["latency_ms_median"] for r in rows], color="grey")
    b.set(ylabel="chunk latency, median ms", title="latency")
    b.tick_params(axis="x", labelsize=8, labelrotation=25)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
