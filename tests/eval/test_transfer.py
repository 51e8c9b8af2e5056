"""The transfer experiment: arms, aggregation over seeds, the RT-2-style table, plots, and one
small end-to-end run (record, train both arms, roll out in MuJoCo)."""

from __future__ import annotations

import json
import math

import pytest

from robofm.errors import ConfigError
from robofm.eval.transfer import (
    ARMS,
    Recipe,
    Run,
    TransferConfig,
    run_transfer,
    transfer_report,
    unseen_average,
)

PNG = b"\x89PNG\r\n\x1a\n"


def _pooled(rates: dict[str, float], n: int = 10) -> dict:
    return {s: {"rate": r, "n": n, "successes": round(r * n)} for s, r in rates.items()}


def _run(arm: str, demos: int, seed: int, seen: float, unseen: tuple[float, float, float]):
    rates = dict(
        zip(
            ["train", "novel_object", "novel_instruction", "novel_scene"],
            [seen, *unseen],
            strict=True,
        )
    )
    return Run(arm, demos, seed, f"ckpt_{arm}_{seed}", _pooled(rates), 1.0, 1.0)


def test_arms_share_the_architecture_and_differ_in_initialisation():
    r = Recipe()
    (pre, pre_w), (scr, scr_w) = r.model("pretrained"), r.model("scratch")
    assert pre_w is True and scr_w is False
    assert pre.vision == scr.vision and pre.vision_stride == scr.vision_stride
    assert (pre.width, pre.depth, pre.head) == (scr.width, scr.depth, scr.head)
    assert pre.language == "minilm" and scr.language == "word"
    with pytest.raises(ConfigError, match="unknown arm"):
        r.model("imagenet21k")
    cfg = r.train_config("scratch", "some/data", 3, "out")
    assert cfg.seed == 3 and cfg.model_pretrained is False and not cfg.data.image_aug


def test_report_averages_seeds_and_lays_out_the_rt2_table(tmp_path):
    cfg = TransferConfig(demos=100, seeds=(0, 1), efficiency_demos=(50, 100))
    runs = [
        _run("pretrained", 100, 0, 0.8, (0.6, 0.5, 0.4)),
        _run("pretrained", 100, 1, 0.6, (0.4, 0.3, 0.2)),
        _run("scratch", 100, 0, 0.5, (0.1, 0.2, 0.0)),
        _run("scratch", 100, 1, 0.3, (0.1, 0.0, 0.0)),
        _run("pretrained", 50, 0, 0.4, (0.2, 0.2, 0.2)),
        _run("scratch", 50, 0, 0.1, (0.0, 0.0, 0.0)),
    ]
    report = transfer_report(runs, cfg)
    pre = report["table"]["pretrained"]
    assert pre["train"]["mean"] == pytest.approx(0.7)
    assert pre["train"]["std"] == pytest.approx(math.sqrt(0.02))  # sample std of 0.8, 0.6
    assert pre["unseen_avg"]["per_seed"] == pytest.approx([0.5, 0.3])
    assert report["table"]["scratch"]["novel_instruction"]["mean"] == pytest.approx(0.1)
    eff = {p["demos"]: p for p in report["efficiency"]["scratch"]}
    assert set(eff) == {50, 100}
    assert eff[50]["seen"] == pytest.approx(0.1)
    assert eff[100]["seen"] == pytest.approx(0.4)  # mean over both seeds at the main count
    md = report["markdown"]
    assert (
        "| arm | seen | unseen objects | unseen instructions | unseen scenes | unseen average |"
        in md
    )
    assert "| pretrained | 70% ± 14 | 50% ± 14 | 40% ± 14 | 30% ± 14 | 40% ± 14 |" in md
    assert "| scratch | 50 | 10% | 0% |" in md
    json.dumps(report, allow_nan=False)  # JSON-ready


def test_unseen_average_is_over_the_categories_present():
    assert unseen_average(_pooled({"train": 1.0, "novel_object": 0.5})) == 0.5
    assert math.isnan(unseen_average(_pooled({"train": 1.0})))


def test_small_transfer_run_end_to_end(tmp_path):
    recipe = Recipe(steps=2, batch_size=4, val_episodes=1, eval_episodes=1, videos=0, workers=1)
    cfg = TransferConfig(
        out_dir=str(tmp_path / "t"), demos=3, seeds=(0,), efficiency_demos=(), recipe=recipe
    )
    report = run_transfer(cfg)
    assert set(report["table"]) == set(ARMS)
    for arm in ARMS:
        row = report["table"][arm]
        assert all(0.0 <= row[c]["mean"] <= 1.0 for c in row)
    out = tmp_path / "t"
    saved = json.loads((out / "transfer.json").read_text())
    assert [r["arm"] for r in saved["runs"]] == list(ARMS)
    assert all(r["pooled"]["train"]["n"] == 1 for r in saved["runs"])
    assert (out / "transfer.png").read_bytes()[:8] == PNG
    assert (out / "data_efficiency.png").read_bytes()[:8] == PNG
    assert "Transfer: pretrained backbones vs from scratch" in (out / "transfer.md").read_text()
    assert (out / "data" / "lift_3" / "meta" / "info.json").exists()
