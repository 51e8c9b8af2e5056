"""`robofm demo` at its default settings: wall-clock time per stage and the success reached.

Runs the demo exactly as `robofm demo` does (same `DemoPlan`), in this process, into a
temporary directory (or --out-dir, kept), then prints one row per stage (seconds, share of
the total) and one row per evaluated split (successes, rate, 95% Wilson interval), and writes
benchmarks/results/demo.json.

    .venv/bin/python benchmarks/demo.py            # default settings (the 15-minute budget)
    .venv/bin/python benchmarks/demo.py --quick    # the --quick settings
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import report
from robofm.demo import DemoConfig, run_demo

BUDGET_S = {"quick": 180.0, "default": 900.0}  # the limits on this 2-core machine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the --quick settings")
    parser.add_argument("--out-dir", default="", help="keep the demo output here")
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results)")
    args = parser.parse_args()
    out_dir = Path(args.out_dir) if args.out_dir else Path(tempfile.mkdtemp(prefix="rfm_demo_"))
    size = "quick" if args.quick else "default"
    try:
        result = run_demo(DemoConfig(out_dir=str(out_dir), quick=args.quick))
        pooled = _pooled(out_dir / "eval")
    finally:
        if not args.out_dir:
            shutil.rmtree(out_dir, ignore_errors=True)
    total = result["duration_s"]
    met = total <= BUDGET_S[size]
    rows: list[dict] = [
        {"settings": size, "stage": name, "seconds": round(s, 1), "share": f"{s / total:.0%}"}
        for name, s in result["times_s"].items()
    ]
    rows.append(
        {
            "settings": size,
            "stage": "total",
            "seconds": round(total, 1),
            "share": f"budget {BUDGET_S[size]:.0f} s: {'met' if met else 'MISSED'}",
        }
    )
    ev = result["results"]["eval"]
    for split, value in pooled.items():
        rows.append({"settings": size, "stage": f"eval {split}", "success": value})
    rows.append({"settings": size, "stage": "seen", "success": f"{ev['seen_success']:.0%}"})
    rows.append(
        {"settings": size, "stage": "unseen average", "success": f"{ev['unseen_average']:.0%}"}
    )
    report("demo" if size == "default" else "demo_quick", rows, args.out)


def _pooled(eval_dir: Path) -> dict[str, str]:
    """split -> "successes/n (rate, 95% CI)" from the demo's eval report."""
    pooled = json.loads((eval_dir / "results.json").read_text())["pooled"]
    return {
        s: f"{r['successes']}/{r['n']} ({100 * r['rate']:.0f}%, CI {100 * r['ci_low']:.0f}-"
        f"{100 * r['ci_high']:.0f}%)"
        for s, r in pooled.items()
    }


if __name__ == "__main__":
    main()
