"""TFRecord files and `tf.train.Example` protos, read without TensorFlow or protobuf.

A TFRecord file is a sequence of records, each framed as

    uint64 length | uint32 masked_crc32c(length bytes) | data[length] | uint32 masked_crc32c(data)

(little-endian). `index_records` walks the 12-byte headers once and returns each record's
data offset and length, so a reader can later `pread` any record directly.

`parse_example` decodes the protobuf wire format of `tf.train.Example`:

    Example { Features features = 1; }
    Features { map<string, Feature> feature = 1; }    # map entry: key = 1, value = 2
    Feature { oneof { BytesList bytes_list = 1; FloatList float_list = 2;
                      Int64List int64_list = 3; } }
    BytesList { repeated bytes value = 1; }
    FloatList { repeated float value = 1 [packed]; }   # unpacked also accepted
    Int64List { repeated int64 value = 1 [packed]; }   # unpacked also accepted

Values are decoded lazily: `parse_example` only locates each feature's payload; `RawFeature`
turns it into a numpy array or a list of bytes when asked, and `decode_feature` applies the
TFDS conventions of one `FeatureSpec` (a leaf of `features.json`): shape, dtype, encoding.
"""

from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass
from math import prod
from typing import Any

import numpy as np

from robofm.data.episode import DatasetError

_MASK_DELTA = 0xA282EAD8
_HEADER = struct.Struct("<QI")  # length, masked crc of the length
_FOOTER = struct.Struct("<I")  # masked crc of the data
HEADER_BYTES = 12
FOOTER_BYTES = 4

BYTES_LIST, FLOAT_LIST, INT64_LIST = 1, 2, 3  # Feature oneof field numbers
KIND_NAMES = {BYTES_LIST: "bytes_list", FLOAT_LIST: "float_list", INT64_LIST: "int64_list"}


# ---------------------------------------------------------------------------------------------
# CRC-32C (Castagnoli)


def _crc32c_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = _crc32c_table()


def crc32c_python(data: bytes | memoryview) -> int:
    """CRC-32C of `data` in pure Python (slow, a few MB/s): the fallback when neither
    `google-crc32c` nor `crc32c` is installed."""
    crc = 0xFFFFFFFF
    table = _TABLE
    for byte in bytes(data):
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _select_crc32c():
    try:
        import google_crc32c

        return lambda data: google_crc32c.value(bytes(data)), "google-crc32c"
    except ImportError:
        pass
    try:
        import crc32c as crc32c_pkg

        return lambda data: crc32c_pkg.crc32c(bytes(data)), "crc32c"
    except ImportError:
        return crc32c_python, "python"


crc32c, CRC32C_IMPLEMENTATION = _select_crc32c()


def masked_crc32c(data: bytes | memoryview) -> int:
    """The masked CRC that TFRecord stores: rotate right by 15 bits, add a constant."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


# ---------------------------------------------------------------------------------------------
# Record framing


@dataclass(frozen=True)
class RecordIndex:
    """Where one record's data lies in its shard."""

    shard: int  # index into the reader's shard list
    record: int  # record number within the shard (0-based)
    offset: int  # byte offset of the data (after the 12-byte header)
    length: int  # data length in bytes


def index_records(
    path: str, shard: int = 0, *, on_error: list[str] | None = None
) -> list[RecordIndex]:
    """Offsets of every record in TFRecord file `path`, reading only the 12-byte headers.

    The length CRC is checked; the data CRC is not (see `read_record`). A corrupt header or a
    record that runs past the end of the file raises `DatasetError` naming `path` and the record
    number, or, when `on_error` is a list, appends "<path>: record <k>: <reason>" to it and
    returns the records before the damage (nothing after a bad header can be located).
    """
    out: list[RecordIndex] = []
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        pos = 0
        k = 0
        while pos < size:
            reason = None
            header = f.read(HEADER_BYTES)
            if len(header) < HEADER_BYTES:
                reason = f"truncated header ({len(header)} of {HEADER_BYTES} bytes at end of file)"
            else:
                length, length_crc = _HEADER.unpack(header)
                if masked_crc32c(header[:8]) != length_crc:
                    reason = "length CRC mismatch (corrupt record header)"
                elif pos + HEADER_BYTES + length + FOOTER_BYTES > size:
                    have = size - pos - HEADER_BYTES
                    reason = (
                        f"truncated: needs {length + FOOTER_BYTES} bytes after the header, "
                        f"file has {have}"
                    )
            if reason is not None:
                msg = f"{path}: record {k}: {reason}"
                if on_error is None:
                    raise DatasetError(msg)
                on_error.append(msg)
                break
            out.append(RecordIndex(shard, k, pos + HEADER_BYTES, length))
            pos += HEADER_BYTES + length + FOOTER_BYTES
            f.seek(pos)
            k += 1
    return out


