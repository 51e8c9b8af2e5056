"""mp4 camera streams: frame-accurate random access by timestamp, and a streaming encoder.

Decoding seeks to the keyframe before the first requested time and decodes forward, so a
random frame costs at most one GOP of decoding, never a whole file. Sequential requests reuse
the open decoder without seeking. Containers are opened lazily per process (a fork gets its
own), which makes readers safe in DataLoader workers.
"""

from __future__ import annotations

import os
import weakref
from collections import OrderedDict
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from robofm.data.episode import DatasetError

_MAX_FORWARD_S = 1.0  # decode forward instead of seeking when the target is this close ahead


class VideoDecoder:
    """Frames of one mp4 file by presentation time (seconds)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._container: av.container.InputContainer | None = None
        self._frames = None  # the live decode generator
        self._last_time: float | None = None  # time of the last decoded frame, s
        self._last_rgb: np.ndarray | None = None

    def _open(self) -> None:
        try:
            self._container = av.open(str(self.path))
        except (OSError, av.error.FFmpegError) as e:
            raise DatasetError(f"{self.path}: cannot open video ({e})") from e
        stream = self._container.streams.video[0]
        stream.thread_type = "AUTO"
        self._stream = stream
        self._frames = None
        self._last_time = None

    def _seek(self, t: float) -> None:
        assert self._container is not None
        offset = int(t / self._stream.time_base) if t > 0 else 0
        self._container.seek(offset, stream=self._stream, backward=True, any_frame=False)
        self._frames = self._container.decode(self._stream)
        self._last_time = None
        self._last_rgb = None

    def read(self, times_s: np.ndarray, tolerance_s: float) -> np.ndarray:
        """(K, Hpx, Wpx, 3) uint8 frames at the K times (any order, repeats allowed).

        Raises `DatasetError` naming the file when no frame lies within `tolerance_s`.
        """
        if self._container is None:
            self._open()
        times_s = np.asarray(times_s, dtype=np.float64)
        out: list[np.ndarray | None] = [None] * len(times_s)
        for k in np.argsort(times_s, kind="stable"):
            out[k] = self._frame_at(float(times_s[k]), tolerance_s)
        return np.stack(out)  # type: ignore[arg-type]

    def _frame_at(self, t: float, tol: float) -> np.ndarray:
        last = self._last_time
        if last is not None and abs(last - t) <= tol and self._last_rgb is not None:
            return self._last_rgb
        if self._frames is None or last is None or t < last - tol or t > last + _MAX_FORWARD_S:
            self._seek(t)
        for frame in self._frames:  # type: ignore[union-attr]
            ft = float(frame.time)
            self._last_time = ft
            if ft < t - tol:
                continue
            if ft > t + tol:
                break
            self._last_rgb = frame.to_ndarray(format="rgb24")
            return self._last_rgb
        self._frames = None  # the generator is exhausted or past the target: reseek next time
        raise DatasetError(
            f"{self.path}: no frame within {tol * 1e3:.2f} ms of t={t:.4f} s "
            f"(nearest decoded: {self._last_time}); the video is shorter than its metadata "
            f"or its timestamps disagree"
        )

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
        self._container = None
        self._frames = None


_LIVE_CACHES: weakref.WeakSet[DecoderCache] = weakref.WeakSet()


def _close_all_before_fork() -> None:
    """Close open decoders before a fork: FFmpeg's decoder threads and locks must not be
    inherited mid-use by DataLoader workers (a forked child can deadlock on them)."""
    for cache in list(_LIVE_CACHES):
        cache.close()


os.register_at_fork(before=_close_all_before_fork)


class DecoderCache:
    """A small per-process LRU of open `VideoDecoder`s keyed by path."""

    def __init__(self, max_open: int = 8) -> None:
        self.max_open = max_open
        self._pid = os.getpid()
        self._decoders: OrderedDict[Path, VideoDecoder] = OrderedDict()
        _LIVE_CACHES.add(self)

    def close(self) -> None:
        """Close every open decoder; they reopen lazily on the next read."""
        for dec in self._decoders.values():
            dec.close()
        self._decoders = OrderedDict()

    def get(self, path: Path) -> VideoDecoder:
        if self._pid != os.getpid():  # forked: never reuse the parent's handles
            self._decoders = OrderedDict()
            self._pid = os.getpid()
        dec = self._decoders.pop(path, None) or VideoDecoder(path)
        self._decoders[path] = dec
        while len(self._decoders) > self.max_open:
            _, old = self._decoders.popitem(last=False)
            old.close()
        return dec

    def __getstate__(self) -> dict:
        return {"max_open": self.max_open}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["max_open"])


class VideoEncoder:
    """Append RGB frames to an mp4 (h264 via libx264 or AV1 via libsvtav1), pts = frame count.

    Frame k is presented at k / fps seconds, so an episode starting at frame k0 of the file has
    `from_timestamp = k0 / fps` (LeRobot v3 concatenates episodes this way).
    """

    def __init__(
        self,
        path: Path,
        fps: float,
        width: int,
        height: int,
        codec: str = "libx264",
        crf: int = 23,
        gop: int = 2,
    ) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fps = fps
        self._container = av.open(str(self.path), mode="w")
        rate = Fraction(fps).limit_denominator(1001)
        stream = self._container.add_stream(codec, rate=rate)
        stream.width, stream.height = width, height
        # 4:2:0 chroma needs even sizes; odd-sized cameras keep full chroma instead.
        stream.pix_fmt = "yuv420p" if width % 2 == 0 and height % 2 == 0 else "yuv444p"
        stream.time_base = Fraction(1, 1) / rate
        stream.codec_context.gop_size = gop
        options = {"crf": str(crf)}
        if codec == "libx264":
            options.update({"preset": "veryfast", "tune": "zerolatency"})
        elif codec == "libsvtav1":
            options.update({"preset": "12"})
        stream.options = options
        self._stream = stream
        self.frames_written = 0

    def write(self, frames: np.ndarray) -> None:
        """Append (K, Hpx, Wpx, 3) uint8 frames."""
        for rgb in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            frame.pts = self.frames_written
            for packet in self._stream.encode(frame):
                self._container.mux(packet)
            self.frames_written += 1

    def size_bytes(self) -> int:
        return self.path.stat().st_size if self.path.exists() else 0

    def close(self) -> None:
        for packet in self._stream.encode(None):
            self._container.mux(packet)
        self._container.close()
