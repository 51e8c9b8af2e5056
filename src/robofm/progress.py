"""Progress bars and structured run logs: the one helper every long-running verb uses.

- `progress(...)` wraps tqdm with robofm's defaults: rate and ETA always shown, sparse updates
  when the output is not a terminal (CI logs), and `ROBOFM_PROGRESS=0` to silence bars.
- `RunLog` appends one JSON object per line to `<run dir>/log.jsonl`: every event carries the
  wall-clock time and seconds since the run started, and values are made JSON-safe (numpy and
  torch scalars, non-finite floats as strings), so the file parses with any JSON reader.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TextIO, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")

_BAR_FORMAT = (
    "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} "
    "[{elapsed}<{remaining}, {rate_fmt}{postfix}]"
)
_BAR_FORMAT_NO_TOTAL = "{desc}: {n_fmt} [{elapsed}, {rate_fmt}{postfix}]"


def progress_enabled() -> bool:
    """False when `ROBOFM_PROGRESS=0` is set in the environment."""
    return os.environ.get("ROBOFM_PROGRESS", "1") != "0"


def progress(
    iterable: Iterable[T] | None = None,
    *,
    total: int | None = None,
    desc: str = "",
    unit: str = "it",
    file: TextIO | None = None,
) -> tqdm:
    """A progress bar showing count, rate (`unit`/s) and ETA.

    Use it as an iterator wrapper (`for x in progress(xs, desc="record")`) or manually
    (`bar = progress(total=n); bar.update(k); bar.set_postfix(loss=...); bar.close()`).
    On a non-terminal stream it redraws at most every 10 s so logs stay readable.
    """
    stream = file if file is not None else sys.stderr
    interactive = hasattr(stream, "isatty") and stream.isatty()
    if total is None and iterable is not None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    return tqdm(
        iterable,
        total=total,
        desc=desc,
        unit=unit,
        file=stream,
        disable=not progress_enabled(),
        dynamic_ncols=interactive,
        ncols=None if interactive else 100,
        mininterval=0.2 if interactive else 10.0,
        bar_format=_BAR_FORMAT if total else _BAR_FORMAT_NO_TOTAL,
        smoothing=0.1,
    )


def to_jsonable(x: Any) -> Any:
    """Convert numpy/torch values, paths and tuples to plain JSON types.

    Non-finite floats become the strings "nan", "inf" or "-inf" (strict JSON has no NaN).
    """
    if isinstance(x, dict):
        return {str(k): to_jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_jsonable(v) for v in x]
    if isinstance(x, Path):
        return str(x)
    if hasattr(x, "tolist") and not isinstance(x, (str, bytes)):  # numpy / torch
        return to_jsonable(x.tolist())
    if isinstance(x, float) and not math.isfinite(x):
        return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")
    if x is None or isinstance(x, (bool, int, float, str)):
        return x
    return str(x)


class RunLog:
    """Append-only JSONL event log for one run (`<run_dir>/log.jsonl`).

    Each line is `{"event": ..., "time": unix s, "elapsed_s": s since open, **fields}` and is
    flushed immediately, so a killed run keeps every event written before the kill.
    """

    def __init__(self, run_dir: str | Path, name: str = "log.jsonl") -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / name
        self._file = self.path.open("a", encoding="utf-8")
        self._t0 = time.monotonic()

    def log(self, event: str, /, **fields: Any) -> dict[str, Any]:
        """Write one event line and return the record written."""
        record = {
            "event": event,
            "time": round(time.time(), 3),
            "elapsed_s": round(time.monotonic() - self._t0, 4),
            **to_jsonable(fields),
        }
        self._file.write(json.dumps(record, allow_nan=False) + "\n")
        self._file.flush()
        return record

    @contextlib.contextmanager
    def span(self, name: str, /, **fields: Any) -> Iterator[dict[str, Any]]:
        """Log `<name>.start`, run the block, then `<name>.end` with `duration_s` and `ok`.

        The yielded dict collects extra fields for the end record (e.g. counts, results).
        """
        extra: dict[str, Any] = {}
        self.log(f"{name}.start", **fields)
        t = time.monotonic()
        ok = False
        try:
            yield extra
            ok = True
        finally:
            self.log(f"{name}.end", duration_s=round(time.monotonic() - t, 4), ok=ok, **extra)

    def close(self) -> None:
        """Close the file; later `log` calls raise."""
        self._file.close()

    def __enter__(self) -> RunLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_runlog(path: str | Path) -> list[dict[str, Any]]:
    """Parse a JSONL run log; a torn last line (from a kill mid-write) is ignored."""
    records = []
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break
            raise
    return records
