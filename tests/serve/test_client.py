"""PolicyClient against the real robofm server and against a bare openpi-style server."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from dataclasses import replace

import numpy as np
import pytest

from robofm.errors import SpaceError
from robofm.serve import client as client_mod
from robofm.serve.client import ConnectionLostError, PolicyClient, ServerError
from robofm.serve.protocol import packb, unpackb
from robofm.sim.env import sim_action_space as _sim_space
from tests.serve.conftest import SERVE_CHUNK_LEN


def sim_action_space():
    """The sim robot's contract for the served checkpoint: its chunks hold H = 4 actions."""
    return replace(_sim_space(), chunk_len=SERVE_CHUNK_LEN)


@pytest.fixture(scope="module")
def policy(sim_checkpoint):
    from robofm.policy import Policy

    return Policy.from_checkpoint(sim_checkpoint)


@pytest.fixture(scope="module")
def server(policy):
    from robofm.serve.server import serve_in_background

    with serve_in_background(policy, rate_limit_hz=0) as handle:
        yield handle


def make_obs(seed: int = 0, state_dim: int = 4) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "images": {
            c: rng.integers(0, 255, (32, 32, 3), dtype=np.uint8) for c in ("front", "wrist")
        },
        "state": rng.normal(0, 0.1, state_dim).astype(np.float32),
        "prompt": "lift the red cube",
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_client_import_pulls_in_neither_torch_nor_mujoco():
    code = (
        "import sys, robofm.serve.client, robofm.serve.safety; "
        "bad = [m for m in ('torch', 'mujoco', 'transformers') if m in sys.modules]; "
        "assert not bad, bad; print('light')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "light"


def test_infer_matches_the_in_process_policy(server, sim_checkpoint):
    from robofm.policy import Policy

    space = sim_action_space()
    with PolicyClient(server.url, action_space=space) as client:
        meta = client.metadata
        assert meta["cameras"] == ["front", "wrist"] and meta["state_dim"] == 4
        assert meta["action_space_hash"] == space.hash()
        replies = [client.infer(make_obs(i)) for i in range(2)]
    local = Policy.from_checkpoint(sim_checkpoint)
    for i, reply in enumerate(replies):
        assert reply["actions"].dtype == np.float32 and reply["actions"].shape == (4, 4)
        assert reply["server_timing"]["infer_ms"] > 0
        np.testing.assert_allclose(reply["actions"], local.infer(make_obs(i))["actions"], atol=1e-5)


def test_server_error_is_raised_and_the_connection_stays_usable(server):
    before = server.stats()["connections"]
    with PolicyClient(server.url) as client:
        with pytest.raises(ServerError, match="state"):
            client.infer(make_obs(state_dim=7))
        with pytest.raises(ServerError, match="wrist"):
            client.infer({**make_obs(), "images": {"front": make_obs()["images"]["front"]}})
        assert client.infer(make_obs())["actions"].shape == (4, 4)
    assert server.stats()["connections"] == before + 1  # one connection throughout


def test_contract_hash_rides_on_the_first_message_only(server, monkeypatch):
    sent = []
    monkeypatch.setattr(client_mod, "packb", lambda obj: sent.append(obj) or packb(obj))
    space = sim_action_space()
    with PolicyClient(server.url, action_space=space) as client:
        client.infer(make_obs())
        client.infer(make_obs())
    assert sent[0]["action_space_hash"] == space.hash()
    assert "action_space_hash" not in sent[1]


def test_contract_mismatch_is_refused_at_connect_naming_the_field(server):
    wrong = replace(sim_action_space(), control_hz=20.0)
    with pytest.raises(SpaceError, match=r"control_hz: server 10\.0, client 20\.0"):
        PolicyClient(server.url, action_space=wrong)
    with pytest.raises(SpaceError, match="control_hz"):  # the dict form is checked the same way
        PolicyClient(server.url, action_space=wrong.to_dict())
    with PolicyClient(server.url) as client:  # or once connected, after reading the metadata
        with pytest.raises(SpaceError, match=r"units.*\['m', 'm', 'm', '1'\]"):
            client.set_action_space(replace(sim_action_space(), units=("m", "m", "m", "rad")))
        client.set_action_space(sim_action_space())
        assert client.infer(make_obs())["actions"].shape == (4, 4)


def test_reset_restarts_the_server_side_episode(server):
    with PolicyClient(server.url) as client:
        first = client.infer(make_obs(3))["actions"]
        client.infer(make_obs(4))
        resets = server.stats()["resets"]
        client.reset()
        assert server.stats()["resets"] == resets + 1
        np.testing.assert_allclose(client.infer(make_obs(3))["actions"], first, atol=1e-6)


def test_connect_retries_until_the_server_comes_up(policy):
    from robofm.serve.server import serve_in_background

    port, stop, up = free_port(), threading.Event(), threading.Event()

    def late_server():
        time.sleep(0.8)
        with serve_in_background(policy, port=port):
            up.set()
            stop.wait(30)

    thread = threading.Thread(target=late_server, daemon=True)
    thread.start()
    t0 = time.monotonic()
    try:
        with PolicyClient(f"127.0.0.1:{port}", connect_timeout_s=20.0) as client:
            assert time.monotonic() - t0 >= 0.7 and up.is_set()
            assert client.infer(make_obs())["actions"].shape == (4, 4)
    finally:
        stop.set()
        thread.join(20)
    t0 = time.monotonic()
    with pytest.raises(ConnectionLostError, match=f"no policy server at ws://127.0.0.1:{port}"):
        PolicyClient(f"ws://127.0.0.1:{port}", connect_timeout_s=0.5)
    assert 0.4 < time.monotonic() - t0 < 5.0


def test_api_key_is_sent_and_a_wrong_key_fails_at_once(policy):
    from robofm.serve.server import serve_in_background

    with serve_in_background(policy, api_key="sekrit") as srv:
        t0 = time.monotonic()
        with pytest.raises(ConnectionLostError, match="API key"):
            PolicyClient(srv.url, api_key="wrong", connect_timeout_s=10.0)
        assert time.monotonic() - t0 < 3.0  # not retried until the deadline
        with PolicyClient(srv.url, api_key="sekrit") as client:
            assert client.infer(make_obs())["actions"].shape == (4, 4)


def test_reply_timeout_closes_and_the_next_call_reconnects(server):
    with PolicyClient(server.url, timeout_s=0.3) as client:
        server.pause()
        try:
            with pytest.raises(ConnectionLostError, match=r"did not reply within 0\.3 s"):
                client.infer(make_obs())
        finally:
            server.resume()
        client.timeout_s = 10.0
        assert client.infer(make_obs())["actions"].shape == (4, 4)


class OpenpiStyleServer:
    """openpi's behaviour, nothing more: metadata without a contract, actions for good
    observations, and on an error a text frame followed by closing the connection."""

    def __init__(self):
        from websockets.sync.server import serve

        self.received: list[dict] = []
        self.connections = 0
        self._server = serve(self._handle, "127.0.0.1", 0, compression=None, max_size=None)
        self.url = f"ws://127.0.0.1:{self._server.socket.getsockname()[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def _handle(self, ws) -> None:
        self.connections += 1
        ws.send(packb({"policy": "openpi-like"}))
        for frame in ws:
            obs = unpackb(frame)
            self.received.append(obs)
            if "state" not in obs:
                ws.send("Traceback (most recent call last):\nKeyError: 'state'")
                ws.close(1011, "internal error")
                return
            ws.send(packb({"actions": np.ones((5, 4), np.float32), "policy_timing": {}}))

    def close(self) -> None:
        self._server.shutdown()
        self._thread.join(5)


def test_works_against_an_openpi_style_server():
    srv = OpenpiStyleServer()
    try:
        with PolicyClient(srv.url, action_space=sim_action_space()) as client:
            assert client.metadata == {"policy": "openpi-like"}  # no contract: check skipped
            assert client.infer(make_obs())["actions"].shape == (5, 4)
            with pytest.raises(ServerError, match="KeyError: 'state'"):
                client.infer({"prompt": "no state"})
            client.reset()  # openpi has no reset message: nothing is sent
            assert client.infer(make_obs())["actions"].shape == (5, 4)  # reconnected
        assert srv.connections == 2
        assert len(srv.received) == 3  # no reset, no contract key on the wire
        assert all("action_space_hash" not in m and "reset" not in m for m in srv.received)
    finally:
        srv.close()
