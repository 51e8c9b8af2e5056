from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
import torch

from robofm.progress import RunLog, progress, read_runlog, to_jsonable


def test_progress_bar_shows_rate_and_eta(monkeypatch):
    monkeypatch.setenv("ROBOFM_PROGRESS", "1")
    buf = io.StringIO()
    bar = progress(total=4, desc="record", unit="ep", file=buf)
    for _ in range(4):
        bar.update(1)
    bar.close()
    text = buf.getvalue()
    assert "record" in text and "4/4" in text
    assert "ep/s" in text or "s/ep" in text  # rate
    assert "<" in text  # elapsed<remaining (ETA)


def test_progress_can_be_silenced(monkeypatch):
    monkeypatch.setenv("ROBOFM_PROGRESS", "0")
    buf = io.StringIO()
    assert list(progress(range(3), desc="x", file=buf)) == [0, 1, 2]
    assert buf.getvalue() == ""


def test_runlog_writes_strict_jsonl_with_spans(tmp_path):
    with RunLog(tmp_path) as log:
        log.log(
            "metrics",
            step=np.int64(3),
            loss=torch.tensor(0.5),
            bad=math.nan,
            vec=np.array([1.0, math.inf]),
            path=tmp_path,
        )
        with log.span("stage", name="a") as extra:
            extra["count"] = 7
        with pytest.raises(ValueError), log.span("broken"):
            raise ValueError("boom")
    lines = (tmp_path / "log.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]  # strict JSON: no NaN literals
    assert records[0]["event"] == "metrics" and records[0]["step"] == 3
    assert records[0]["loss"] == 0.5 and records[0]["bad"] == "nan"
    assert records[0]["vec"] == [1.0, "inf"]
    assert [r["event"] for r in records[1:]] == [
        "stage.start",
        "stage.end",
        "broken.start",
        "broken.end",
    ]
    assert records[2]["ok"] is True and records[2]["count"] == 7
    assert records[4]["ok"] is False and records[4]["duration_s"] >= 0
    assert all(r["elapsed_s"] >= 0 and r["time"] > 1e9 for r in records)


def test_read_runlog_tolerates_a_torn_last_line(tmp_path):
    with RunLog(tmp_path) as log:
        log.log("a")
        log.log("b")
    with (tmp_path / "log.jsonl").open("a") as f:
        f.write('{"event": "c", "ti')  # killed mid-write
    assert [r["event"] for r in read_runlog(tmp_path / "log.jsonl")] == ["a", "b"]


def test_to_jsonable_handles_nested_values():
    out = to_jsonable({"a": (1, np.float32(2.5)), 3: {"b": -math.inf}})
    assert out == {"a": [1, 2.5], "3": {"b": "-inf"}}