def read_record(fd: int, path: str, rec: RecordIndex) -> bytes:
    """The data of record `rec` from open file descriptor `fd`, its CRC verified.

    Uses `os.pread`, so it never moves a shared file position. Raises `DatasetError` naming
    `path` and the record number on a short read or a data CRC mismatch.
    """
    n = rec.length + FOOTER_BYTES
    blob = os.pread(fd, n, rec.offset)
    if len(blob) != n:
        raise DatasetError(
            f"{path}: record {rec.record}: truncated (read {len(blob)} of {n} bytes)"
        )
    data = blob[: rec.length]
    (stored,) = _FOOTER.unpack_from(blob, rec.length)
    if masked_crc32c(data) != stored:
        raise DatasetError(f"{path}: record {rec.record}: data CRC mismatch (corrupt record)")
    return data


# ---------------------------------------------------------------------------------------------
# Protobuf wire format


class WireError(ValueError):
    """Malformed protobuf bytes; callers wrap it in a `DatasetError` naming the file."""


def _varint(buf: memoryview, pos: int, end: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= end:
            raise WireError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise WireError("varint longer than 10 bytes")


def _fields(buf: memoryview, pos: int, end: int):
    """Yield (field number, wire type, value) for each field in buf[pos:end].

    value is an int for varint / fixed fields, a (start, stop) span for length-delimited ones.
    """
    while pos < end:
        key, pos = _varint(buf, pos, end)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos, end)
        elif wire == 2:
            n, pos = _varint(buf, pos, end)
            if pos + n > end:
                raise WireError(f"field {field}: length {n} runs past its message")
            value = (pos, pos + n)
            pos += n
        elif wire == 5:
            if pos + 4 > end:
                raise WireError(f"field {field}: truncated fixed32")
            value = int.from_bytes(buf[pos : pos + 4], "little")
            pos += 4
        elif wire == 1:
            if pos + 8 > end:
                raise WireError(f"field {field}: truncated fixed64")
            value = int.from_bytes(buf[pos : pos + 8], "little")
            pos += 8
        else:
            raise WireError(f"field {field}: unsupported wire type {wire}")
        yield field, wire, value


def decode_varints(data: bytes | memoryview) -> np.ndarray:
    """(N,) int64 from a packed run of varints, vectorised with numpy.

    Each value's 7-bit groups are shifted into place and summed per value; the groups never
    overlap, so the sum equals the bitwise OR that a scalar decoder computes.
    """
    b = np.frombuffer(data, dtype=np.uint8)
    if b.size == 0:
        return np.zeros(0, dtype=np.int64)
    if b[-1] & 0x80:
        raise WireError("truncated packed varint")
    ends = np.flatnonzero(b < 0x80)  # (N,) index of each value's last byte
    starts = np.concatenate(([0], ends[:-1] + 1))  # (N,)
    lengths = ends - starts + 1
    if lengths.max() > 10:
        raise WireError("varint longer than 10 bytes")
    pos = np.arange(b.size) - np.repeat(starts, lengths)  # byte position within its value
    parts = (b & 0x7F).astype(np.uint64) << (7 * pos).astype(np.uint64)
    return np.add.reduceat(parts, starts).view(np.int64)


