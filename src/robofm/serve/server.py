"""`robofm serve`: an openpi-compatible websocket policy server.

Wire protocol (openpi's, so the PyPI `openpi_client.WebsocketClientPolicy` works unchanged):

- on connect the server sends one msgpack map, `PolicyServer.metadata`: `Policy.metadata`
  plus `action_space_hash`, `control_hz`, `model`, `server` (name, version) and `limits`;
- each binary msgpack observation `{"images": {cam: uint8 (Hpx, Wpx, 3)}, "state": float32
  (S,), "prompt": str}` is answered with `{"actions": float32 (H, D), "server_timing":
  {"infer_ms", "queue_ms", "total_ms"}}`, or with a TEXT frame `"robofm serve error in message
  N: Kind: detail"` naming the fault. The connection stays usable after any such error;
- `{"reset": True}` resets this connection's observation history and noise, answers
  `{"reset": True}`;
- `"action_space"` (an `ActionSpace.to_dict()`) or `"action_space_hash"` (str) may ride on any
  observation, or come alone (answered `{"action_space_ok": True, "action_space_hash": h}`).
  They are stripped before inference. A mismatch is refused naming the differing fields, and
  the connection then refuses every observation until a matching contract arrives: a robot
  whose contract is wrong must not get actions by simply omitting the key next time;
- other top-level keys are ignored (openpi clients may add their own); unknown cameras are not;
- `GET /healthz` answers 200 JSON (503 while draining) without authentication; with an API key
  set, the websocket handshake needs `Authorization: Api-Key KEY` (else HTTP 401).

Size limits, two levels: a message larger than `max_message_bytes` is refused with a text
frame and the connection continues; websockets' own `max_size` is set to
`hard_max_message_bytes` (default 4x), above which it closes the connection (code 1009),
because buffering arbitrarily large frames would let one client exhaust memory.

Concurrency: one inference worker thread (a 1-thread executor, FIFO) runs every `infer`, so the
event loop never blocks on torch, and each connection has at most one request in flight (the
handler awaits the reply before reading the next frame). With N clients a request waits for at
most N-1 others. A token bucket per connection (`rate_limit_hz`, `rate_burst`) answers excess
requests with an error frame instead of disconnecting; keepalive pings drop dead peers.

Per-connection state: each connection gets its own lightweight `Policy` built on the SHARED
model module and normaliser (`Policy(model, normalizer, spaces, seed=...)`), so its observation
history (n_obs_steps) and noise generator belong to that robot alone. A per-request reset
would break n_obs_steps > 1; a single shared Policy would mix histories and noise streams of
different robots. Every connection starts from the base policy's seed, so its k-th reply equals
the k-th `Policy.infer` of a fresh in-process Policy given the same observations.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import threading
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields, replace
from http import HTTPStatus
from pathlib import Path
from typing import Any

import numpy as np
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from robofm import __version__
from robofm.errors import RobofmError, SpaceError
from robofm.policy import Policy
from robofm.serve.protocol import packb, unpackb
from robofm.spaces import ActionSpace
from robofm.types import OBS_IMAGES, OBS_PROMPT, OBS_STATE, ObservationError, validate_obs_dict

log = logging.getLogger(__name__)

MB = 2**20
KEY_ACTION_SPACE = "action_space"  # optional: client's ActionSpace.to_dict(), checked
KEY_ACTION_SPACE_HASH = "action_space_hash"  # optional: client's ActionSpace.hash(), checked
KEY_RESET = "reset"  # {"reset": True}: new episode on this connection
HEALTH_PATH = "/healthz"


@dataclass(frozen=True)
class ServerConfig:
    """How `PolicyServer` listens and what it tolerates from clients."""

    host: str = "127.0.0.1"  # interface to bind; "0.0.0.0" exposes the policy to the network
    port: int = 8000  # TCP port (openpi's default); 0 picks a free port (see `.port`)
    api_key: str | None = None  # require header "Authorization: Api-Key KEY"; None = open
    max_message_bytes: int = 16 * MB  # larger observations get an error frame, bytes
    hard_max_message_bytes: int = 0  # websockets closes (1009) above this; 0 = 4 x the limit
    rate_limit_hz: float = 50.0  # sustained requests per second per connection; 0 = unlimited
    rate_burst: int = 10  # requests a connection may send back to back before the rate applies
    max_connections: int = 64  # further handshakes are refused with HTTP 503
    ping_interval_s: float | None = 20.0  # keepalive ping period, s; None disables pings
    ping_timeout_s: float | None = 20.0  # a peer that does not pong within this is dropped, s
    open_timeout_s: float = 10.0  # longest opening handshake, s
    close_timeout_s: float = 5.0  # longest closing handshake, s
    drain_timeout_s: float = 10.0  # graceful shutdown: longest wait for in-flight requests, s

    @property
    def websocket_max_size(self) -> int:
        """websockets' `max_size` (bytes): the hard cap above which a connection is closed."""
        return self.hard_max_message_bytes or 4 * self.max_message_bytes


