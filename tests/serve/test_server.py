"""The policy server against real clients on 127.0.0.1: the unmodified openpi client, raw
websockets frames (malformed on purpose), HTTP /healthz, and a `robofm serve` subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from openpi_client.websocket_client_policy import WebsocketClientPolicy
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from robofm import __version__
from robofm.policy import Policy
from robofm.serve.protocol import packb, unpackb
from robofm.serve.server import serve_in_background

# openpi_client calls websockets.sync.client.connect() outside a `with`; websockets 17 warns.
pytestmark = pytest.mark.filterwarnings("ignore:connect\\(\\) must be used as a context manager")

LIMIT = 256 * 1024  # the module server's max_message_bytes; its hard cap is 4x
CHUNK, DIM = 4, 4  # the sim checkpoint's H and D


@pytest.fixture(scope="module")
def policy(sim_checkpoint: Path) -> Policy:
    return Policy.from_checkpoint(sim_checkpoint)


@pytest.fixture(scope="module")
def server(policy: Policy):
    with serve_in_background(policy, max_message_bytes=LIMIT, rate_limit_hz=0) as handle:
        yield handle


def make_obs(seed: int, px: int = 32) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "images": {
            c: rng.integers(0, 256, (px, px, 3), dtype=np.uint8) for c in ("front", "wrist")
        },
        "state": rng.normal(size=4).astype(np.float32),
        "prompt": "lift the red cube",
    }


def fresh(policy: Policy) -> Policy:
    """An in-process Policy on the same weights, in the state a new connection starts in."""
    return Policy(policy.model, policy.normalizer, policy.spaces, seed=policy.seed)


def raw(url: str, **kw):
    """A websockets connection that has consumed the metadata frame; returns (ws, metadata)."""
    ws = connect(url, compression=None, max_size=None, **kw)
    return ws, unpackb(ws.recv(timeout=10))


def healthz(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as r:
        assert r.status == 200 and r.headers["Content-Type"] == "application/json"
        return json.loads(r.read())


def test_openpi_client_matches_in_process_policy(server, sim_checkpoint: Path) -> None:
    """Same obs + same seed => same chunks as Policy.infer in-process. One worker thread runs the
    same kernels with the same thread count, so results are bitwise equal in practice; the
    tolerance only allows for a different reduction order, never a different noise draw.
    Each connection owns its generator: a second connection starts the sequence over, and
    {"reset": True} restarts it, so a server sharing one Policy across clients fails here."""
    reference = Policy.from_checkpoint(sim_checkpoint)
    obs = [make_obs(i) for i in range(3)]
    expected = [reference.infer(o)["actions"] for o in obs]
    assert not np.allclose(expected[0], expected[1])  # the noise stream advances
    client = WebsocketClientPolicy(server.url)
    for o, want in zip(obs, expected, strict=True):
        result = client.infer(o)
        assert result["actions"].dtype == np.float32 and result["actions"].shape == (CHUNK, DIM)
        np.testing.assert_allclose(result["actions"], want, rtol=1e-5, atol=1e-6)
        timing = result["server_timing"]
        assert 0 < timing["infer_ms"] <= timing["total_ms"] and timing["queue_ms"] >= 0
    other = WebsocketClientPolicy(server.url)
    np.testing.assert_allclose(other.infer(obs[0])["actions"], expected[0], rtol=1e-5, atol=1e-6)
    assert client.infer({"reset": True}) == {"reset": True}
    np.testing.assert_allclose(client.infer(obs[0])["actions"], expected[0], rtol=1e-5, atol=1e-6)


def test_metadata_and_healthz(server, policy: Policy) -> None:
    meta = WebsocketClientPolicy(server.url).get_server_metadata()
    space = policy.spaces.action
    assert meta["action_space"] == space.to_dict()
    assert meta["action_space_hash"] == space.hash() and meta["control_hz"] == space.control_hz
    assert meta["cameras"] == ["front", "wrist"] and meta["state_dim"] == 4
    assert meta["chunk_len"] == CHUNK and meta["image_size"] == 32
    assert meta["server"]["version"] == __version__
    assert meta["model"]["head"] == "flow" and meta["model"]["preset"] == "tiny"
    assert meta["limits"]["max_message_bytes"] == LIMIT
    assert meta["limits"]["hard_max_message_bytes"] == 4 * LIMIT
    body = healthz(server.port)
    assert body["status"] == "ok" and body["action_space_hash"] == space.hash()
    assert body["connections"] >= 1


def test_api_key(policy: Policy) -> None:
    with serve_in_background(policy, api_key="s3cret") as handle:
        ok = WebsocketClientPolicy(handle.url, api_key="s3cret")
        assert ok.infer(make_obs(0))["actions"].shape == (CHUNK, DIM)
        for key in (None, "wrong"):
            with pytest.raises(InvalidStatus) as err:
                WebsocketClientPolicy(handle.url, api_key=key)
            assert err.value.response.status_code == 401
        assert healthz(handle.port)["status"] == "ok"  # health needs no key
        assert handle.stats()["connections"] == 1


def test_concurrent_clients_all_answered_correctly(server, policy: Policy) -> None:
    """8 threads x 4 requests on one model: every reply arrives, on the right connection,
    equal to that connection's own in-process sequence (histories/noise never mix)."""
    n_clients, n_requests = 8, 4
    obs = {k: [make_obs(100 * k + i) for i in range(n_requests)] for k in range(n_clients)}
    expected = {}
    for k in range(n_clients):
        ref = fresh(policy)
        expected[k] = [ref.infer(o)["actions"] for o in obs[k]]
    before = server.stats()["requests"]
    got: dict[int, list] = {}
    errors: list[BaseException] = []

    def run(k: int) -> None:
        try:
            client = WebsocketClientPolicy(server.url)
            got[k] = [client.infer(o)["actions"] for o in obs[k]]
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(n_clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert sorted(got) == list(range(n_clients))
    for k in range(n_clients):
        for a, b in zip(got[k], expected[k], strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert server.stats()["requests"] - before == n_clients * n_requests


def _obs_with(**changes) -> dict:
    obs = make_obs(7)
    for key, value in changes.items():
        if key.startswith("images."):
            obs["images"][key.split(".", 1)[1]] = value
        elif value is None:
            del obs[key]
        else:
            obs[key] = value
    return obs


def _ndarray(data: bytes, dtype: str, shape: list) -> dict:
    return {b"__ndarray__": True, b"data": data, b"dtype": dtype, b"shape": shape}


BAD_FRAMES = {
    "text frame": ("lift the cube", "got a text frame"),
    "truncated msgpack": (packb(make_obs(7))[:-100], "not a valid msgpack frame"),
    "invalid msgpack byte": (b"\xc1", "not a valid msgpack frame"),
    "not a map": (packb([1, 2, 3]), "must be a msgpack map, got list"),
    "missing images": (packb(_obs_with(images=None)), "'images' must be a map"),
    "missing camera": (
        packb(_obs_with(images={"front": make_obs(0)["images"]["front"]})),
        "missing ['wrist']",
    ),
    "wrong image shape": (
        packb(_obs_with(**{"images.front": np.zeros((32, 32, 4), np.uint8)})),
        "'images.front' has shape (32, 32, 4)",
    ),
    "flat image": (
        packb(_obs_with(**{"images.wrist": np.zeros(3072, np.uint8)})),
        "'images.wrist' has shape (3072,)",
    ),
    "float image": (
        packb(_obs_with(**{"images.front": np.zeros((32, 32, 3), np.float32)})),
        "'images.front' must be uint8",
    ),
    "image not array": (
        packb(_obs_with(**{"images.front": "pixels"})),
        "'images.front' must be an array",
    ),
    "nan state": (
        packb(_obs_with(state=np.array([0, np.nan, 0, 0], np.float32))),
        "'state' has non-finite values at indices [1]",
    ),
    "inf state": (
        packb(_obs_with(state=np.array([0, 0, 0, np.inf], np.float32))),
        "non-finite values at indices [3]",
    ),
    "state wrong size": (packb(_obs_with(state=np.zeros(5, np.float32))), "expected (4,)"),
    "state as list": (
        packb(_obs_with(state=[0.0, 0.0, 0.0, 0.0])),
        "'state' must be a numpy array, got list",
    ),
    "missing prompt": (packb(_obs_with(prompt=None)), "'prompt' must be a string"),
    "array bytes mismatch": (
        packb(_obs_with(state=_ndarray(b"\0" * 12, "<f4", [4]))),
        "needs 16 bytes, got 12",
    ),
    "object dtype": (packb(_obs_with(state=_ndarray(b"\0" * 32, "|O", [4]))), "not allowed"),
    "over size limit": (b"\x00" * (LIMIT + 1), f"exceeds the limit of {LIMIT} bytes"),
    "bad reset": (packb({"reset": 1}), "'reset' must be true"),
}


@pytest.mark.parametrize("case", list(BAD_FRAMES))
def test_bad_frame_gets_error_text_and_connection_recovers(server, case: str) -> None:
    payload, fault = BAD_FRAMES[case]
    errors_before = server.stats()["errors"]
    ws, _ = raw(server.url)
    with ws:
        ws.send(payload)
        reply = ws.recv(timeout=10)
        assert isinstance(reply, str), f"{case}: expected an error text frame"
        assert fault in reply, reply
        ws.send(packb(make_obs(1)))
        result = unpackb(ws.recv(timeout=10))
        assert result["actions"].shape == (CHUNK, DIM)
    assert server.stats()["errors"] == errors_before + 1
    assert healthz(server.port)["status"] == "ok"


def test_message_over_hard_cap_closes_only_that_connection(server) -> None:
    """Past websockets' max_size (4x the limit) the connection closes with 1009 (documented:
    buffering unbounded frames would let one client exhaust memory); the server stays up."""
    ws, _ = raw(server.url)
    ws.send(b"\x00" * (4 * LIMIT + 1))
    with pytest.raises(ConnectionClosed) as err:
        ws.recv(timeout=10)
    assert err.value.rcvd is not None and err.value.rcvd.code == 1009
    assert WebsocketClientPolicy(server.url).infer(make_obs(2))["actions"].shape == (CHUNK, DIM)


def test_rate_limit_answers_error_frames_then_recovers(policy: Policy) -> None:
    with serve_in_background(policy, rate_limit_hz=2.0, rate_burst=3) as handle:
        ws, _ = raw(handle.url)
        with ws:
            for _ in range(6):  # pipelined: all six arrive well within 0.5 s
                ws.send(packb({"reset": True}))
            replies = [ws.recv(timeout=10) for _ in range(6)]
            assert [unpackb(r) for r in replies[:3]] == [{"reset": True}] * 3
            assert all(isinstance(r, str) and "rate limit exceeded" in r for r in replies[3:])
            time.sleep(0.6)  # refills one token at 2 Hz
            ws.send(packb(make_obs(3)))
            assert unpackb(ws.recv(timeout=10))["actions"].shape == (CHUNK, DIM)
        assert handle.stats()["errors"] == 3


def test_action_space_contract(server, policy: Policy) -> None:
    space = policy.spaces.action
    wrong = replace(space, control_hz=space.control_hz * 2, frame="joint")
    ws, meta = raw(server.url)
    with ws:
        ws.send(packb({**make_obs(4), "action_space": wrong.to_dict()}))
        reply = ws.recv(timeout=10)
        assert isinstance(reply, str) and "SpaceError" in reply
        assert "control_hz" in reply and "frame" in reply and "names" not in reply
        ws.send(packb(make_obs(4)))  # omitting the key does not get around the mismatch
        reply = ws.recv(timeout=10)
        assert isinstance(reply, str) and "does not match" in reply
        ws.send(packb({"action_space_hash": "0" * 16}))
        reply = ws.recv(timeout=10)
        assert isinstance(reply, str) and meta["action_space_hash"] in reply
        ws.send(packb({"action_space_hash": meta["action_space_hash"]}))
        assert unpackb(ws.recv(timeout=10))["action_space_ok"] is True
        ws.send(packb({**make_obs(4), "action_space": space.to_dict()}))  # stripped, then run
        assert unpackb(ws.recv(timeout=10))["actions"].shape == (CHUNK, DIM)


def test_graceful_shutdown(policy: Policy) -> None:
    """In flight: answered. Open connection, new request: refused with a text frame.
    New connection: refused. Then everything closes and shutdown returns."""
    with serve_in_background(policy) as handle:
        url = handle.url
        busy, _ = raw(url)
        idle, _ = raw(url)
        handle.pause()
        busy.send(packb(make_obs(5)))
        deadline = time.monotonic() + 10
        while handle.stats()["in_flight"] < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        stopper = threading.Thread(target=handle.shutdown, args=(20.0,))
        stopper.start()
        while not handle.stats()["draining"] and time.monotonic() < deadline:
            time.sleep(0.01)
        idle.send(packb(make_obs(6)))
        reply = idle.recv(timeout=10)
        assert isinstance(reply, str) and "shutting down" in reply
        with pytest.raises(OSError):  # ConnectionRefusedError: the listener is closed
            raw(url, open_timeout=5)
        assert stopper.is_alive()  # still waiting for the held request
        handle.resume()
        assert unpackb(busy.recv(timeout=10))["actions"].shape == (CHUNK, DIM)
        stopper.join(15)
        assert not stopper.is_alive()
        for ws in (busy, idle):
            with pytest.raises(ConnectionClosed):
                ws.recv(timeout=5)
        assert handle.stats()["requests"] == 1 and handle.stats()["open_connections"] == 0


def test_sigterm_stops_serve_subprocess_cleanly(sim_checkpoint: Path) -> None:
    code = "import sys; from robofm.serve.commands import main; sys.exit(main(sys.argv[1:]))"
    cmd = [sys.executable, "-c", code, str(sim_checkpoint), "--port", "0", "--log-level", "WARNING"]
    env = {**os.environ, "ROBOFM_API_KEY": "k"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        assert line.startswith("robofm serve: ws://127.0.0.1:"), line + proc.stderr.read()
        url = line.split()[2]
        client = WebsocketClientPolicy(url, api_key="k")  # the env var set the key
        assert client.infer(make_obs(8))["actions"].shape == (CHUNK, DIM)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "stopped (1 requests served)" in out
    assert "Traceback" not in err
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url.replace("ws", "http", 1) + "/healthz", timeout=2)