@dataclass(frozen=True)
class RawFeature:
    """One `tf.train.Feature`, located but not yet decoded."""

    kind: int  # BYTES_LIST, FLOAT_LIST or INT64_LIST
    buf: memoryview  # the whole serialized Example
    start: int  # span of the BytesList / FloatList / Int64List message in buf
    stop: int

    def as_bytes(self) -> list[bytes]:
        """The values of a bytes_list, in order."""
        self._expect(BYTES_LIST)
        return [
            bytes(self.buf[a:b])
            for field, wire, (a, b) in _fields(self.buf, self.start, self.stop)
            if field == 1 and wire == 2
        ]

    def as_floats(self) -> np.ndarray:
        """(N,) float32 values of a float_list (packed or not)."""
        self._expect(FLOAT_LIST)
        chunks: list[np.ndarray] = []
        for field, wire, value in _fields(self.buf, self.start, self.stop):
            if field != 1:
                continue
            if wire == 2:  # packed
                a, b = value
                if (b - a) % 4:
                    raise WireError(f"packed float list of {b - a} bytes")
                chunks.append(np.frombuffer(self.buf[a:b], dtype="<f4"))
            elif wire == 5:  # one unpacked float
                chunks.append(np.array([value], dtype="<u4").view("<f4"))
            else:
                raise WireError(f"float list value with wire type {wire}")
        return _concat(chunks, np.float32)

    def as_int64(self) -> np.ndarray:
        """(N,) int64 values of an int64_list (packed or not)."""
        self._expect(INT64_LIST)
        chunks: list[np.ndarray] = []
        for field, wire, value in _fields(self.buf, self.start, self.stop):
            if field != 1:
                continue
            if wire == 2:  # packed
                a, b = value
                chunks.append(decode_varints(self.buf[a:b]))
            elif wire == 0:  # one unpacked varint
                chunks.append(np.array([value], dtype=np.uint64).view(np.int64))
            else:
                raise WireError(f"int64 list value with wire type {wire}")
        return _concat(chunks, np.int64)

    def _expect(self, kind: int) -> None:
        if self.kind != kind:
            raise WireError(f"holds a {KIND_NAMES[self.kind]}, expected a {KIND_NAMES[kind]}")


def _concat(chunks: list[np.ndarray], dtype: type) -> np.ndarray:
    if not chunks:
        return np.zeros(0, dtype=dtype)
    if len(chunks) == 1:
        return chunks[0].astype(dtype)  # copies: the result never aliases the record buffer
    return np.concatenate(chunks).astype(dtype, copy=False)


def parse_example(data: bytes) -> dict[str, RawFeature]:
    """Locate every feature of a serialized `tf.train.Example`: name -> `RawFeature`.

    A feature with no value set (an empty oneof) is returned as an empty bytes_list, which
    every decoder treats as zero values. Raises `WireError` on malformed bytes.
    """
    buf = memoryview(data)
    out: dict[str, RawFeature] = {}
    for field, wire, span in _fields(buf, 0, len(buf)):
        if field != 1 or wire != 2:
            continue  # Example has only `features`; skip unknown fields like protobuf does
        for f2, w2, (ea, eb) in _fields(buf, *span):
            if f2 != 1 or w2 != 2:
                continue
            key = None
            feature = RawFeature(BYTES_LIST, buf, 0, 0)
            for f3, w3, value in _fields(buf, ea, eb):
                if f3 == 1 and w3 == 2:
                    key = bytes(buf[value[0] : value[1]]).decode("utf-8")
                elif f3 == 2 and w3 == 2:
                    feature = _parse_feature(buf, *value)
            if key is None:
                raise WireError("feature map entry without a key")
            out[key] = feature  # later entries win, as in protobuf map parsing
    return out


def _parse_feature(buf: memoryview, start: int, stop: int) -> RawFeature:
    feature = RawFeature(BYTES_LIST, buf, start, start)
    for field, wire, value in _fields(buf, start, stop):
        if field in KIND_NAMES and wire == 2:
            feature = RawFeature(field, buf, value[0], value[1])  # last oneof member wins
    return feature


# ---------------------------------------------------------------------------------------------
# TFDS feature specs

FLOAT_DTYPES = {"float16", "float32", "float64"}  # stored in float_list; others in int64_list


