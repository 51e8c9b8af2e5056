"""`robofm bench`: the preset grid writes the documented fields with consistent values (one
subprocess per configuration, full-size presets skipped with a reason), the checkpoint
comparison writes both columns and their ratios, and the compiled policy acts like eager
without recompiling per instruction."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from robofm.cli import main as cli_main
from robofm.config import MODEL_PRESETS
from robofm.deploy.bench import COMPILE_FIELDS, ROW_FIELDS, compare_checkpoints, measure_config
from robofm.deploy.quantize import checkpoint_bytes, quantize_checkpoint
from robofm.errors import ConfigError
from robofm.models.vla import VLA
from robofm.policy import Policy


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(a real tiny flow-head sim checkpoint, its INT8 copy)."""
    from robofm.sim.record import smoke_checkpoint

    root = tmp_path_factory.mktemp("bench")
    src = smoke_checkpoint(root, image_size=32, chunk_len=4)
    return src, quantize_checkpoint(src, root / "int8", min_weights=0)


def check_timing(row: dict) -> None:
    assert row["latency_cold_ms"] > 0 and row["latency_ms_median"] > 0
    assert row["latency_ms_p90"] >= row["latency_ms_median"]
    p90, h = row["latency_ms_p90"], row["chunk_len"]
    assert row["rate_hz_replan_every_step"] == pytest.approx(1000 / p90, rel=1e-3)
    assert row["rate_hz_chunked"] == pytest.approx(h * 1000 / p90, rel=1e-3)


