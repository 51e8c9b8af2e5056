"""Presenting a `QualityReport`: the terminal summary and the JSON + PNG files that
`robofm data check` writes."""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from robofm.atomic import atomic_write_bytes, atomic_write_text

if TYPE_CHECKING:
    from robofm.data.quality import QualityReport


def format_report(report: QualityReport, max_per_check: int = 5) -> str:
    """Readable terminal summary: header with counts, key numbers, then each check's status
    and its worst issues (episodes named by index)."""
    s = report.summary
    c = s.get("counts", {})
    lines = [
        f"Data quality: {s.get('dataset')}  ({s.get('episodes')} episodes, "
        f"{s.get('lengths', {}).get('total_steps', 0)} steps, {s.get('fps')} fps)",
        f"  {c.get('error', 0)} error(s), {c.get('warning', 0)} warning(s), "
        f"{c.get('info', 0)} note(s) -> "
        + ("BLOCKING: fix errors before fine-tuning" if report.blocking else "not blocking"),
    ]
    if s.get("lengths"):
        ln = s["lengths"]
        lines.append(f"  length: min {ln['min']}, median {ln['median']:g}, max {ln['max']} steps")
    lang = s.get("language") or {}
    if lang:
        lines.append(
            f"  language: {lang['n_tasks']} task(s), {lang['distinct_instructions']} distinct "
            f"instruction(s), top template share {lang['top_template_share']:.0%}"
        )
    if s.get("visual"):
        v = s["visual"]
        lines.append(
            f"  visual: diversity {v['diversity']:.4f}, brightness {v['brightness_mean']:.2f}"
            f" ± {v['brightness_std']:.2f}, {v['near_duplicate_groups']} near-duplicate group(s)"
        )
    lines.append("")
    for check, state in s.get("checks", {}).items():
        lines.append(f"[{state.upper():>7}] {check}")
        found = report.by_check(check)
        for issue in found[:max_per_check]:
            eps = issue.episodes
            named = f" (episodes {', '.join(map(str, eps[:8]))}{' ...' if len(eps) > 8 else ''})"
            named = named if len(eps) > 1 and "episodes [" not in issue.message else ""
            lines.append(f"          - {issue.severity}: {issue.message}{named}")
        if len(found) > max_per_check:
            lines.append(f"          ... {len(found) - max_per_check} more (see the JSON report)")
    return "\n".join(lines)


def write_report(report: QualityReport, out_dir: str | Path) -> dict[str, Path]:
    """Write `quality_report.json` and PNG plots into `out_dir`; returns name -> path.

    Plots: `action_hist.png` (one histogram per action dimension), `episode_lengths.png`,
    and `visual_scatter.png` (per-episode 2-D PCA of thumbnail embeddings, coloured by
    brightness) when the dataset has cameras.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "quality_report.json"}
    atomic_write_text(paths["json"], report.to_json() + "\n")

    def save(name: str, fig: Figure) -> None:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
        paths[name] = out / f"{name}.png"
        atomic_write_bytes(paths[name], buf.getvalue())

    h = report.data.get("action_hist", {})
    if h.get("counts"):
        d = len(h["counts"])
        cols = min(d, 4)
        rows = -(-d // cols)
        fig = Figure(figsize=(3.2 * cols, 2.4 * rows), layout="constrained")
        for j, ax in enumerate(fig.subplots(rows, cols, squeeze=False).ravel()):
            if j >= d:
                ax.set_axis_off()
                continue
            edges = np.asarray(h["edges"][j], dtype=float)
            ax.stairs(np.asarray(h["counts"][j], dtype=float), edges, fill=True)
            ax.set_title(h["names"][j], fontsize=9)
        fig.suptitle("action distribution per dimension")
        save("action_hist", fig)
    if report.data.get("lengths"):
        fig = Figure(figsize=(5, 3.2), layout="constrained")
        ax = fig.subplots()
        ax.hist(report.data["lengths"], bins=min(30, len(report.data["lengths"])))
        ax.set_xlabel("episode length (steps)")
        ax.set_ylabel("episodes")
        save("episode_lengths", fig)
    v = report.data.get("visual") or {}
    if v.get("pca"):
        pca = np.asarray(v["pca"], dtype=float)
        fig = Figure(figsize=(5, 4), layout="constrained")
        ax = fig.subplots()
        sc = ax.scatter(pca[:, 0], pca[:, 1], c=v["brightness"], cmap="viridis", s=14)
        fig.colorbar(sc, ax=ax, label="mean brightness")
        for k, ep in enumerate(v["episodes"][:40]):
            ax.annotate(str(ep), pca[k], fontsize=6)
        ax.set_title("episode thumbnails, PCA", fontsize=10)
        save("visual_scatter", fig)
    return paths