class RequestRefused(RobofmError):
    """A request the server will not run now (rate, size, frame type, shutdown); says why."""


class TokenBucket:
    """`rate_hz` tokens per second up to `burst`; `take()` spends one if there is one."""

    def __init__(self, rate_hz: float, burst: int):
        self.rate_hz = float(rate_hz)
        self.burst = max(1, int(burst))
        self.tokens = float(self.burst)
        self.stamp = time.monotonic()

    def take(self) -> bool:
        """True (and one token spent) when a request may go ahead; always True if rate is 0."""
        if self.rate_hz <= 0:
            return True
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate_hz)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


@dataclass
class _Connection:
    """Bookkeeping for one websocket client."""

    cid: int  # server-unique connection number, for logs
    peer: str  # "host:port" of the client
    policy: Policy  # this connection's Policy (own history and generator, shared model)
    bucket: TokenBucket  # rate limiter
    opened: float  # time.monotonic() at connect
    messages: int = 0  # frames received
    requests: int = 0  # observations answered with actions
    errors: int = 0  # frames answered with an error text frame
    contract_error: str = ""  # last contract mismatch; non-empty refuses observations


class PolicyServer:
    """Serves one `Policy` to many websocket clients; see the module docstring for the protocol.

    Use from asyncio: `await start()`, later `await shutdown()`; or from threads through
    `serve_in_background`, or from the command line through `robofm serve`.
    """

    def __init__(self, policy: Policy, config: ServerConfig | None = None, *, name: str = ""):
        self.policy = policy
        self.config = config or ServerConfig()
        self.name = name or "policy"
        self.action_space: ActionSpace = policy.spaces.action
        self.action_space_hash = self.action_space.hash()
        self.metadata = self._build_metadata()
        self._metadata_frame = packb(self.metadata)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="robofm-infer")
        self._resumed = threading.Event()  # cleared by pause(): the worker holds requests
        self._resumed.set()
        self._lock = threading.Lock()  # guards the counters read by stats() from other threads
        self._counts = dict(connections=0, messages=0, requests=0, errors=0, resets=0)
        self._conns: dict[int, _Connection] = {}
        self._busy = 0  # requests received and not yet answered, all connections
        self._draining = False
        self._server: Server | None = None
        self._idle: asyncio.Event | None = None
        self._closed: asyncio.Event | None = None
        self._started = time.monotonic()
        self.port = 0  # the bound TCP port once started

    # -- public API -----------------------------------------------------------------------

    @property
    def url(self) -> str:
        """`ws://HOST:PORT` for clients (valid after `start`)."""
        return f"ws://{self.config.host}:{self.port}"

    async def start(self) -> None:
        """Bind and start accepting connections; sets `.port`."""
        cfg = self.config
        self._idle, self._closed = asyncio.Event(), asyncio.Event()
        self._idle.set()
        self._server = await serve(
            self._handle,
            cfg.host,
            cfg.port,
            process_request=self._process_request,
            compression=None,  # arrays do not deflate well; openpi's client disables it too
            max_size=cfg.websocket_max_size,
            max_queue=4,  # frames buffered per connection before TCP back-pressure
            ping_interval=cfg.ping_interval_s,
            ping_timeout=cfg.ping_timeout_s,
            open_timeout=cfg.open_timeout_s,
            close_timeout=cfg.close_timeout_s,
        )
        self.port = next(iter(self._server.sockets)).getsockname()[1]
        log.info("serving %s (action space %s) on %s", self.name, self.action_space_hash, self.url)

    async def shutdown(self, timeout_s: float | None = None) -> None:
        """Graceful stop: refuse new connections, answer in-flight requests (for at most
        `timeout_s`, default `config.drain_timeout_s`), refuse new requests on open
        connections with an error frame, then close every connection (1001) and the worker."""
        assert self._server is not None and self._idle is not None and self._closed is not None
        if self._draining:
            await self._closed.wait()
            return
        timeout_s = self.config.drain_timeout_s if timeout_s is None else timeout_s
        self._draining = True
        log.info("shutting down: %d request(s) in flight", self._busy)
        self._server.close(close_connections=False)  # stop listening
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except asyncio.TimeoutError:
            log.warning(
                "%d request(s) still in flight after %.1f s; closing", self._busy, timeout_s
            )
        self._resumed.set()  # a paused worker must not hold the shutdown
        conns = list(self._server.connections)
        if conns:
            await asyncio.gather(
                *(c.close(1001, "server shutting down") for c in conns), return_exceptions=True
            )
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._server.wait_closed(), self.config.close_timeout_s + 1)
        self._executor.shutdown(wait=False, cancel_futures=True)
        log.info("server stopped: %s", self.stats())
        self._closed.set()

    async def wait_closed(self) -> None:
        """Return once `shutdown` has finished."""
        assert self._closed is not None
        await self._closed.wait()

    def pause(self) -> None:
        """Hold every inference (and so every reply) until `resume()`; for watchdog tests."""
        self._resumed.clear()

    def resume(self) -> None:
        """Let held and new inferences run again."""
        self._resumed.set()

    def stats(self) -> dict[str, Any]:
        """Counters since start: connections (total), open_connections, messages, requests
        (answered with actions), errors (answered with a text frame), resets; plus flags."""
        with self._lock:
            out: dict[str, Any] = dict(self._counts)
            out["open_connections"] = len(self._conns)
        out["in_flight"] = self._busy
        out["paused"] = not self._resumed.is_set()
        out["draining"] = self._draining
        return out

    # -- handshake: /healthz, auth, connection limit --------------------------------------

    def _process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        if path == HEALTH_PATH:
            body = {
                "status": "draining" if self._draining else "ok",
                "model": self.name,
                "action_space_hash": self.action_space_hash,
                "uptime_s": round(time.monotonic() - self._started, 3),
                **self.stats(),
            }
            status = HTTPStatus.SERVICE_UNAVAILABLE if self._draining else HTTPStatus.OK
            response = conn.respond(status, json.dumps(body) + "\n")
            del response.headers["Content-Type"]  # Headers is a multi-dict: replace, not add
            response.headers["Content-Type"] = "application/json"
            return response
        key = self.config.api_key
        if key:
            given = request.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Api-Key {key}".encode()):
                log.warning("rejected %s: missing or wrong API key", _peer(conn))
                response = conn.respond(
                    HTTPStatus.UNAUTHORIZED, "missing or wrong 'Authorization: Api-Key KEY'\n"
                )
                response.headers["WWW-Authenticate"] = "Api-Key"
                return response
        if self._draining:
            return conn.respond(HTTPStatus.SERVICE_UNAVAILABLE, "server shutting down\n")
        if len(self._conns) >= self.config.max_connections:
            log.warning("rejected %s: %d connections open", _peer(conn), len(self._conns))
            return conn.respond(
                HTTPStatus.SERVICE_UNAVAILABLE,
                f"too many connections (limit {self.config.max_connections})\n",
            )
        return None

    # -- one connection ---------------------------------------------------------------------

    async def _handle(self, ws: ServerConnection) -> None:
        base = self.policy  # a fresh history and generator on the shared model/normaliser:
        policy = Policy(
            base.model, base.normalizer, base.spaces, seed=base.seed, device=base.device
        )
        bucket = TokenBucket(self.config.rate_limit_hz, self.config.rate_burst)
        with self._lock:
            self._counts["connections"] += 1
            cid = self._counts["connections"]
            conn = _Connection(cid, _peer(ws), policy, bucket, opened=time.monotonic())
            self._conns[cid] = conn
        log.info("connection %d from %s opened", cid, conn.peer)
        try:
            await ws.send(self._metadata_frame)
            async for message in ws:
                self._enter()
                try:
                    reply = await self._answer(conn, message)
                    await ws.send(reply)
                finally:
                    self._leave()
        except ConnectionClosed:
            pass
        finally:
            with self._lock:
                self._conns.pop(cid, None)
            log.info(
                "connection %d from %s closed after %.1f s (code %s %s): %s",
                *(cid, conn.peer, time.monotonic() - conn.opened, ws.close_code, ws.close_reason),
                f"{conn.messages} messages, {conn.requests} requests, {conn.errors} errors",
            )

    def _enter(self) -> None:
        assert self._idle is not None
        self._busy += 1
        self._idle.clear()

    def _leave(self) -> None:
        assert self._idle is not None
        self._busy -= 1
        if self._busy == 0:
            self._idle.set()

    async def _answer(self, conn: _Connection, message: str | bytes) -> bytes | str:
        """The reply frame for one received frame: msgpack bytes, or an error text frame."""
        t_recv = time.perf_counter()
        conn.messages += 1
        self._count("messages")
        try:
            obs = self._decode(conn, message)
            if KEY_RESET in obs:
                if obs[KEY_RESET] is not True:
                    raise ObservationError(
                        f"key '{KEY_RESET}' must be true, got {obs[KEY_RESET]!r}"
                    )
                conn.policy.reset()
                self._count("resets")
                return packb({KEY_RESET: True})
            if self._check_contract(conn, obs) and not obs:
                return packb(
                    {"action_space_ok": True, KEY_ACTION_SPACE_HASH: self.action_space_hash}
                )
            if conn.contract_error:
                raise SpaceError(
                    f"refused: this connection's action space does not match the server's "
                    f"({conn.contract_error}); send a matching '{KEY_ACTION_SPACE}' or "
                    f"'{KEY_ACTION_SPACE_HASH}'"
                )
            self._validate(conn.policy, obs)
            actions, infer_ms, queue_ms = await self._infer(conn.policy, obs)
            conn.requests += 1
            self._count("requests")
            timing = {
                "infer_ms": infer_ms,
                "queue_ms": queue_ms,
                "total_ms": (time.perf_counter() - t_recv) * 1000.0,
            }
            return packb({"actions": actions, "server_timing": timing})
        except RobofmError as e:
            return self._error(conn, type(e).__name__, str(e))
        except Exception as e:  # a bug, not bad input: log the traceback, keep the connection
            log.exception("connection %d message %d: internal error", conn.cid, conn.messages)
            return self._error(conn, "InternalError", f"{type(e).__name__}: {e}")

    def _decode(self, conn: _Connection, message: str | bytes) -> dict[str, Any]:
        cfg = self.config
        if self._draining:
            raise RequestRefused("server is shutting down; no new requests are accepted")
        if isinstance(message, str):
            raise RequestRefused(
                "expected a binary msgpack frame, got a text frame "
                f"({len(message)} characters); send observations with openpi's msgpack packer"
            )
        if len(message) > cfg.max_message_bytes:
            raise RequestRefused(
                f"message of {len(message)} bytes exceeds the limit of {cfg.max_message_bytes} "
                "bytes (robofm serve --max-message-mb)"
            )
        if not conn.bucket.take():
            raise RequestRefused(
                f"rate limit exceeded: more than {cfg.rate_limit_hz:g} requests/s (burst "
                f"{conn.bucket.burst}) on this connection; slow down (it stays open)"
            )
        obs = unpackb(message, max_bytes=cfg.max_message_bytes)
        if not isinstance(obs, dict):
            raise ObservationError(f"observation must be a msgpack map, got {type(obs).__name__}")
        bad_keys = [k for k in obs if not isinstance(k, str)]
        if bad_keys:
            raise ObservationError(f"observation keys must be strings, got {bad_keys[:3]!r}")
        return obs

    def _check_contract(self, conn: _Connection, obs: dict[str, Any]) -> bool:
        """Pop and check the optional contract keys; True when one was present."""
        space = obs.pop(KEY_ACTION_SPACE, None)
        digest = obs.pop(KEY_ACTION_SPACE_HASH, None)
        if space is None and digest is None:
            return False
        if space is not None:
            client = ActionSpace.from_dict(space, f"observation key '{KEY_ACTION_SPACE}'")
            diffs = self.action_space.differences(client)
            if diffs:
                conn.contract_error = f"fields {', '.join(diffs)} differ"
                try:
                    self.action_space.check_compatible(client, labels=("server", "client"))
                except SpaceError as e:
                    raise SpaceError(f"refused: {e}") from None
        if digest is not None:
            if not isinstance(digest, str):
                raise SpaceError(f"'{KEY_ACTION_SPACE_HASH}' must be a string, got {digest!r}")
            if digest != self.action_space_hash:
                conn.contract_error = f"hash {digest} != {self.action_space_hash}"
                raise SpaceError(
                    f"refused: '{KEY_ACTION_SPACE_HASH}' {digest!r} does not match the server's "
                    f"{self.action_space_hash!r}; send '{KEY_ACTION_SPACE}' "
                    "(ActionSpace.to_dict()) to see which fields differ"
                )
        conn.contract_error = ""
        return True

    def _validate(self, policy: Policy, obs: dict[str, Any]) -> None:
        """Check every key before the request reaches the model; errors name the key."""
        validate_obs_dict(obs, cameras=None, state_dim=policy.state_dim)
        images = obs.get(OBS_IMAGES)
        if not isinstance(images, Mapping):
            raise ObservationError(
                f"observation key '{OBS_IMAGES}' must be a map of camera name -> uint8 "
                f"(H, W, 3) array, got {type(images).__name__}"
            )
        missing = sorted(set(policy.cameras) - set(images))
        extra = sorted(set(images) - set(policy.cameras), key=str)
        if missing or extra:
            raise ObservationError(
                f"'{OBS_IMAGES}' cameras do not match the checkpoint: missing {missing}, "
                f"unexpected {extra}; expected {list(policy.cameras)}"
            )
        for cam in policy.cameras:
            img, where = images[cam], f"'{OBS_IMAGES}.{cam}'"
            if not isinstance(img, np.ndarray):
                raise ObservationError(f"{where} must be an array, got {type(img).__name__}")
            if img.dtype != np.uint8:
                raise ObservationError(f"{where} must be uint8, got {img.dtype}")
            if img.ndim != 3 or img.shape[2] != 3 or min(img.shape) < 1:
                raise ObservationError(
                    f"{where} has shape {tuple(img.shape)}; expected (H, W, 3) with H, W >= 1"
                )
        # writable copies: decoded arrays are read-only views of the frame (torch warns)
        obs[OBS_IMAGES] = {cam: np.array(images[cam]) for cam in policy.cameras}
        obs[OBS_STATE] = np.array(obs[OBS_STATE], dtype=np.float32)

    async def _infer(self, policy: Policy, obs: dict[str, Any]) -> tuple[np.ndarray, float, float]:
        """(actions (H, D) float32, infer_ms, queue_ms) from the single worker thread."""
        t_submit = time.perf_counter()

        def job() -> tuple[np.ndarray, float, float]:
            self._resumed.wait()
            t_start = time.perf_counter()
            actions = policy.infer(obs)["actions"]
            return actions, t_start, time.perf_counter()

        loop = asyncio.get_running_loop()
        actions, t_start, t_end = await loop.run_in_executor(self._executor, job)
        return actions, (t_end - t_start) * 1000.0, (t_start - t_submit) * 1000.0

    def _error(self, conn: _Connection, kind: str, detail: str) -> str:
        conn.errors += 1
        self._count("errors")
        # a client looping on bad frames must not flood the log: the first 10, then every 100th
        level = logging.WARNING if conn.errors <= 10 or conn.errors % 100 == 0 else logging.DEBUG
        log.log(level, "connection %d message %d (error %d on it): %s: %s",
                conn.cid, conn.messages, conn.errors, kind, detail)  # fmt: skip
        return f"robofm serve error in message {conn.messages}: {kind}: {detail}"

    def _count(self, key: str) -> None:
        with self._lock:
            self._counts[key] += 1

    def _build_metadata(self) -> dict[str, Any]:
        cfg = self.config
        return {
            **self.policy.metadata,
            "action_space_hash": self.action_space_hash,
            "control_hz": self.action_space.control_hz,
            "model": model_info(self.policy, self.name),
            "server": {"name": "robofm", "version": __version__, "protocol": "openpi-websocket"},
            "limits": {
                "max_message_bytes": cfg.max_message_bytes,
                "hard_max_message_bytes": cfg.websocket_max_size,
                "rate_limit_hz": cfg.rate_limit_hz,
                "rate_burst": cfg.rate_burst,
                "max_connections": cfg.max_connections,
                "max_in_flight_per_connection": 1,
            },
        }