def test_bench_cli_writes_the_documented_rows(tmp_path, capsys):
    argv = ["bench", "--preset", "tiny", "--head", "regression", "flow", "--reps", "5"]
    assert cli_main([*argv, "--warmup", "1", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    body = json.loads((tmp_path / "bench.json").read_text())
    assert body["mode"] == "presets" and body["machine"]["torch"] == torch.__version__
    rows = body["rows"]
    assert [(r["preset"], r["head"]) for r in rows] == [("tiny", "regression"), ("tiny", "flow")]
    for row in rows:
        assert set(ROW_FIELDS) <= set(row) and row["skipped"] is None and "error" not in row
        check_timing(row)
        assert row["chunk_len"] == MODEL_PRESETS["tiny"].chunk_len
        assert 0 < row["prefix_ms_median"] < row["latency_ms_median"]
        assert row["peak_mem_MB"] > 0 and row["device"] == "cpu"
        # the configuration that ran is the one named: its parameters, held in fp32
        cfg = dataclasses.replace(MODEL_PRESETS["tiny"], head=row["head"])
        model = VLA(cfg, cameras=("front", "wrist"), state_dims={"robot": 6}, action_dim=6)
        n = sum(p.numel() for p in model.parameters())
        assert row["params_M"] == pytest.approx(n / 1e6, abs=1e-3)
        assert row["weights_MB"] == pytest.approx(4 * n / 1e6, rel=1e-2)
        assert f"tiny    {row['head']}" in printed
    assert rows[0]["params_M"] != rows[1]["params_M"]  # the head really differs
    assert "wrote" in printed


def test_full_size_preset_is_counted_on_meta_and_skipped():
    row = measure_config("pi0", "flow", max_weights_gb=2.0)
    assert set(ROW_FIELDS) <= set(row)
    assert re.search(r"fp32 weights \d+\.\d GB exceed --max-weights-gb 2", row["skipped"])
    assert row["params_M"] > 3000 and row["weights_MB"] == pytest.approx(row["params_M"] * 4, 1e-3)
    assert row["latency_ms_median"] is None and row["rate_hz_chunked"] is None
    # the same limit applies to the CPU presets, after building them
    small = measure_config("tiny", "regression", max_weights_gb=1e-4, reps=1)
    assert "max-weights-gb" in small["skipped"] and small["latency_ms_median"] is None


def test_bad_preset_head_and_device_are_clear_errors(tmp_path, capsys):
    assert cli_main(["bench", "--preset", "huge", "--out", str(tmp_path)]) == 2
    assert "huge" in capsys.readouterr().err
    assert cli_main(["bench", "--preset", "tiny", "--head", "mlp", "--out", str(tmp_path)]) == 2
    assert "valid heads" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="one or two"):
        compare_checkpoints([tmp_path, tmp_path, tmp_path])
    assert not (tmp_path / "bench.json").exists()


def test_params_table_is_unchanged(tmp_path, capsys):
    out = tmp_path / "params.json"
    assert cli_main(["bench", "--params", "--preset", "tiny", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [r["preset"] for r in rows] == ["tiny"] and rows[0]["params_M"] > 0
    assert "train_fp32_GB" in capsys.readouterr().out


def test_checkpoint_comparison_float_vs_int8(ckpts, tmp_path, capsys):
    src, int8 = ckpts
    out = tmp_path / "cmp.json"
    argv = ["bench", "--checkpoint", str(src), "--checkpoint", str(int8), "--reps", "5"]
    argv += ["--warmup", "1", "--json", str(out), "--success-task", "lift", "--episodes", "1"]
    assert cli_main([*argv, "--splits", "train", "novel_object", "--eval-workers", "1"]) == 0
    printed = capsys.readouterr().out
    body = json.loads(out.read_text())
    a, b = body["columns"]
    assert (a["checkpoint"], b["checkpoint"]) == (str(src), str(int8))
    assert (a["quantized"], b["quantized"]) == (False, True)
    assert a["params_M"] == b["params_M"] > 0  # int8 layers still count their weights
    assert a["disk_MB"] == pytest.approx(checkpoint_bytes(src) / 1e6, abs=0.01)
    assert b["disk_MB"] == pytest.approx(checkpoint_bytes(int8) / 1e6, abs=0.01)
    assert b["disk_MB"] < a["disk_MB"] and b["weights_MB"] < 0.7 * a["weights_MB"]
    for col in (a, b):
        check_timing(col)
        assert list(col["success"]) == ["train", "novel_object"]
        assert all(s["n"] == 1 and s["successes"] in (0, 1) for s in col["success"].values())
    assert body["ratio"]["disk_MB"] == pytest.approx(b["disk_MB"] / a["disk_MB"], abs=1e-3)
    assert "B/A" in printed and "success novel_object" in printed


def test_compiled_policy_matches_eager_without_recompiling(ckpts):
    """torch.compile (inductor) of the tiny checkpoint: bench reports it, the chunks equal
    eager's for the same seed, and new instructions reuse the compiled graphs."""
    from torch._dynamo.utils import counters

    src, _ = ckpts
    graphs = counters["stats"]["unique_graphs"]
    body = compare_checkpoints([src], reps=3, warmup=1, compile=True)
    col = body["columns"][0]
    assert not col.get("compile_error"), col.get("compile_error")
    assert set(COMPILE_FIELDS) <= set(col) and col["compile_max_abs_diff"] <= 1e-5
    assert col["compile_s"] > 0 and col["latency_ms_median_compiled"] > 0
    assert col["speedup"] == pytest.approx(
        col["latency_ms_median"] / col["latency_ms_median_compiled"], rel=0.02
    )
    assert counters["stats"]["unique_graphs"] > graphs  # inductor really compiled something

    compiled, eager = Policy.from_checkpoint(src, compile=True), Policy.from_checkpoint(src)
    rng = np.random.default_rng(0)
    prompts = ["lift the red cube", "x", "pick up the red cube and put it on the blue plate"]
    for i, prompt in enumerate(prompts):
        obs = {
            "images": {c: rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for c in eager.cameras},
            "state": (rng.normal(size=eager.state_dim) * 0.05).astype(np.float32),
            "prompt": prompt,
        }
        with torch._dynamo.config.patch(error_on_recompile=i > 0):
            got = compiled.infer(obs)["actions"]
        np.testing.assert_allclose(got, eager.infer(obs)["actions"], rtol=0, atol=1e-5)
