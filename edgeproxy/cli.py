"""`edgeproxy …`: the command line (SPEC §1.2)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import gc
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from aiohttp import web

from . import __version__
from .config import Config, is_loopback, load, loads
from .errors import ConfigError, EdgeproxyError, StartupError

__all__ = ["main"]

log = logging.getLogger("edgeproxy")


def _check_serve(cfg: Config, workers: int, host: str) -> None:
    if cfg.server.auth == "none" and not is_loopback(host):
        # --host must not get round the check the configuration file passed (SPEC §1.1).
        raise ConfigError(
            "server.auth",
            f'"none" is only allowed when the gateway listens on loopback, not on {host}',
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
    reuse_port: bool = False,
) -> None:
    """Serve until SIGTERM/SIGINT, then drain in-flight requests and close cleanly. Slow
    clients are bounded by the [server] header and body timeouts and the connection cap
    (edgeproxy.listener)."""
    from .handlers import GATEWAY
    from .listener import connection_cap, listen

    gw = app[GATEWAY]
    server = gw.cfg.server
    cap, fds = connection_cap(server.max_connections)
    if server.max_connections > cap:
        log.warning("server.max_connections = %d is over what %d file descriptors allow; "
                    "serving at most %d connections", server.max_connections, fds, cap)
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=30)
    await runner.setup()
    try:
        listener = await listen(runner, host, port, cap=cap,
                                header_timeout_s=server.header_timeout_s, reuse_port=reuse_port,
                                metrics=gw.metrics)
    except BaseException:  # the port refused: close what started (ledger writer, journal)
        await runner.cleanup()
        raise
    log.info("at most %d client connections (file-descriptor limit %d; raise it with "
             "`ulimit -n` or LimitNOFILE=)", cap, fds)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        if on_ready is not None:
            res = on_ready(listener.port)
            if res is not None:
                await res
        await stop.wait()
    finally:
        listener.close()
        await runner.cleanup()


def _run(coro: Coroutine[Any, Any, None]) -> None:
    # Only the import may fall back: an ImportError raised by the coroutine (a missing extra)
    # is its own error, not a reason to run it a second time.
    try:
        import uvloop
    except ImportError:  # pragma: no cover - platforms without uvloop
        asyncio.run(coro)
    else:
        uvloop.run(coro)


# errno of a listening socket the OS refused -> what to do about it
_LISTEN_FIX = {
    errno.EADDRINUSE: "stop the process that holds it, or choose another port (--port or "
                      "[server] listen)",
    errno.EADDRNOTAVAIL: "listen on an address of this machine (0.0.0.0 for all of them; --host "
                         "or [server] listen)",
    errno.EACCES: "ports below 1024 need privileges: choose a port from 1024 (--port or "
                  "[server] listen)",
}


def _serve(coro: Coroutine[Any, Any, None], host: str, port: int) -> None:
    """`_run(run_app(...))`; a listening socket the OS refuses is a StartupError."""
    try:
        _run(coro)
    except OSError as exc:
        fix = _LISTEN_FIX.get(exc.errno or 0)
        if fix is None:
            raise
        raise StartupError(f"cannot listen on {host}:{port} ({os.strerror(exc.errno or 0)})",
                           fix) from exc


def _tell(fd: int | None, line: str) -> None:
    """A worker's status line to its supervisor (see `supervise`)."""
    if fd is not None:
        with contextlib.suppress(OSError):  # the supervisor is gone: nobody to tell
            os.write(fd, (line + "\n").encode())


def cmd_serve(args: argparse.Namespace) -> int:
    from .app import make_app

    # No file: the defaults and the built-in catalog (served for the providers whose keys are set).
    cfg = load(args.config) if args.config else loads("")
    host, port = cfg.server.host, cfg.server.port
    host = args.host or host
    port = args.port if args.port is not None else port
    workers = args.workers or cfg.server.workers
    _check_serve(cfg, workers, host)
    if workers > 1 and args.worker is None:
        return supervise(args, workers, host, port)
    _announce_router()
    name = f"worker {args.worker}" if args.worker is not None else "edgeproxy"

    def ready(bound: int) -> None:
        log.info("%s %s listening on http://%s:%d", name, __version__, host, bound)
        # What start-up built (modules, catalog, router, app) lives as long as the process; frozen,
        # the cyclic collector stops walking it again on every older-generation pass (~10 % more
        # requests/s at saturation in interleaved A/B runs, no change in RSS).
        gc.collect()
        gc.freeze()
        _tell(args.status_fd, "ready")

    _serve(run_app(make_app(cfg), host, port, ready, reuse_port=args.worker is not None),
           host, port)
    return 0


