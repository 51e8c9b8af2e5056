"""`robofm serve CHECKPOINT --port P`: serve a checkpoint over openpi's websocket protocol
until SIGTERM or SIGINT, then shut down gracefully (in-flight requests get their replies).

Also runnable as `python -m robofm.serve.commands CHECKPOINT ...`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

from robofm.errors import ConfigError

API_KEY_ENV = "ROBOFM_API_KEY"  # read when --api-key is not given


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="robofm serve",
        description="Serve a checkpoint to robots over openpi's websocket + msgpack protocol "
        "(the PyPI openpi-client works unchanged). GET /healthz answers 200 JSON. Stops "
        "gracefully on SIGTERM / Ctrl-C.",
    )
    parser.add_argument("checkpoint", help="checkpoint directory (model.safetensors, ...)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port; 0 picks a free one")
    parser.add_argument("--host", default="127.0.0.1", help="interface; 0.0.0.0 = all")
    parser.add_argument(
        "--api-key",
        default=None,
        help=f"require 'Authorization: Api-Key KEY' (default: ${API_KEY_ENV}, else no auth)",
    )
    parser.add_argument(
        "--max-message-mb", type=float, default=16.0, help="larger observations get an error, MiB"
    )
    parser.add_argument(
        "--rate-limit-hz", type=float, default=50.0, help="requests/s per connection; 0 = off"
    )
    parser.add_argument("--rate-burst", type=int, default=10, help="back-to-back requests allowed")
    parser.add_argument("--max-connections", type=int, default=64, help="open connections")
    parser.add_argument("--ping-timeout-s", type=float, default=20.0, help="drop silent peers")
    parser.add_argument("--drain-timeout-s", type=float, default=10.0, help="shutdown grace, s")
    parser.add_argument("--seed", type=int, default=0, help="sampling-noise seed per connection")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0 = default")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ...")
    args = parser.parse_args(argv)

    if not Path(args.checkpoint).is_dir():
        raise ConfigError(f"{args.checkpoint}: not a checkpoint directory")
    if args.max_message_mb <= 0:
        raise ConfigError(f"--max-message-mb must be > 0, got {args.max_message_mb}")
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    import torch

    from robofm.policy import Policy
    from robofm.serve.server import MB, PolicyServer, ServerConfig, warm_up

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    policy = Policy.from_checkpoint(args.checkpoint, seed=args.seed, device=args.device)
    warm_ms = warm_up(policy)
    config = ServerConfig(
        host=args.host,
        port=args.port,
        api_key=args.api_key or os.environ.get(API_KEY_ENV) or None,
        max_message_bytes=int(args.max_message_mb * MB),
        rate_limit_hz=args.rate_limit_hz,
        rate_burst=args.rate_burst,
        max_connections=args.max_connections,
        ping_timeout_s=args.ping_timeout_s,
        drain_timeout_s=args.drain_timeout_s,
    )
    server = PolicyServer(policy, config, name=Path(args.checkpoint).resolve().name)
    asyncio.run(_serve(server, warm_ms))
    return 0


async def _serve(server, warm_ms: float) -> None:
    """Run until SIGTERM/SIGINT, then drain and stop."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    auth = "API key required" if server.config.api_key else "no auth"
    print(
        f"robofm serve: {server.url} ({auth}; health {server.url.replace('ws', 'http', 1)}"
        f"/healthz; warm-up {warm_ms:.0f} ms)",
        flush=True,
    )
    await stop.wait()
    print("robofm serve: shutting down", flush=True)
    await server.shutdown()
    print(f"robofm serve: stopped ({server.stats()['requests']} requests served)", flush=True)


if __name__ == "__main__":  # the CLI's own error handling (one line, exit status 2)
    from robofm.cli import main as cli_main

    sys.exit(cli_main(["serve", *sys.argv[1:]]))