def _peer(ws: ServerConnection) -> str:
    addr = ws.remote_address
    return f"{addr[0]}:{addr[1]}" if addr else "?"


def model_info(policy: Policy, name: str) -> dict[str, Any]:
    """What the metadata says about the model: name, nearest preset and the fields that differ
    from it, head, encoders, T_obs."""
    from robofm.config import MODEL_PRESETS

    cfg = policy.model.cfg
    diffs = {
        k: [f.name for f in fields(v) if getattr(v, f.name) != getattr(cfg, f.name)]
        for k, v in MODEL_PRESETS.items()
    }
    preset = min(diffs, key=lambda k: len(diffs[k]))
    return {
        "name": name,
        "preset": preset,
        "preset_overrides": diffs[preset],
        "head": cfg.head,
        "vision": cfg.vision,
        "language": cfg.language,
        "n_obs_steps": cfg.n_obs_steps,
    }


def warm_up(policy: Policy, prompt: str = "warm up") -> float:
    """Run one inference on a blank observation (image_size px cameras, zero state) so the
    first client does not pay for lazy initialisation; resets the policy after. Returns ms."""
    size = policy.model.cfg.image_size
    obs = {
        OBS_IMAGES: {c: np.zeros((size, size, 3), np.uint8) for c in policy.cameras},
        OBS_STATE: np.zeros(policy.state_dim, np.float32),
        OBS_PROMPT: prompt,
    }
    t0 = time.perf_counter()
    policy.infer(obs)
    policy.reset()
    return (time.perf_counter() - t0) * 1000.0


