"""`PolicyClient`: the robot side of the openpi websocket protocol, light enough for a robot PC.

Depends only on numpy, msgpack and websockets (through `robofm.serve.protocol` and
`robofm.errors`); importing it never imports torch. It relies on nothing but openpi's
protocol, so it talks to `robofm serve` and to any openpi policy server:

- on connect the server sends one msgpack metadata map (`.metadata`);
- `infer(obs)` sends `{"images": {cam: uint8 (Hpx, Wpx, 3)}, "state": float32 (S,),
  "prompt": str}` and returns the server's map, e.g. `{"actions": float32 (H, D),
  "server_timing": {...}}`; a TEXT frame is the server's error message and raises
  `ServerError` (the connection stays usable; if the server closed it, as openpi's does,
  the next call reconnects);
- `reset()` sends `{"reset": True}` to servers that advertise it (robofm's), a no-op otherwise.

Contract check (when `action_space` is given): if the metadata carries `action_space_hash`,
the client compares it with its own at connect (a mismatch is a `SpaceError` naming the
differing fields when the metadata also has `action_space`) and sends its hash with the first
observation of each connection, so the server enforces it too. Without a hash but with an
`action_space` in the metadata it compares locally; with neither it skips the check.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any

from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from robofm.errors import RobofmError, SpaceError
from robofm.serve.protocol import ProtocolError, packb, unpackb

KEY_ACTION_SPACE = "action_space"  # metadata / observation key: ActionSpace.to_dict()
KEY_ACTION_SPACE_HASH = "action_space_hash"  # metadata / observation key: ActionSpace.hash()
KEY_RESET = "reset"  # {"reset": True}: start a new episode on this connection


class ServerError(RobofmError, RuntimeError):
    """The server answered with a text frame: its message says what it refused and why."""


class ConnectionLostError(RobofmError, ConnectionError):
    """No server at the URL before the deadline, a reply timed out, or the link dropped."""


def _url(url: str) -> str:
    return url if "://" in url else f"ws://{url}"


class PolicyClient:
    """A synchronous websocket client for one policy server (not for concurrent threads:
    a lock serialises calls so that replies never interleave).

    `url`: "ws://host:port" (a bare "host:port" gets "ws://"). `api_key`: sent as
    `Authorization: Api-Key KEY`. `action_space`: this robot's `ActionSpace` (or its dict) for
    the contract check; None skips it. `timeout_s`: longest wait for one reply, s (a timeout
    closes the connection, since a late reply would answer the next request; the next call
    reconnects). `connect_timeout_s`: how long to keep retrying the first connection, s (a
    server still loading its checkpoint refuses connections for a while).
    """

    def __init__(
        self,
        url: str = "ws://127.0.0.1:8000",
        *,
        api_key: str | None = None,
        action_space: Any = None,
        timeout_s: float = 30.0,
        connect_timeout_s: float = 30.0,
        retry_interval_s: float = 0.25,
    ):
        self.url = _url(url)
        self.api_key = api_key
        self.timeout_s = float(timeout_s)
        self.connect_timeout_s = float(connect_timeout_s)
        self.retry_interval_s = float(retry_interval_s)
        self.action_space = _as_space(action_space)
        self.last_round_trip_ms = 0.0  # wall time of the last infer(), ms
        self._ws: ClientConnection | None = None
        self._metadata: dict[str, Any] = {}
        self._send_hash = False  # attach the hash to the next observation
        self._lock = threading.Lock()
        self._connect()

    # ---- connection ----------------------------------------------------------------------

    @property
    def metadata(self) -> dict[str, Any]:
        """The server's metadata map from the current connection."""
        return self._metadata

    def _connect(self) -> None:
        headers = {"Authorization": f"Api-Key {self.api_key}"} if self.api_key else None
        deadline = time.monotonic() + self.connect_timeout_s
        last: Exception | None = None
        while True:
            try:
                # `.__enter__()` opens the connection on every websockets version (>= 17.1
                # warns when connect() is not used as a context manager); close() closes it.
                ws = connect(
                    self.url,
                    additional_headers=headers,
                    compression=None,  # arrays do not deflate well; openpi's client agrees
                    max_size=None,
                    open_timeout=max(1.0, min(10.0, self.connect_timeout_s)),
                ).__enter__()
                break
            except InvalidStatus as e:
                status = e.response.status_code
                if status in (401, 403):
                    raise ConnectionLostError(
                        f"{self.url} refused the connection (HTTP {status}): missing or wrong "
                        "API key (--api-key)"
                    ) from None
                last = e  # 503 while a server starts or drains: retry
            except (OSError, TimeoutError, InvalidHandshake) as e:
                last = e
            if time.monotonic() >= deadline:
                raise ConnectionLostError(
                    f"no policy server at {self.url} after {self.connect_timeout_s:g} s "
                    f"(last error: {type(last).__name__}: {last})"
                ) from None
            time.sleep(self.retry_interval_s)
        try:
            frame = ws.recv(timeout=self.timeout_s)
        except (TimeoutError, ConnectionClosed) as e:
            ws.close()
            raise ConnectionLostError(
                f"{self.url} sent no metadata within {self.timeout_s:g} s ({e})"
            ) from None
        if isinstance(frame, str):
            ws.close()
            raise ServerError(f"{self.url} sent a text frame instead of metadata: {frame}")
        metadata = unpackb(frame)
        if not isinstance(metadata, dict):
            ws.close()
            raise ProtocolError(
                f"{self.url}: metadata must be a msgpack map, got {type(metadata).__name__}"
            )
        self._ws, self._metadata = ws, metadata
        try:
            self._check_contract()
        except SpaceError:
            self.close()
            raise

    def set_action_space(self, action_space: Any) -> None:
        """Set (or replace) this robot's `ActionSpace` and check it against the connected
        server now (raises `SpaceError` naming the differing fields); its hash then rides on
        the next observation. For robots that learn a detail such as the server's chunk
        length from `.metadata` before committing to a contract."""
        self.action_space = _as_space(action_space)
        self._check_contract()

    def _check_contract(self) -> None:
        """Compare this robot's ActionSpace with the server's (see the module doc)."""
        mine = self.action_space
        self._send_hash = False
        if mine is None:
            return
        theirs = self._metadata.get(KEY_ACTION_SPACE)
        digest = self._metadata.get(KEY_ACTION_SPACE_HASH)
        if isinstance(theirs, dict):
            server_space = type(mine).from_dict(theirs, f"{self.url} metadata 'action_space'")
            server_space.check_compatible(mine, labels=("server", "client"))
        if isinstance(digest, str):
            if digest != mine.hash() and not isinstance(theirs, dict):
                raise SpaceError(
                    f"{self.url}: the server's action_space_hash {digest!r} differs from this "
                    f"robot's {mine.hash()!r} (the server's metadata does not say which fields)"
                )
            self._send_hash = True

    def close(self) -> None:
        """Close the connection (idempotent)."""
        ws, self._ws = self._ws, None
        if ws is not None:
            with contextlib.suppress(Exception):
                ws.close()

    def __enter__(self) -> PolicyClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- requests ------------------------------------------------------------------------

    def infer(self, obs: dict[str, Any]) -> dict[str, Any]:
        """Send one observation, return the server's reply map (`"actions"`: (H, D) float32,
        read-only). Raises `ServerError` when the server answers with an error message,
        `ConnectionLostError` on a timeout or a lost link."""
        msg = dict(obs)
        with self._lock:
            if self._send_hash and self.action_space is not None:
                msg[KEY_ACTION_SPACE_HASH] = self.action_space.hash()
            t0 = time.perf_counter()
            reply = self._request(packb(msg))
            self.last_round_trip_ms = (time.perf_counter() - t0) * 1000.0
            self._send_hash = False  # the server now holds this connection's contract
        if not isinstance(reply, dict):
            raise ProtocolError(f"{self.url}: reply must be a msgpack map, got {type(reply)}")
        return reply

    def reset(self) -> None:
        """New episode: the server forgets this connection's observation history.

        Only robofm servers understand `{"reset": True}` (openpi's protocol has no reset and
        its policies keep no history), so for other servers this does nothing.
        """
        if (self._metadata.get("server") or {}).get("name") != "robofm":
            return
        with self._lock:
            reply = self._request(packb({KEY_RESET: True}))
        if not (isinstance(reply, dict) and reply.get(KEY_RESET) is True):
            raise ProtocolError(f"{self.url}: unexpected reply to reset: {reply!r}")

    def _request(self, frame: bytes) -> Any:
        """Send one frame and read one reply; if the link was found closed (on sending, or
        before any reply), reconnect and try once more. A timeout is not retried."""
        for attempt in (0, 1):
            if self._ws is None:
                self._connect()
            ws = self._ws
            assert ws is not None
            try:
                ws.send(frame)
            except ConnectionClosed as e:
                self.close()
                if attempt:
                    raise ConnectionLostError(f"{self.url} closed the connection ({e})") from None
                continue  # never delivered: safe to send again on a new connection
            try:
                reply = ws.recv(timeout=self.timeout_s)
            except TimeoutError:
                self.close()  # a late reply would be read as the answer to the next request
                raise ConnectionLostError(
                    f"{self.url} did not reply within {self.timeout_s:g} s; connection closed"
                ) from None
            except ConnectionClosed as e:
                # Closed before answering (openpi closes after an error frame, and the close
                # may only land after our next send): no reply came, and a new connection
                # starts from a fresh server state, so asking once more there is safe.
                self.close()
                if attempt:
                    raise ConnectionLostError(
                        f"{self.url} closed the connection while answering ({e})"
                    ) from None
                continue
            if isinstance(reply, str):
                if ws.state.name != "OPEN":  # openpi closes after an error; reconnect next time
                    self.close()
                raise ServerError(reply)
            return unpackb(reply)
        raise AssertionError("unreachable")


def _as_space(space: Any) -> Any:
    """An ActionSpace-like object (with hash, to_dict, from_dict, check_compatible) or None."""
    if space is None or hasattr(space, "hash"):
        return space
    if isinstance(space, dict):
        from robofm.spaces import ActionSpace  # numpy + stdlib only; no torch

        return ActionSpace.from_dict(space, "PolicyClient action_space")
    raise TypeError(f"action_space must be an ActionSpace or its dict, got {type(space).__name__}")