_BACKOFF_MIN_S, _BACKOFF_MAX_S = 0.5, 30.0
_STABLE_S = 30.0  # a worker that served this long starts its back-off again from the minimum


class _Worker:
    """One worker slot of `supervise`: its process, the pipe it reports its start on, and its
    back-off. The worker writes `ready` once it listens, or `refused <line>` before it exits 2."""

    def __init__(self, index: int, argv: list[str]) -> None:
        self.index = index
        self.argv = argv
        self.proc: subprocess.Popen[bytes] | None = None
        self.fd = -1
        self.buf = b""
        self.ready_at = 0.0  # when the running process said "ready"; 0 until then
        self.refusal = ""
        self.delay = _BACKOFF_MIN_S
        self.restart_at = 0.0

    def spawn(self) -> None:
        r, w = os.pipe()
        os.set_blocking(r, False)
        self.proc = subprocess.Popen(
            [*self.argv, "--worker", str(self.index), "--status-fd", str(w)], pass_fds=(w,))
        os.close(w)
        self.fd, self.buf, self.ready_at, self.refusal = r, b"", 0.0, ""

    def read(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while chunk := os.read(self.fd, 4096):
                self.buf += chunk
        *lines, self.buf = self.buf.split(b"\n")
        for line in lines:
            text = line.decode(errors="replace")
            if text == "ready":
                self.ready_at = time.monotonic()
            elif text.startswith("refused "):
                self.refusal = text.removeprefix("refused ")

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def supervise(args: argparse.Namespace, workers: int, host: str, port: int) -> int:
    """`serve --workers N`: N processes on one port (SO_REUSEPORT; the kernel spreads the
    connections). SIGTERM is passed on and waited for, so each worker drains its streams and
    flushes its ledger writer (SPEC §8). A worker that dies is restarted after a back-off (0.5 s
    doubling to 30 s, from 0.5 s again once a worker served 30 s), so an unreachable ledger is
    retried, not spun on. When every worker is refused at start before any was ready (the same
    cause on all, like the port taken), restarting cannot help: their line is printed, exit 2."""
    base = [sys.executable, "-m", "edgeproxy", "--log-level", args.log_level, "serve",
            "--host", host, "--port", str(port)]
    if args.config:
        base += ["--config", args.config]
    stopping = False

    def stop(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    slots = [_Worker(i, base) for i in range(workers)]
    for w in slots:
        w.spawn()
    log.info("edgeproxy %s: %d workers on http://%s:%d", __version__, workers, host, port)
    ever_ready = False
    refused: dict[int, str] = {}  # until a worker is ready: slot -> the line it was refused with
    while not stopping and len(refused) < workers:
        time.sleep(0.1)
        now = time.monotonic()
        for w in slots:
            if w.proc is not None:
                w.read()
                ever_ready = ever_ready or w.ready_at > 0
        for w in slots:
            if w.proc is None:
                if now >= w.restart_at:
                    w.spawn()
                continue
            code = w.proc.poll()
            if code is None or stopping:
                continue
            w.read()  # what it wrote just before it exited
            w.close()
            ever_ready = ever_ready or w.ready_at > 0
            w.proc = None
            if w.ready_at and now - w.ready_at >= _STABLE_S:
                w.delay = _BACKOFF_MIN_S
            if code == 2 and not ever_ready:
                refused[w.index] = w.refusal or f"worker {w.index} exited with 2"
                # (said once, as the exit line, if every worker is refused the same way)
                log.debug("worker %d refused: %s", w.index, refused[w.index])
            else:
                why = f"refused: {w.refusal}" if code == 2 and w.refusal else f"exited with {code}"
                log.warning("worker %d restarts in %.1f s (%s)", w.index, w.delay, why)
            w.restart_at = now + w.delay
            w.delay = min(w.delay * 2, _BACKOFF_MAX_S)
    for w in slots:
        if w.proc is not None and w.proc.poll() is None:
            w.proc.send_signal(signal.SIGTERM)
    rc = 0
    for w in slots:
        if w.proc is not None:
            try:
                w.proc.wait(timeout=45)
            except subprocess.TimeoutExpired:
                w.proc.kill()
                rc = 1
        w.close()
    if len(refused) == workers:
        for line in dict.fromkeys(refused.values()):
            print(f"edgeproxy: {line}", file=sys.stderr)
        return 2
    return rc


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    _announce_router()
    _serve(run_demo(args.port, args.host), args.host, args.port)
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from . import simulate

    return simulate.main_from_args(args)


def _ledger_cmd(args: argparse.Namespace, fn: Callable[[Any], Awaitable[int]]) -> int:
    """Run `fn(ledger)` against the configured ledger (the same database `serve` uses)."""
    from .billing.ledger import Ledger
    from .billing.store import open_driver

    cfg = load(args.config) if args.config else Config()

    async def go() -> int:
        ledger = Ledger(open_driver(cfg.storage.ledger))
        await ledger.open()
        try:
            return await fn(ledger)
        finally:
            await ledger.close()

    try:
        return asyncio.run(go())
    except (EdgeproxyError, ValueError) as exc:
        print(f"edgeproxy: {exc}", file=sys.stderr)
        return 2


def _usd_arg(text: str | None, what: str, allow_zero: bool = False) -> int | None:
    from .billing.fees import parse_usd

    if text is None:
        return None
    micro = parse_usd(text)
    if micro < 0 or (micro == 0 and not allow_zero):
        raise ValueError(f"{what} must be {'>= 0' if allow_zero else 'positive'}")
    return micro


def _money(micro: int | None) -> str:
    from .billing.pricing import usd_str

    return "none" if micro is None else "$" + usd_str(micro * 1_000_000)


def cmd_keys(args: argparse.Namespace) -> int:
    async def create(ledger: Any) -> int:
        credits = _usd_arg(args.credits, "--credits")
        limit = _usd_arg(args.limit, "--limit", allow_zero=True)
        if args.account:
            if await ledger.account(args.account) is None:
                raise ValueError(f"unknown account {args.account!r}")
            account_id = args.account
        else:
            account_id = (await ledger.create_account(args.name)).id
        if credits:
            _, fee = await ledger.add_credits(account_id, credits, args.method)
            print(f"credits: {_money(credits)} added (fee {_money(fee)}, charged "
                  f"{_money(credits + fee)})", file=sys.stderr)
        key, row = await ledger.create_key(account_id, args.name, limit)
        print(f"account: {account_id}\nkey id:  {row.id}\nlimit:   {_money(limit)}",
              file=sys.stderr)
        print("the key is shown once; store it now:", file=sys.stderr)
        print(key)
        return 0

    async def list_(ledger: Any) -> int:
        accounts = {a.id: a for a in await ledger.accounts()}
        print(f"{'key id':<22} {'account':<22} {'label':<20} {'usage':>12} {'limit':>12} "
              f"{'balance':>14} state")
        for k in await ledger.keys(args.account):
            a = accounts.get(k.account_id)
            print(f"{k.id:<22} {k.account_id:<22} {k.label[:20]:<20} {_money(k.usage_micro):>12} "
                  f"{_money(k.limit_micro):>12} {_money(a.balance_micro if a else 0):>14} "
                  f"{'disabled' if k.disabled else 'active'}")
        return 0

    async def disable(ledger: Any) -> int:
        row = await ledger.update_key(args.key_id, disabled=not args.enable)
        print(f"{row.id}: {'disabled' if row.disabled else 'active'}")
        return 0

    return _ledger_cmd(args, {"create": create, "list": list_, "disable": disable}[args.action])


def cmd_credits(args: argparse.Namespace) -> int:
    async def add(ledger: Any) -> int:
        amount = _usd_arg(args.amount, "AMOUNT")
        assert amount is not None
        acct, fee = await ledger.add_credits(args.account, amount, args.method)
        print(f"{acct.id}: {_money(amount)} of credits for {_money(amount + fee)} "
              f"({args.method} fee {_money(fee)}); balance {_money(acct.balance_micro)}")
        return 0

    return _ledger_cmd(args, add)


def _count(text: str) -> int:
    """'100M', '20k', '1.5B', '1000' -> an integer count."""
    from decimal import Decimal, InvalidOperation

    t = text.strip().upper().replace(",", "").replace("_", "")
    mult = {"K": 10**3, "M": 10**6, "B": 10**9}.get(t[-1:], 1)
    if mult != 1:
        t = t[:-1]
    try:
        n = Decimal(t) * mult
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"not a count: {text!r}") from None
    if n < 0 or n != n.to_integral_value():
        raise argparse.ArgumentTypeError(f"not a whole count: {text!r}")
    return int(n)


def _port(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = -1
    if not 0 <= n <= 65535:  # the OS would take 99999 as 34463
        raise argparse.ArgumentTypeError(f"not a port (0-65535): {text!r}")
    return n


def _percent(text: str) -> int:
    """'20%' or '20' -> 2000 basis points."""
    from decimal import Decimal, InvalidOperation

    try:
        d = Decimal(text.strip().rstrip("%"))
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"not a percentage: {text!r}") from None
    if not 0 <= d <= 100:
        raise argparse.ArgumentTypeError("a percentage between 0 and 100")
    return int(d * 100)


def cmd_cost(args: argparse.Namespace) -> int:
    from .billing.fees import compare_costs
    from .routing import prices_of

    cfg = _catalog_config(args.config)
    model = cfg.models.get(args.model)
    if model is None:
        print(f"edgeproxy: unknown model {args.model!r}", file=sys.stderr)
        return 2
    if args.cached_input_tokens + args.cache_write_tokens > args.input_tokens:
        print("edgeproxy: --cached-input-tokens and --cache-write-tokens are parts of "
              "--input-tokens: together at most as many", file=sys.stderr)
        return 2
    ep = min(model.endpoints, key=lambda e: e.prompt + e.completion)
    prices = prices_of(ep)
    rows = compare_costs(prices, args.input_tokens, args.output_tokens, args.requests or 0,
                         cfg.billing.byok_free_requests, args.byok_discount,
                         args.cached_input_tokens, args.cache_write_tokens)
    cache = ""
    if args.cached_input_tokens or args.cache_write_tokens:
        cache = (f" (of which {args.cached_input_tokens:,} cache reads at "
                 f"{_money(prices.cache_read)} and {args.cache_write_tokens:,} cache writes at "
                 f"{_money(prices.cache_write)} per 1M)")
    print(f"{args.model}: ${ep.prompt}/${ep.completion} per 1M tokens (in/out), "
          f"{args.input_tokens:,} input{cache} + {args.output_tokens:,} output tokens"
          + (f", {args.requests:,} requests" if args.requests else ""))
    print(f"| {'payment':<24} | {'tokens':>12} | {'fees':>12} | {'total':>12} | note")
    print(f"|{'-' * 26}|{'-' * 14}|{'-' * 14}|{'-' * 14}|------")
    for r in rows:
        print(f"| {r.payment:<24} | {_money(r.tokens):>12} | {_money(r.fees):>12} | "
              f"{_money(r.total):>12} | {r.note}")
    return 0


def _catalog_config(path: str | None) -> Config:
    """The configuration with the built-in catalog, keys set or not: what prices and lists use."""
    import tomllib

    from . import catalog
    from .config import parse

    doc: dict[str, Any] = {}
    if path:
        try:
            with open(path, "rb") as fh:
                doc = tomllib.load(fh)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError("", f"cannot read {path}: {exc}") from None
    return parse(catalog.merge(catalog.builtin_document(), doc))


def cmd_models(args: argparse.Namespace) -> int:
    """The catalog as a table: every model the configuration (with the built-in catalog) names,
    whether or not its providers' keys are set here."""
    cfg = _catalog_config(args.config)
    print(f"{'model':<40} {'$/1M in':>9} {'$/1M out':>9} {'context':>9}  providers")
    for mid, m in cfg.models.items():
        if not m.enabled:
            continue
        ins = sorted({e.prompt for e in m.endpoints})
        outs = sorted({e.completion for e in m.endpoints})
        span = lambda xs: f"{xs[0]:g}" if len(xs) == 1 else f"{xs[0]:g}-{xs[-1]:g}"  # noqa: E731
        provs = []
        for e in m.endpoints:
            key = cfg.providers[e.provider].api_key_env
            mark = "" if not key or os.environ.get(key) else "*"
            q = f" {e.quantization}" if e.quantization != "unknown" else ""
            provs.append(f"{e.provider}{q}{mark}")
        print(f"{mid:<40} {span(ins):>9} {span(outs):>9} {m.context_length:>9}  "
              f"{', '.join(dict.fromkeys(provs))}")
    print("\n* the provider's API key is not set in this environment: the endpoint is not served")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edgeproxy", description="A self-hosted LLM gateway.")
    p.add_argument("--version", action="version", version=f"edgeproxy {__version__}")
    p.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING (default INFO)")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the gateway")
    s.add_argument("--config", help="TOML configuration file")
    s.add_argument("--host", help="override [server] listen host")
    s.add_argument("--port", type=_port, help="override [server] listen port")
    s.add_argument("--workers", type=int, help="worker processes (default from the config)")
    s.add_argument("--worker", type=int, help=argparse.SUPPRESS)  # set by the supervisor
    s.add_argument("--status-fd", type=int, help=argparse.SUPPRESS)  # the supervisor's pipe
    s.set_defaults(func=cmd_serve)

    d = sub.add_parser("demo", help="the gateway in front of simulated providers, no keys needed")
    d.add_argument("--port", type=_port, default=8080)
    d.add_argument("--host", default="127.0.0.1")
    d.set_defaults(func=cmd_demo)

    k = sub.add_parser("keys", help="create, list or disable API keys (on the ledger)")
    ksub = k.add_subparsers(dest="action", required=True)
    kc = ksub.add_parser("create", help="a new key (and a new account unless --account)")
    kc.add_argument("--name", required=True)
    kc.add_argument("--account", help="an existing account id")
    kc.add_argument("--credits", help="USD of credits to add to the account")
    kc.add_argument("--method", choices=("card", "crypto"), default="card")
    kc.add_argument("--limit", help="the key's own spend limit in USD")
    kl = ksub.add_parser("list", help="keys with usage, limit and account balance")
    kl.add_argument("--account")
    kd = ksub.add_parser("disable", help="disable a key (or --enable it again)")
    kd.add_argument("key_id")
    kd.add_argument("--enable", action="store_true")
    for kp in (kc, kl, kd):
        kp.add_argument("--config", help="TOML configuration file (its [storage] ledger)")
    k.set_defaults(func=cmd_keys)

    c = sub.add_parser("credits", help="add credits to an account")
    csub = c.add_subparsers(dest="action", required=True)
    ca = csub.add_parser("add", help="buy AMOUNT USD of credits for ACCOUNT")
    ca.add_argument("account")
    ca.add_argument("amount")
    ca.add_argument("--method", choices=("card", "crypto"), default="card")
    ca.add_argument("--config")
    c.set_defaults(func=cmd_credits)

    mo = sub.add_parser("models", help="the model catalog as a table")
    mo.add_argument("--config")
    mo.set_defaults(func=cmd_models)

    co = sub.add_parser("cost", help="direct vs credits vs BYOK for a workload (SPEC §5.4)")
    co.add_argument("--model", required=True)
    co.add_argument("--input-tokens", type=_count, required=True)
    co.add_argument("--output-tokens", type=_count, required=True)
    co.add_argument("--requests", type=_count)
    co.add_argument("--byok-discount", type=_percent, default=0)
    co.add_argument("--cached-input-tokens", type=_count, default=0,
                    help="of the input tokens, those read from the prompt cache")
    co.add_argument("--cache-write-tokens", type=_count, default=0,
                    help="of the input tokens, those written to the prompt cache")
    co.add_argument("--config")
    co.set_defaults(func=cmd_cost)

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
    except (ConfigError, StartupError) as exc:
        # One line that names the cause and the fix; the traceback only at --log-level DEBUG.
        log.debug("start-up refused", exc_info=True)
        line = " ".join(str(exc).split())
        if isinstance(exc, ConfigError):
            line = "configuration refused: " + line
        if getattr(args, "status_fd", None) is not None:
            _tell(args.status_fd, "refused " + line)  # a worker: its supervisor says it
        else:
            print(f"edgeproxy: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
