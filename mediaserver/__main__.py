"""`python -m mediaserver --port 8888`: the embedded Kurento-compatible media server."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

from mediaserver.app import create_app


async def run(args: argparse.Namespace) -> None:
    app = create_app(strict_candidates=args.strict_candidates, gc_grace=args.gc_grace,
                     recordings_root=Path(args.recordings_root) if args.recordings_root
                     else None, serial=args.serial)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, args.host, args.port).start()
    logging.getLogger("mediaserver").info("= listening on ws://%s:%d/kurento", args.host,
                                          args.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    # Cleanup finalizes every recorder before the process exits.
    await runner.cleanup()


def main(configure_logging: Callable[[str], None] | None = None) -> None:
    """Runs the server; `configure_logging(level)` sets up logging (plain lines if None)."""
    parser = argparse.ArgumentParser(prog="python -m mediaserver")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8888)
    parser.add_argument("--strict-candidates", action="store_true",
                        help="ignore .local and link-local candidates, as Kurento does")
    parser.add_argument("--gc-grace", type=float, default=240.0,
                        help="garbage-collector period (KMS's garbageCollectorPeriod): an "
                        "object nobody owns any more goes 0.75 to 2 periods after its "
                        "owners' sockets closed")
    parser.add_argument("--serial", action="store_true",
                        help="serve each socket's requests one at a time, as KMS does")
    parser.add_argument("--recordings-root", default="",
                        help="recorder URIs must point below this folder")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args()
    if configure_logging is None:
        logging.basicConfig(level=args.log_level)
    else:
        configure_logging(args.log_level)
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
