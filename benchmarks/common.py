"""Shared output for benchmark scripts: a printed table plus a JSON file with machine info."""

from __future__ import annotations

import json
import os
import platform
import resource
import sys
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def machine() -> dict[str, Any]:
    """The facts needed to compare two benchmark runs."""
    import torch

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
    }


def format_table(rows: list[dict[str, Any]]) -> str:
    """Fixed-width text table; columns are the union of row keys in first-seen order."""
    cols: list[str] = []
    for row in rows:
        cols += [k for k in row if k not in cols]

    def cell(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    widths = {c: max(len(c), *(len(cell(r.get(c, ""))) for r in rows)) for c in cols}
    lines = ["  ".join(c.ljust(widths[c]) for c in cols)]
    lines.append("  ".join("-" * widths[c] for c in cols))
    lines += ["  ".join(cell(r.get(c, "")).ljust(widths[c]) for c in cols) for r in rows]
    return "\n".join(lines)


def report(name: str, rows: list[dict[str, Any]], out: str | Path | None = None) -> Path:
    """Print `rows` as a table and write them with machine info to JSON; returns the path."""
    print(format_table(rows))
    path = Path(out) if out else RESULTS_DIR / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {"benchmark": name, "argv": sys.argv, "machine": machine(), "rows": rows}
    path.write_text(json.dumps(body, indent=2) + "\n")
    print(f"wrote {path}")
    return path
