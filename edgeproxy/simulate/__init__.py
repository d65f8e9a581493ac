"""Wire-faithful fake upstream providers, for tests, benchmarks and `edgeproxy demo`.

One simulator speaks one protocol — "openai", "openai-responses", "anthropic" or "gemini" — on its
vendor's paths, with its vendor's validation errors, response objects and SSE streams, and answers
with a deterministic fake model (see `SimOptions` and `_common.make_plan`). Faults are injected on
demand: latency, token pacing, an error rate, and hang / reset / garbage / drop / status /
midstream_error. Every simulator also serves test endpoints:

    GET  /_sim/requests   the last 100 requests: [{method, path, query, headers, body}]
    GET  /_sim/stats      {requests, completed, cancelled, errors_injected, active}
    GET  /_sim/config     the current SimOptions
    POST /_sim/config     a JSON object of SimOptions fields to change at run time
    POST /_sim/reset      clear history and stats

Use `build_app()` to embed one in an aiohttp application, `start()` to serve one on a port
from a running loop, `run()` to serve one until SIGINT/SIGTERM, and `add_arguments()` /
`main_from_args()` for the `edgeproxy simulate-provider` command.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal

import msgspec
from aiohttp import web

from . import anthropic, gemini, openai, openai_responses
from ._common import FAULTS, SIM_KEY, Sim, SimOptions, Stats, introspection_routes

__all__ = [
    "PROTOCOLS",
    "SIM_KEY",
    "Sim",
    "SimOptions",
    "Stats",
    "add_arguments",
    "build_app",
    "main_from_args",
    "run",
    "start",
]

PROTOCOLS = {
    "openai": openai,
    "openai-responses": openai_responses,
    "anthropic": anthropic,
    "gemini": gemini,
}
MAX_BODY = 64 * 1024 * 1024  # larger than any gateway limit, so the gateway's 413 is tested


def build_app(protocol: str, opts: SimOptions | None = None) -> web.Application:
    """An aiohttp application simulating `protocol`; its state is `app[SIM_KEY]`."""
    try:
        module = PROTOCOLS[protocol]
    except KeyError:
        expected = ", ".join(PROTOCOLS)
        raise ValueError(f"unknown protocol {protocol!r}; expected one of {expected}") from None
    sim = Sim(protocol, opts or SimOptions())
    app = web.Application(client_max_size=MAX_BODY)
    app[SIM_KEY] = sim
    app.add_routes(module.routes(sim))
    app.add_routes(introspection_routes(sim))
    return app


async def start(
    protocol: str, host: str = "127.0.0.1", port: int = 0, opts: SimOptions | None = None
) -> web.AppRunner:
    """Serve a simulator on host:port (0 = a free port) and return the started runner.

    The caller owns the runner: `await runner.cleanup()` stops it. The bound address is
    `runner.addresses[0]`. Handlers are cancelled when their client disconnects, and shutdown
    waits at most one second for in-flight (e.g. hung) requests.
    """
    app = build_app(protocol, opts)
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=1.0)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner


def run(protocol: str, host: str, port: int, opts: SimOptions | None = None) -> None:
    """Serve a simulator on uvloop until SIGINT or SIGTERM (blocking); prints one line
    "simulate-provider <protocol> listening on http://host:port" once it accepts connections."""
    import uvloop

    uvloop.run(_serve(protocol, host, port, opts))


async def _serve(protocol: str, host: str, port: int, opts: SimOptions | None) -> None:
    runner = await start(protocol, host, port, opts)
    try:
        bound_host, bound_port = runner.addresses[0][:2]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        print(f"simulate-provider {protocol} listening on http://{shown}:{bound_port}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of `edgeproxy simulate-provider` to a (sub)parser."""
    parser.add_argument("--protocol", required=True, choices=sorted(PROTOCOLS))
    parser.add_argument("--port", type=int, required=True, help="0 picks a free port")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="delay before headers")
    parser.add_argument(
        "--tokens-per-s", type=float, default=0.0, help="pace tokens (0 = as fast as possible)"
    )
    parser.add_argument(
        "--error-rate", type=float, default=0.0, help="fraction answered with a 5xx"
    )
    parser.add_argument("--seed", type=int, default=None, help="make runs reproducible")
    parser.add_argument("--fault", choices=FAULTS, default="", help="inject a fault")
    parser.add_argument("--fault-status", type=int, default=500, help="status of --fault status")
    parser.add_argument("--drop-after", type=int, default=3, help="chunks before a drop")
    parser.add_argument("--retry-after", type=int, default=1, help="Retry-After of a 429")
    parser.add_argument("--api-key", default=None, help="accept only this key")
    parser.add_argument("--reply", default=None, help="fixed reply text")
    parser.add_argument("--max-reply-tokens", type=int, default=16)
    parser.add_argument(
        "--model",
        action="append",
        dest="models",
        default=[],
        help="a model id to list (repeatable)",
    )


def options_from_args(args: argparse.Namespace) -> SimOptions:
    """SimOptions from parsed arguments; raises ValueError with the bad field."""
    fields = {f: getattr(args, f) for f in SimOptions.__struct_fields__ if hasattr(args, f)}
    try:
        return msgspec.convert(fields, SimOptions)
    except msgspec.ValidationError as exc:
        raise ValueError(str(exc)) from None


def main_from_args(args: argparse.Namespace) -> int:
    """Run `edgeproxy simulate-provider` with parsed arguments; returns the exit status."""
    try:
        opts = options_from_args(args)
    except ValueError as exc:
        print(f"simulate-provider: {exc}", flush=True)
        return 2
    logging.basicConfig(level=logging.WARNING)
    run(args.protocol, args.host, args.port, opts)
    return 0