class ServerHandle:
    """A `PolicyServer` running in a daemon thread with its own event loop."""

    def __init__(self, server: PolicyServer):
        self.server = server
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="robofm-serve", daemon=True)
        self._thread.start()
        if not self._ready.wait(60.0):
            raise RuntimeError("policy server did not start within 60 s")
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            try:
                await self.server.start()
            except BaseException as e:
                self._error = e
                raise
            finally:
                self._ready.set()
            await self.server.wait_closed()

        try:
            asyncio.run(main())
        except Exception:
            if self._ready.is_set() and self._error is None:
                log.exception("policy server thread failed")

    @property
    def url(self) -> str:
        """`ws://HOST:PORT` of the running server."""
        return self.server.url

    @property
    def port(self) -> int:
        """The bound TCP port."""
        return self.server.port

    def pause(self) -> None:
        """Hold every reply until `resume()` (requests queue up; connections stay open)."""
        self.server.pause()

    def resume(self) -> None:
        """Release held replies."""
        self.server.resume()

    def stats(self) -> dict[str, Any]:
        """`PolicyServer.stats()`: requests, errors, connections, ..."""
        return self.server.stats()

    def shutdown(self, timeout: float = 10.0) -> None:
        """Graceful stop (see `PolicyServer.shutdown`), waiting up to `timeout` s for
        in-flight requests; returns once the server thread has exited. Idempotent."""
        if self._loop is not None and self._thread.is_alive():
            future = asyncio.run_coroutine_threadsafe(self.server.shutdown(timeout), self._loop)
            with contextlib.suppress(Exception):
                future.result(timeout + self.server.config.close_timeout_s + 5.0)
        self._thread.join(timeout + 5.0)


@contextlib.contextmanager
def serve_in_background(
    policy_or_checkpoint: Policy | str | Path,
    host: str = "127.0.0.1",
    port: int = 0,
    **options: Any,
) -> Iterator[ServerHandle]:
    """Run a policy server in a daemon thread for the duration of a `with` block.

    `policy_or_checkpoint` is a `Policy` or a checkpoint directory; `port=0` picks a free port
    (read `handle.port` / `handle.url`); `options` are `ServerConfig` fields (for example
    `rate_limit_hz=0`, `api_key="k"`, `max_message_bytes=2**20`). The server stops gracefully
    when the block exits.
    """
    name = ""
    if isinstance(policy_or_checkpoint, Policy):
        policy = policy_or_checkpoint
    else:
        name = Path(policy_or_checkpoint).name
        policy = Policy.from_checkpoint(policy_or_checkpoint)
    name = options.pop("name", name)
    config = replace(ServerConfig(), host=host, port=port, **options)
    handle = ServerHandle(PolicyServer(policy, config, name=name))
    try:
        yield handle
    finally:
        handle.shutdown()
