"""`edgeproxy …`: the command line (SPEC §1.2)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Awaitable, Callable

from aiohttp import web

from . import __version__
from .config import Config, load
from .errors import ConfigError

__all__ = ["main"]

log = logging.getLogger("edgeproxy")


def _check_serve(cfg: Config, workers: int) -> None:
    if cfg.server.auth == "keys":
        raise ConfigError(
            "server.auth",
            'key authentication needs the accounts ledger, which this build does not have yet; '
            'set auth = "none" and listen on loopback',
        )
    if workers > 1 and cfg.storage.state.startswith("memory"):
        raise ConfigError(
            "storage.state",
            f"{workers} workers need shared state: set state = \"redis://127.0.0.1:6379/0\"",
        )


def _announce_router() -> None:
    from . import routing

    if not routing.EXTENSION:
        log.warning(
            "compiled router unavailable (%s): using the pure-Python fallback, which is slower",
            routing.FALLBACK_REASON,
        )


async def run_app(
    app: web.Application,
    host: str,
    port: int,
    on_ready: Callable[[int], Awaitable[None] | None] | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT, then drain in-flight requests and close cleanly."""
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=30)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        bound = runner.addresses[0][1] if runner.addresses else port
        if on_ready is not None:
            res = on_ready(bound)
            if res is not None:
                await res
        await stop.wait()
    finally:
        await runner.cleanup()


def _run(coro: Awaitable[None]) -> None:
    try:
        import uvloop

        uvloop.run(coro)  # type: ignore[arg-type]
    except ImportError:  # pragma: no cover - platforms without uvloop
        asyncio.run(coro)  # type: ignore[arg-type]


def cmd_serve(args: argparse.Namespace) -> int:
    from .app import make_app

    cfg = load(args.config) if args.config else Config()
    host, port = cfg.server.host, cfg.server.port
    host = args.host or host
    port = args.port if args.port is not None else port
    workers = args.workers or cfg.server.workers
    _check_serve(cfg, workers)
    if workers > 1:
        raise ConfigError("server.workers", "several workers arrive with the Redis state store")
    _announce_router()

    def ready(bound: int) -> None:
        log.info("edgeproxy %s listening on http://%s:%d", __version__, host, bound)

    _run(run_app(make_app(cfg), host, port, ready))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    _announce_router()
    _run(run_demo(args.port, args.host))
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from . import simulate

    return simulate.main_from_args(args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edgeproxy", description="A self-hosted LLM gateway.")
    p.add_argument("--version", action="version", version=f"edgeproxy {__version__}")
    p.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING (default INFO)")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the gateway")
    s.add_argument("--config", help="TOML configuration file")
    s.add_argument("--host", help="override [server] listen host")
    s.add_argument("--port", type=int, help="override [server] listen port")
    s.add_argument("--workers", type=int, help="worker processes (default from the config)")
    s.set_defaults(func=cmd_serve)

    d = sub.add_parser("demo", help="the gateway in front of simulated providers, no keys needed")
    d.add_argument("--port", type=int, default=8080)
    d.add_argument("--host", default="127.0.0.1")
    d.set_defaults(func=cmd_demo)

    from . import simulate

    sp = sub.add_parser("simulate-provider", help="a wire-faithful fake upstream for tests")
    simulate.add_arguments(sp)
    sp.set_defaults(func=cmd_simulate)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"edgeproxy: configuration refused: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
