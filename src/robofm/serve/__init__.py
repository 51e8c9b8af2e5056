"""Serving: openpi-compatible websocket policy server, light client, robot runtime, safety layer."""
