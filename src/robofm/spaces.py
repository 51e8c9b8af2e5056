"""ActionSpace and StateSpace: the contract between data, models, servers and robots.

An `ActionSpace` says what each action number means: its name, unit, whether it is absolute
or a delta, joint or end-effector, which dimensions are grippers (and which value means open),
the control rate and the bounds. It also fixes the chunk length H a policy emits per call.

It is saved in every dataset and checkpoint (`action_space.json`, with a hash of the
normalisation stats) and checked whenever data meets a model or a client meets a server.
A mismatch is a `SpaceError` naming every differing field, never a silent reshape.

Cross-embodiment mixtures pad every action/state vector to the largest dimension with zeros
and carry a boolean mask (`pad_mask`), so losses ignore padded dimensions.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from robofm.atomic import atomic_write_text
from robofm.errors import SpaceError

MODES = ("absolute", "delta")  # per-dimension meaning of an action value
FRAMES = ("joint", "end_effector", "other")  # what the non-gripper dimensions command
SPACES_FILE_FORMAT = "robofm.spaces"  # value of "format" in action_space.json
SPACES_FILE_VERSION = 1  # bump when the file layout changes; readers reject unknown versions
_REL_TOL = 1e-6  # floats (bounds, rates) closer than this count as equal in compatibility checks


class _Space:
    """Behaviour shared by ActionSpace and StateSpace (JSON, hashing, comparison, padding)."""

    names: tuple[str, ...]

    @property
    def dim(self) -> int:
        """Number of dimensions (D for actions, S for state)."""
        return len(self.names)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict; tuples become lists."""
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }  # type: ignore[call-overload]

    def to_json(self) -> str:
        """Indented JSON text that `from_json` reads back to an equal space."""
        return json.dumps(self.to_dict(), indent=2)

    def hash(self) -> str:
        """First 16 hex digits of SHA-256 over the canonical JSON, including the space's kind.

        Stable across processes, platforms and Python versions (floats use shortest repr).
        """
        body = {"kind": type(self).__name__, **self.to_dict()}
        text = json.dumps(body, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def pad_mask(self, dim: int) -> np.ndarray:
        """(dim,) bool mask, True for this space's real dimensions when padded to `dim`."""
        if self.dim > dim:
            raise SpaceError(f"space has {self.dim} dimensions, more than the padded size {dim}")
        mask = np.zeros(dim, dtype=bool)
        mask[: self.dim] = True
        return mask

    def differences(self, other: Any, ignore: Iterable[str] = ()) -> list[str]:
        """Names of the fields where `other` (a space of the same kind) differs."""
        if type(self) is not type(other):
            raise SpaceError(f"cannot compare {type(self).__name__} with {type(other).__name__}")
        skip = set(ignore)
        return [
            f.name
            for f in dataclasses.fields(self)  # type: ignore[arg-type]
            if f.name not in skip and not _same(getattr(self, f.name), getattr(other, f.name))
        ]

    def check_compatible(
        self,
        other: Any,
        *,
        ignore: Iterable[str] = (),
        labels: tuple[str, str] = ("expected", "got"),
    ) -> None:
        """Raise `SpaceError` listing every field where `other` differs from this space.

        `labels` name the two sides in the message, e.g. ("checkpoint", "dataset").
        Fields in `ignore` are skipped (for example "chunk_len" when a client deliberately
        executes a different number of steps).
        """
        diffs = self.differences(other, ignore)
        if not diffs:
            return
        lines = [
            f"  - {name}: {labels[0]} {_show(getattr(self, name))}, "
            f"{labels[1]} {_show(getattr(other, name))}"
            for name in diffs
        ]
        raise SpaceError(
            f"{type(self).__name__} mismatch between {labels[0]} and {labels[1]} in "
            f"{len(diffs)} field(s) ({', '.join(diffs)}):\n" + "\n".join(lines)
        )

    @classmethod
    def from_dict(cls, data: Any, source: str = "space") -> Any:
        """Build from a JSON-style dict, checking every field's presence and type.

        Raises `SpaceError` naming `source` and the field at fault.
        """
        schema = _SCHEMAS[cls]
        if not isinstance(data, dict):
            raise SpaceError(f"{source}: expected a JSON object, got {type(data).__name__}")
        unknown = sorted(set(data) - set(schema))
        if unknown:
            raise SpaceError(f"{source}: unknown field(s) {unknown}; known: {sorted(schema)}")
        kwargs = {}
        for name, (kind, required) in schema.items():
            if name not in data:
                if required:
                    raise SpaceError(f"{source}: missing field '{name}'")
                continue
            value = data[name]
            try:
                _check_value(kind, name, value)
            except SpaceError as e:
                raise SpaceError(f"{source}: {e}") from None
            if kind == "float":
                value = float(value)
            elif kind == "float_tuple":
                value = tuple(float(v) for v in value)
            elif kind.endswith("_tuple"):
                value = tuple(value)
            kwargs[name] = value
        try:
            return cls(**kwargs)
        except SpaceError as e:
            raise SpaceError(f"{source}: {e}") from None

    @classmethod
    def from_json(cls, text: str, source: str = "space") -> Any:
        """Parse JSON text produced by `to_json`; errors name `source` and the field."""
        return cls.from_dict(_loads(text, source), source)


@dataclass(frozen=True)
class ActionSpace(_Space):
    """What a robot's action vector means. All per-dimension tuples have length D.

    Bounds are in the robot's own units (for example metres for an end-effector delta, radians
    for a joint target) and must be finite: give an unbounded dimension a generous bound, since
    the safety layer and the policy clip to these.
    """

    robot: str  # embodiment name; keys per-embodiment adapters, e.g. "robofm_sim_gripper"
    names: tuple[str, ...]  # (D,) dimension names, e.g. ("dx", "dy", "dz", "gripper")
    units: tuple[str, ...]  # (D,) units, e.g. "m", "rad", "m/s"; "1" for unitless
    mode: tuple[str, ...]  # (D,) "absolute" or "delta" per dimension
    frame: str  # "joint", "end_effector" or "other": what the arm dimensions command
    low: tuple[float, ...]  # (D,) lower bound per dimension, robot units
    high: tuple[float, ...]  # (D,) upper bound per dimension, robot units
    control_hz: float  # rate at which consecutive actions are executed, Hz
    chunk_len: int  # H: actions a policy returns per inference call
    gripper_dims: tuple[int, ...] = ()  # indices of gripper dimensions (empty if none)
    gripper_closed: float = 0.0  # gripper value meaning fully closed
    gripper_open: float = 1.0  # gripper value meaning fully open

    def __post_init__(self) -> None:
        _validate(self, _ACTION_FIELDS)
        d = self.dim
        for name in ("units", "mode", "low", "high"):
            if len(getattr(self, name)) != d:
                raise SpaceError(
                    f"field '{name}' has {len(getattr(self, name))} entries but 'names' has {d}"
                )
        for i, m in enumerate(self.mode):
            if m not in MODES:
                raise SpaceError(f"field 'mode[{i}]' is {m!r}; expected one of {MODES}")
        if self.frame not in FRAMES:
            raise SpaceError(f"field 'frame' is {self.frame!r}; expected one of {FRAMES}")
        for name in ("low", "high"):
            for i, v in enumerate(getattr(self, name)):
                if not math.isfinite(v):
                    raise SpaceError(f"field '{name}[{i}]' is {v}; bounds must be finite")
        for i, (lo, hi) in enumerate(zip(self.low, self.high, strict=True)):
            if lo > hi:
                raise SpaceError(
                    f"field 'low[{i}]' ({lo}) is greater than 'high[{i}]' ({hi}) "
                    f"for dimension {self.names[i]!r}"
                )
        if not (math.isfinite(self.control_hz) and self.control_hz > 0):
            raise SpaceError(f"field 'control_hz' is {self.control_hz}; must be > 0")
        if self.chunk_len < 1:
            raise SpaceError(f"field 'chunk_len' is {self.chunk_len}; must be >= 1")
        for i, g in enumerate(self.gripper_dims):
            if not 0 <= g < d:
                raise SpaceError(f"field 'gripper_dims[{i}]' is {g}; must index one of {d} dims")
        for name in ("gripper_closed", "gripper_open"):
            if not math.isfinite(getattr(self, name)):
                raise SpaceError(f"field '{name}' is {getattr(self, name)}; must be finite")
        if self.gripper_dims and self.gripper_closed == self.gripper_open:
            raise SpaceError("fields 'gripper_closed' and 'gripper_open' are equal")

    @property
    def low_array(self) -> np.ndarray:
        """(D,) float32 lower bounds."""
        return np.asarray(self.low, dtype=np.float32)

    @property
    def high_array(self) -> np.ndarray:
        """(D,) float32 upper bounds."""
        return np.asarray(self.high, dtype=np.float32)

    @property
    def delta_mask(self) -> np.ndarray:
        """(D,) bool, True where the dimension is a delta."""
        return np.asarray([m == "delta" for m in self.mode], dtype=bool)

    def clip(self, actions: np.ndarray) -> np.ndarray:
        """Clip (..., D) actions to the bounds; returns float32."""
        _check_last_dim(actions, self.dim, "actions")
        return np.clip(actions, self.low_array, self.high_array).astype(np.float32, copy=False)


@dataclass(frozen=True)
class StateSpace(_Space):
    """What a robot's proprioceptive state vector means. Tuples have length S."""

    robot: str  # embodiment name, the same as the ActionSpace's for one robot
    names: tuple[str, ...]  # (S,) dimension names, e.g. ("x", "y", "z", "gripper")
    units: tuple[str, ...]  # (S,) units per dimension; "1" for unitless

    def __post_init__(self) -> None:
        _validate(self, _STATE_FIELDS)
        if len(self.units) != self.dim:
            raise SpaceError(
                f"field 'units' has {len(self.units)} entries but 'names' has {self.dim}"
            )


# ---------------------------------------------------------------------------------------------
# The spaces file: action_space.json in every dataset and checkpoint.


@dataclass(frozen=True)
class SpacesFile:
    """Contents of `action_space.json`: the action space, the state space, and a stats hash."""

    action: ActionSpace  # the action contract
    state: StateSpace | None = None  # proprio contract, None for state-less policies
    stats_sha256: str | None = None  # `stats_hash()` of the normalisation stats used with it


def stats_hash(stats: Any) -> str:
    """Stable SHA-256 hex digest of normalisation stats (nested dicts of numbers/arrays).

    Arrays are hashed by value (rounded to float32), so the same stats written by two
    programs hash the same.
    """

    def plain(x: Any) -> Any:
        if isinstance(x, dict):
            return {str(k): plain(v) for k, v in sorted(x.items(), key=lambda kv: str(kv[0]))}
        if hasattr(x, "tolist"):  # numpy arrays and torch tensors
            x = np.asarray(x.tolist(), dtype=np.float64)
            return np.asarray(x, dtype=np.float32).astype(np.float64).tolist()
        if isinstance(x, (list, tuple)):
            return [plain(v) for v in x]
        if isinstance(x, float):
            return float(np.float32(x))
        return x

    text = json.dumps(plain(stats), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def save_spaces(path: str | Path, spaces: SpacesFile) -> None:
    """Write `action_space.json` atomically (a crash leaves the old file or none)."""
    body = {
        "format": SPACES_FILE_FORMAT,
        "version": SPACES_FILE_VERSION,
        "action": spaces.action.to_dict(),
        "state": None if spaces.state is None else spaces.state.to_dict(),
        "stats_sha256": spaces.stats_sha256,
    }
    atomic_write_text(Path(path), json.dumps(body, indent=2) + "\n")


def load_spaces(path: str | Path) -> SpacesFile:
    """Read and fully validate `action_space.json`.

    Raises `SpaceError` naming the file and the field at fault; nothing is returned
    half-parsed.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise SpaceError(f"{path}: cannot read ({e.strerror or e})") from e
    body = _loads(text, str(path))
    if not isinstance(body, dict):
        raise SpaceError(f"{path}: expected a JSON object, got {type(body).__name__}")
    if body.get("format") != SPACES_FILE_FORMAT:
        raise SpaceError(
            f"{path}: field 'format' is {body.get('format')!r}, expected {SPACES_FILE_FORMAT!r}"
        )
    if body.get("version") != SPACES_FILE_VERSION:
        raise SpaceError(
            f"{path}: field 'version' is {body.get('version')!r}; this robofm "
            f"reads version {SPACES_FILE_VERSION}"
        )
    if "action" not in body:
        raise SpaceError(f"{path}: missing field 'action'")
    action = ActionSpace.from_dict(body["action"], f"{path}: field 'action'")
    state_data = body.get("state")
    state = (
        None if state_data is None else StateSpace.from_dict(state_data, f"{path}: field 'state'")
    )
    digest = body.get("stats_sha256")
    if digest is not None and not isinstance(digest, str):
        raise SpaceError(f"{path}: field 'stats_sha256' must be a string or null")
    return SpacesFile(action=action, state=state, stats_sha256=digest)


# ---------------------------------------------------------------------------------------------
# Padding for cross-embodiment mixtures.


def common_dim(spaces: Sequence[ActionSpace | StateSpace]) -> int:
    """The padded dimension of a mixture: the largest D among `spaces`."""
    if not spaces:
        raise SpaceError("common_dim needs at least one space")
    return max(s.dim for s in spaces)


def pad_last_dim(x: Any, dim: int) -> Any:
    """Zero-pad the last axis of a numpy array or torch tensor from D to `dim` (>= D)."""
    d = x.shape[-1]
    if d > dim:
        raise SpaceError(f"cannot pad {d} dimensions down to {dim}")
    if d == dim:
        return x
    if isinstance(x, np.ndarray):
        out = np.zeros((*x.shape[:-1], dim), dtype=x.dtype)
    else:  # torch.Tensor, without importing torch here
        out = x.new_zeros((*x.shape[:-1], dim))
    out[..., :d] = x
    return out


# ---------------------------------------------------------------------------------------------
# Shared machinery: field schemas, strict parsing, hashing, comparison.

# field name -> (kind, required); kinds: str, int, float, str_tuple, float_tuple, int_tuple
_ACTION_FIELDS = {
    "robot": ("str", True),
    "names": ("str_tuple", True),
    "units": ("str_tuple", True),
    "mode": ("str_tuple", True),
    "frame": ("str", True),
    "low": ("float_tuple", True),
    "high": ("float_tuple", True),
    "control_hz": ("float", True),
    "chunk_len": ("int", True),
    "gripper_dims": ("int_tuple", False),
    "gripper_closed": ("float", False),
    "gripper_open": ("float", False),
}
_STATE_FIELDS = {
    "robot": ("str", True),
    "names": ("str_tuple", True),
    "units": ("str_tuple", True),
}
_SCHEMAS = {ActionSpace: _ACTION_FIELDS, StateSpace: _STATE_FIELDS}


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def _check_value(kind: str, name: str, value: Any) -> None:
    """Raise SpaceError if `value` does not have the field's kind."""
    scalar_ok = {"str": lambda v: isinstance(v, str), "int": _is_int, "float": _is_number}
    if kind in scalar_ok:
        if not scalar_ok[kind](value):
            raise SpaceError(f"field '{name}' must be {kind}, got {type(value).__name__} {value!r}")
        return
    item_kind = kind.removesuffix("_tuple")
    if not isinstance(value, (tuple, list)):
        raise SpaceError(
            f"field '{name}' must be a list of {item_kind}, got {type(value).__name__}"
        )
    for i, v in enumerate(value):
        _check_value(item_kind, f"{name}[{i}]", v)


def _validate(obj: Any, schema: dict[str, tuple[str, bool]]) -> None:
    """Type-check every field; lists given for tuple fields are stored as tuples (same values)."""
    for name, (kind, _) in schema.items():
        value = getattr(obj, name)
        _check_value(kind, name, value)
        if kind.endswith("_tuple") and isinstance(value, list):
            object.__setattr__(obj, name, tuple(value))
    if not obj.names:
        raise SpaceError("field 'names' is empty; a space needs at least one dimension")
    if len(set(obj.names)) != len(obj.names):
        dup = sorted({n for n in obj.names if obj.names.count(n) > 1})
        raise SpaceError(f"field 'names' repeats {dup}")


def _loads(text: str, source: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise SpaceError(
            f"{source}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}"
        ) from None


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return math.isclose(a, b, rel_tol=_REL_TOL, abs_tol=1e-9)
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def _show(v: Any) -> str:
    return repr(list(v)) if isinstance(v, tuple) else repr(v)


def _check_last_dim(x: Any, d: int, what: str) -> None:
    if x.shape[-1] != d:
        raise SpaceError(f"{what} have last dimension {x.shape[-1]}, the action space has {d}")
