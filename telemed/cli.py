"""`telemed` command: `telemed run` starts the whole service."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import secrets
import signal
import sys

from aiohttp import web

from mis.answers import Invalid
from mis.workstation_links import check_person, mint_workstation_link
from signaling.hub import HUB
from telemed import embedded
from telemed.app import create_app
from telemed.collector import tune_collector
from telemed.embedded import hash_api_key
from telemed.logs import configure_logging
from telemed.redis_client import SENTINEL_SCHEME
from telemed.redis_failover import FailoverFailed, planned_failover
from telemed.settings import Settings, SettingsError, describe, load_settings
from telemed.supervisor import Supervisor
from turn.providers.return_users import generate

__all__ = ["main", "serve"]

log = logging.getLogger("telemed")


async def serve(settings: Settings, *, stop: asyncio.Event | None = None) -> None:
    """Run children and the web app until `stop` is set (or SIGTERM/SIGINT)."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    #: SIGTERM (a deploy, a restart) leaves the embedded services running for the next
    #: start when calls are taken over; SIGINT (Ctrl-C) stops everything.
    restarting = False

    def on_signal(sig: signal.Signals) -> None:
        nonlocal restarting
        restarting = sig is signal.SIGTERM and settings.calls.take_over
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, on_signal, sig)

    specs, endpoints = embedded.plan(settings)
    supervisor = Supervisor()
    for spec in specs:
        supervisor.add(spec)
    runner: web.AppRunner | None = None
    try:
        if specs:
            log.info("= starting embedded services: %s", ", ".join(s.name for s in specs))
        await supervisor.start()
        app = create_app(settings, endpoints, supervisor=supervisor)
        runner = web.AppRunner(app, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, settings.http.host, settings.http.port)
        try:
            await site.start()
        except OSError as exc:
            raise RuntimeError(
                f"TELEMED_HTTP_HOST/TELEMED_HTTP_PORT: cannot listen on "
                f"{settings.http.host}:{settings.http.port}: {exc.strerror}") from None
        log.info("= serving on %s", settings.public_url)
        tune_collector()
        if specs:
            # The newcomer's next step, last in the start-up: where to go, and where the
            # MIS's credentials are (the file, never the key itself).
            log.info("= open %s/ in a browser (the demo button makes a call); the API key "
                     "for the MIS is in %s", settings.public_url,
                     settings.data_path / "secrets.json")
        await stop.wait()
        log.info("= stopping")
    finally:
        if runner is not None:
            # Ctrl-C stops the embedded media server too: its calls end cleanly now
            # (recordings finalized) rather than wait for a takeover that cannot happen.
            app[HUB].keep_calls_on_stop = restarting or not specs
            await runner.cleanup()
        await supervisor.stop(keep=restarting)
        if restarting and specs:
            log.info("= embedded services left running for the next start "
                     "(stop them with SIGINT, Ctrl-C)")
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="telemed", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the service (embedded services unless configured)")
    run.add_argument("--config", help="TOML settings file (also $TELEMED_CONFIG)")
    sub.add_parser("settings", help="print the effective settings, secrets masked")
    sub.add_parser("api-key", help="make a new API key and the hash to configure")
    users = sub.add_parser(
        "turn-users", help="write reTurn's users file: a pool of accounts, all refused until "
        "leased (turn.users_file, turn.realm, turn.pool_size accounts)")
    users.add_argument("--config", help="TOML settings file (also $TELEMED_CONFIG)")
    users.add_argument("--force", action="store_true",
                       help="replace an existing file (live reTurn credentials stop working)")
    failover = sub.add_parser(
        "redis-failover", help="move the Redis primary onto its replica (redis+sentinel:// "
        "only), failing and losing no write")
    failover.add_argument("--config", help="TOML settings file (also $TELEMED_CONFIG)")
    link = sub.add_parser(
        "workstation-link", help="print a doctor's or consultant's workstation link, signed "
        "with the service's key (as POST /api/v1/workstation-links)")
    link.add_argument("--config", help="TOML settings file (also $TELEMED_CONFIG)")
    link.add_argument("--id", required=True, help="the person's id in the MIS")
    link.add_argument("--name", required=True, help="the name the pages show")
    link.add_argument("--role", required=True, choices=("doctor", "consultant"))
    link.add_argument("--ttl", type=float, help="seconds it stays valid (auth.token_ttl)")
    link.add_argument("--json", action="store_true", help="link, token and expiresAt as JSON")
    args = parser.parse_args(argv)
    if args.command == "api-key":
        key = secrets.token_urlsafe(32)
        print(f"key (give it to the MIS):                  {key}")
        print(f"hash (add to TELEMED_AUTH_API_KEY_HASHES): {hash_api_key(key)}")
        return 0

    try:
        settings = load_settings(config_file=getattr(args, "config", None))
    except SettingsError as exc:
        print(f"telemed: configuration error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log.level, settings.log.format)

    if args.command == "turn-users":
        return _turn_users(settings, force=args.force)
    if args.command == "redis-failover":
        return _redis_failover(settings)
    if args.command == "workstation-link":
        return _workstation_link(settings, args)
    if args.command == "settings":
        print(json.dumps(describe(settings), indent=2))
        return 0
    try:
        asyncio.run(serve(settings))
    except RuntimeError as exc:
        log.error("! %s", exc)
        return 1
    return 0


def _redis_failover(settings: Settings) -> int:
    if not settings.redis.url.startswith(f"{SENTINEL_SCHEME}://"):
        print(f"telemed: redis-failover needs redis.url (TELEMED_REDIS_URL) to be a "
              f"{SENTINEL_SCHEME}:// URL; a failover is Redis Sentinel's", file=sys.stderr)
        return 2
    try:
        moved = asyncio.run(planned_failover(settings.redis.url,
                                             timeout=settings.redis.timeout))
    except FailoverFailed as exc:
        print(f"telemed: the Redis primary was not moved: {exc}", file=sys.stderr)
        return 1
    print(f"Redis primary moved from {moved.old[0]}:{moved.old[1]} to "
          f"{moved.new[0]}:{moved.new[1]}; writes waited {moved.paused:.2f} s")
    return 0


def _workstation_link(settings: Settings, args: argparse.Namespace) -> int:
    try:
        pid, name, role, ttl = check_person({"id": args.id, "name": args.name,
                                             "role": args.role, "ttl": args.ttl})
    except Invalid as exc:
        print(f"telemed: --{exc.field}: {exc}", file=sys.stderr)
        return 2
    # The key the service signs with: configured, or the one it generated and kept.
    key = settings.auth.jwt_secret or embedded.load_secrets(settings.data_path).jwt_secret
    made = mint_workstation_link(
        key=key, issuer=settings.auth.jwt_issuer, audience=settings.auth.jwt_audience,
        public_url=settings.public_url, subject=pid, name=name, role=role,
        ttl=ttl if ttl is not None else settings.auth.token_ttl)
    print(json.dumps(made) if args.json else made["link"])
    return 0


def _turn_users(settings: Settings, *, force: bool) -> int:
    path = settings.turn_users_file
    if path.exists() and not force:
        print(f"telemed: {path} exists; --force replaces it", file=sys.stderr)
        return 1
    generate(path, settings.turn.realm, settings.turn.pool_size,
             hashed=settings.turn.return_hashed)
    print(f"wrote {settings.turn.pool_size} reTurn accounts (realm {settings.turn.realm}) "
          f"to {path}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
