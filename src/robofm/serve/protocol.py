"""openpi's wire format: msgpack with numpy arrays as tagged maps. No pickle, ever.

An array travels as `{b"__ndarray__": True, b"data": raw bytes, b"dtype": dtype.str,
b"shape": [..]}`, a numpy scalar as `{b"__npgeneric__": True, b"data": value, b"dtype": str}`.
This is the layout of `openpi_client.msgpack_numpy`, so the unmodified PyPI client and
robofm's own client (`robofm.serve.client`) both talk to `robofm serve`.

Depends only on numpy and msgpack (the robot side stays light). Decoding is defensive: the
bytes come from the network, so every malformed frame becomes a `ProtocolError` that says
what was wrong, never an uncaught exception or an object dtype.
"""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np

from robofm.errors import RobofmError

# dtype kinds that can be rebuilt from raw bytes without executing anything:
# bool, signed/unsigned int, float, complex, fixed bytes, fixed unicode.
_SAFE_KINDS = frozenset("biufcSU")
_ND = b"__ndarray__"
_NG = b"__npgeneric__"


class ProtocolError(RobofmError, ValueError):
    """A frame that is not valid msgpack in openpi's numpy layout; the message says why."""


def _encode(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in _SAFE_KINDS:
            raise ProtocolError(f"cannot send an array of dtype {obj.dtype} (object/void)")
        arr = np.ascontiguousarray(obj)
        return {_ND: True, b"data": arr.tobytes(), b"dtype": arr.dtype.str, b"shape": arr.shape}
    if isinstance(obj, np.generic):
        return {_NG: True, b"data": obj.item(), b"dtype": obj.dtype.str}
    raise TypeError(f"cannot pack {type(obj).__name__}")  # msgpack reports it to the caller


def _dtype(value: Any) -> np.dtype:
    if not isinstance(value, str):
        raise ProtocolError(f"array dtype must be a string, got {type(value).__name__}")
    try:
        dt = np.dtype(value)
    except TypeError as e:
        raise ProtocolError(f"unknown array dtype {value!r}") from e
    if dt.kind not in _SAFE_KINDS:
        raise ProtocolError(f"array dtype {value!r} is not allowed (object/void)")
    return dt


def _decode(obj: dict) -> Any:
    if _ND in obj:
        data, shape = obj.get(b"data"), obj.get(b"shape")
        if not isinstance(data, bytes) or not isinstance(shape, (list, tuple)):
            raise ProtocolError("array map needs b'data' (bytes) and b'shape' (list of ints)")
        if not all(isinstance(s, int) and s >= 0 for s in shape):
            raise ProtocolError(f"array shape must be non-negative ints, got {list(shape)}")
        dt = _dtype(obj.get(b"dtype"))
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if count * dt.itemsize != len(data):
            raise ProtocolError(
                f"array of shape {list(shape)} and dtype {dt.str} needs "
                f"{count * dt.itemsize} bytes, got {len(data)}"
            )
        return np.frombuffer(data, dtype=dt).reshape(shape)
    if _NG in obj:
        dt = _dtype(obj.get(b"dtype"))
        try:
            return dt.type(obj.get(b"data"))
        except (TypeError, ValueError, OverflowError) as e:
            raise ProtocolError(f"bad numpy scalar of dtype {dt.str}: {e}") from e
    return obj


def packb(obj: Any) -> bytes:
    """Serialise a (nested) dict/list of numpy arrays, scalars, str, bytes and numbers."""
    return msgpack.packb(obj, default=_encode, use_bin_type=True)


def unpackb(data: bytes, *, max_bytes: int | None = None) -> Any:
    """Parse one frame; raises `ProtocolError` naming the fault for anything malformed.

    `max_bytes` refuses frames larger than that before parsing (the server's size limit).
    Arrays come back read-only (views of the frame); copy before writing into them.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ProtocolError(f"expected a binary frame, got {type(data).__name__}")
    if max_bytes is not None and len(data) > max_bytes:
        raise ProtocolError(f"frame of {len(data)} bytes exceeds the limit of {max_bytes}")
    try:
        return msgpack.unpackb(data, object_hook=_decode, raw=False, strict_map_key=False)
    except ProtocolError:
        raise
    except msgpack.ExtraData as e:
        raise ProtocolError("frame has trailing bytes after one msgpack object") from e
    except (ValueError, TypeError, msgpack.UnpackException) as e:
        # ValueError covers truncated input ("Unpack failed: incomplete input").
        raise ProtocolError(f"not a valid msgpack frame ({type(e).__name__}: {e})") from e