@dataclass(frozen=True)
class FeatureSpec:
    """One leaf of a TFDS FeaturesDict, under its flattened serialized key."""

    key: str  # "steps/observation/image_0", "episode_metadata/file_path"
    kind: str  # "tensor" (Tensor, Scalar, ClassLabel), "image", "text"; "opaque": not decoded
    shape: tuple[int | None, ...]  # per step for step features; None = unknown dimension
    dtype: str  # numpy dtype name ("float32", "bool", "uint8", "string")
    encoding: str  # tensor: "none" / "bytes" / "zlib"; image: "jpeg" / "png" / ""
    per_step: bool  # True under `steps` (one value per step), False for episode-level


def decode_feature(spec: FeatureSpec, raw: RawFeature | None) -> Any:
    """Decode one feature of an episode Example into numpy, as TFDS would return it.

    Step features give (T, *shape) arrays (T from the value count), episode-level ones an
    array of `shape` or a scalar. Text becomes str, string tensors stay bytes (object arrays);
    images stay encoded: a list of T byte strings (decode with `decode_image`). A missing key
    gives zero values, as TFDS reads step features with `allow_missing`.
    """
    if spec.kind == "tensor" and spec.dtype != "string" and spec.encoding == "none":
        if raw is None:
            flat = np.zeros(0, dtype=np.float32 if spec.dtype in FLOAT_DTYPES else np.int64)
        else:
            flat = raw.as_floats() if spec.dtype in FLOAT_DTYPES else raw.as_int64()
        if spec.dtype == "uint64":
            flat = flat.view(np.uint64)  # TFDS bitcasts uint64 to int64 when writing
        return _reshape(spec, flat.astype(spec.dtype, copy=False))
    values = raw.as_bytes() if raw is not None else []
    if spec.kind == "text":
        return _reshape(spec, to_objects([v.decode("utf-8") for v in values]))
    if spec.kind == "tensor" and spec.encoding == "none":  # string tensor
        return _reshape(spec, to_objects(values))
    if spec.kind == "tensor":  # "bytes" / "zlib": each value is one whole tensor
        arrays = [_bytes_to_array(spec, v) for v in values]
        values = np.stack(arrays) if arrays else np.zeros((0, *dims(spec)), spec.dtype)
    if spec.per_step:
        return values
    if len(values) != 1:
        raise WireError(f"'{spec.key}' has {len(values)} values, expected 1")
    return values[0]


def to_objects(values: list) -> np.ndarray:
    """(N,) object array holding `values` (str or bytes) as they are."""
    arr = np.empty(len(values), dtype=object)
    arr[:] = values
    return arr


def _reshape(spec: FeatureSpec, flat: np.ndarray) -> Any:
    """(N,) flat values -> (T, *shape) for a step feature, `shape` (or a scalar) otherwise."""
    per = prod(d for d in spec.shape if d is not None)
    if spec.per_step:
        if per == 0 or len(flat) % per:
            raise WireError(f"'{spec.key}' has {len(flat)} values, not a multiple of {per}")
        return flat.reshape(len(flat) // per, *spec.shape)
    if None in spec.shape:
        return flat.reshape(tuple(-1 if d is None else d for d in spec.shape))
    if len(flat) != per:
        raise WireError(f"'{spec.key}' has {len(flat)} values, expected {per}")
    return flat.reshape(spec.shape) if spec.shape else flat[0]


def dims(spec: FeatureSpec) -> tuple[int, ...]:
    """The feature's shape with unknown dimensions as 0."""
    return tuple(0 if d is None else d for d in spec.shape)


def _bytes_to_array(spec: FeatureSpec, blob: bytes) -> np.ndarray:
    if spec.encoding == "zlib":
        blob = zlib.decompress(blob)
    arr = np.frombuffer(blob, dtype=np.dtype(spec.dtype).newbyteorder("<")).astype(spec.dtype)
    known = prod(d for d in spec.shape if d is not None)
    if None in spec.shape:
        return arr.reshape(tuple(-1 if d is None else d for d in spec.shape))
    if arr.size != known:
        raise WireError(f"'{spec.key}' holds {arr.size} values, expected {known}")
    return arr.reshape(spec.shape)
