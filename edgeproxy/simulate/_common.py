"""What the simulated providers share: options, state, pacing, faults and the fake model.

The protocol modules (``openai.py``, ``anthropic.py``, ``gemini.py``) only parse their wire format
into a `Conversation` and render a `Plan`; everything that is the same for every vendor is here:

- `SimOptions`, and `Sim`, the run-time state of one simulator (history, stats, seeded PRNG);
- `endpoint()`, the guard every API route runs through: record → latency → fault → handler,
  counting completed, cancelled and injected responses;
- the faults that do not depend on the wire format: hang, reset, garbage, severed bodies;
- `make_plan()`, the sans-IO "model": what to answer (text, tool call, JSON, safety block), with
  how many tokens and why it stopped. Tokens are whitespace-separated words, on both sides.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import re
import socket
import string
import struct
import time
import zlib
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import msgspec
import orjson
from aiohttp import web

__all__ = [
    "BAD_JSON",
    "FAULTS",
    "SIM_KEY",
    "Conversation",
    "Dialect",
    "Invalid",
    "Pacer",
    "Plan",
    "Severed",
    "Sim",
    "SimOptions",
    "Stats",
    "count_tokens",
    "endpoint",
    "introspection_routes",
    "json_response",
    "make_plan",
    "nap",
    "open_sse",
    "send_truncated",
    "sever",
]

Fault = Literal["", "hang", "reset", "garbage", "drop", "status", "midstream_error"]
FAULTS: tuple[str, ...] = ("", "hang", "reset", "garbage", "drop", "status", "midstream_error")
NonNegative = Annotated[float, msgspec.Meta(ge=0)]


class SimOptions(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """How a simulated provider behaves; every field can be changed at run time (/_sim/config).

    latency_ms: wait before the response headers. tokens_per_s: 0 = no pacing, else stream tokens
    1/tps apart and delay non-streaming answers by n_tokens/tps. error_rate: fraction of requests
    answered with the protocol's overload error (openai 500, anthropic 529, gemini 503).
    seed: seeds the PRNG (error rolls, ids). api_key: when set, another key gets the protocol's
    authentication error. fault: "" | hang | reset | garbage | drop | status | midstream_error,
    shaped by drop_after (content chunks before a drop), fault_status and retry_after (the
    Retry-After of a 429). reply: fixed answer text; otherwise "Echo: <user words…>" padded to
    max_reply_tokens. models: ids listed by the models endpoint (a default set when empty).
    cached_tokens / cache_write_tokens: prompt tokens every answer reports as read from / written
    to the provider's prompt cache (at most the prompt), in the protocol's own usage fields
    (Gemini has no write count); the anthropic simulator otherwise caches what `cache_control`
    marks by itself (anthropic.py `_cache_use`).
    """

    latency_ms: NonNegative = 0.0
    tokens_per_s: NonNegative = 0.0
    error_rate: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.0
    seed: int | None = None
    api_key: str | None = None
    fault: Fault = ""
    drop_after: Annotated[int, msgspec.Meta(ge=0)] = 3
    fault_status: Annotated[int, msgspec.Meta(ge=400, le=599)] = 500
    retry_after: Annotated[int, msgspec.Meta(ge=0)] = 1
    reply: str | None = None
    max_reply_tokens: Annotated[int, msgspec.Meta(ge=1)] = 16
    models: list[str] = msgspec.field(default_factory=list)
    cached_tokens: Annotated[int, msgspec.Meta(ge=0)] = 0
    cache_write_tokens: Annotated[int, msgspec.Meta(ge=0)] = 0

    def cache_split(self, prompt_tokens: int) -> tuple[int, int]:
        """(read, written) of a prompt of `prompt_tokens`: the configured counts, clamped."""
        read = min(self.cached_tokens, prompt_tokens)
        return read, min(self.cache_write_tokens, prompt_tokens - read)


class Stats(msgspec.Struct):
    """Counters of /_sim/stats. `completed` counts responses sent in full (any status),
    `cancelled` the ones whose client went away first, `errors_injected` every fault applied."""

    requests: int = 0
    completed: int = 0
    cancelled: int = 0
    errors_injected: int = 0
    active: int = 0


BAD_JSON: Any = object()  # the body of a request that is not JSON
_ID_ALPHABET = string.ascii_letters + string.digits


class Sim:
    """The state of one simulator: options, the last 100 requests, counters and the PRNG."""

    def __init__(self, protocol: str, opts: SimOptions) -> None:
        self.protocol = protocol
        self.opts = opts
        self.history: deque[dict[str, Any]] = deque(maxlen=100)
        self.stats = Stats()
        self.rng = random.Random(opts.seed)
        # Prompt prefixes the provider holds in its cache: digest -> expiry (time.monotonic()).
        self.prompt_cache: dict[bytes, float] = {}

    def configure(self, patch: dict[str, Any]) -> SimOptions:
        """Merge `patch` into the options; raises msgspec.ValidationError on a bad field."""
        merged = {**msgspec.structs.asdict(self.opts), **patch}
        opts = msgspec.convert(merged, SimOptions)
        if opts.seed != self.opts.seed:
            self.rng.seed(opts.seed)
        self.opts = opts
        return opts

    def reset(self) -> None:
        """Forget history, counters and the prompt cache and restart the PRNG (in-flight requests
        stay active)."""
        self.history.clear()
        self.stats = Stats(active=self.stats.active)
        self.rng.seed(self.opts.seed)
        self.prompt_cache.clear()

    def record(self, request: web.Request, raw: bytes, body: Any) -> None:
        self.history.append(
            {
                "method": request.method,
                "path": request.path,
                "query": dict(request.query),
                "headers": {str(k): v for k, v in request.headers.items()},
                "body": raw.decode("utf-8", "replace") if body is BAD_JSON else body,
            }
        )

    def new_id(self, prefix: str, n: int = 24) -> str:
        return prefix + "".join(self.rng.choices(_ID_ALPHABET, k=n))

    def roll_fault(self) -> str:
        """The fault to apply before the handler runs: a configured one, an error_rate roll
        ("overloaded") or "" for none. drop and midstream_error act later, see `cut()`."""
        fault = self.opts.fault
        if fault in ("hang", "reset", "garbage", "status"):
            return fault
        if self.opts.error_rate > 0 and self.rng.random() < self.opts.error_rate:
            return "overloaded"
        return ""

    def cut(self) -> int | None:
        """With a drop or midstream_error fault, how many content chunks go out before it."""
        if self.opts.fault in ("drop", "midstream_error"):
            self.stats.errors_injected += 1
            return self.opts.drop_after
        return None


SIM_KEY = web.AppKey("edgeproxy.simulate.sim", Sim)


# ---------------------------------------------------------------------------------------------
# The fake model (sans-IO)

_PIECE = re.compile(r"\s*\S+")
_WORD = re.compile(r"[a-z0-9_]+")
_FILLER = (
    "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november "
    "oscar papa quebec romeo sierra tango uniform victor whiskey xray yankee zulu"
).split()
TOOL_TRIGGERS = frozenset({"weather", "call"})


def count_tokens(text: str) -> int:
    """Tokens of the simulators: whitespace-separated words."""
    return len(text.split())


def pieces(text: str) -> list[str]:
    """Split text into tokens that keep their leading whitespace, so that "".join() == text."""
    found = _PIECE.findall(text)
    tail = len(text) - len(text.rstrip())
    if found and tail:
        found[-1] += text[-tail:]
    return found


@dataclass(slots=True)
class Conversation:
    """A request reduced to what the fake model looks at, whatever the wire format."""

    prompt_texts: list[str] = field(default_factory=list)
    last_role: str = "user"  # user | assistant | system | tool
    last_user_text: str = ""
    tool_result: str = ""  # the content of the last turn when last_role is "tool"
    tools: list[tuple[str, Any]] = field(default_factory=list)  # (name, JSON schema)
    tool_choice: str = "auto"  # auto | none | required
    forced_tool: str | None = None
    json_schema: Any = None
    json_mode: bool = False
    reasoning: bool = False  # the request turns the model's thinking on
    max_tokens: int | None = None
    stop: list[str] = field(default_factory=list)
    # Anthropic: the prompt as its prompt cache sees it, block by block (see anthropic.py).
    cache_blocks: list[tuple[bytes, int, float]] = field(default_factory=list)

    @property
    def prompt_tokens(self) -> int:
        return sum(count_tokens(t) for t in self.prompt_texts)


@dataclass(slots=True)
class Plan:
    """The answer: text pieces or one tool call, and the reason it ended.

    finish: stop | stop_sequence | length | tool | safety (each protocol maps it to its own word).
    """

    prompt_tokens: int
    finish: str = "stop"
    text: str = ""
    pieces: list[str] = field(default_factory=list)
    stop_sequence: str | None = None
    tool_name: str = ""
    tool_args: Any = None
    tool_json: str = ""
    tool_pieces: list[str] = field(default_factory=list)
    thought: str = ""  # the model's reasoning, when the request turned thinking on

    @property
    def thought_tokens(self) -> int:
        """Reasoning tokens, which every vendor bills as output on top of completion_tokens."""
        return count_tokens(self.thought)

    @property
    def completion_tokens(self) -> int:
        if self.finish == "tool":
            return len(self.tool_pieces) + 1  # the name and each argument piece
        return len(self.pieces)


def echo(text: str, n: int) -> str:
    """ "Echo: <first user words>" padded with filler words chosen by a CRC of the text."""
    words = ["Echo:", *text.split()[:8]]
    state = zlib.crc32(text.encode())
    while len(words) < n:
        state = (state * 1103515245 + 12345) & 0x7FFFFFFF  # an LCG: same text, same words
        words.append(_FILLER[state % len(_FILLER)])
    return " ".join(words[:n])


def sample(schema: Any, depth: int = 0) -> Any:
    """A small value that matches a JSON schema: required properties only (all of them when the
    schema lists none), strings "test", numbers 1, booleans true, the first enum value."""
    if not isinstance(schema, dict) or depth > 8:
        return "test"
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        if isinstance(schema.get(key), list) and schema[key]:
            return sample(schema[key][0], depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    kind = str(kind).lower() if kind else ("object" if "properties" in schema else "string")
    if kind == "object":
        props = schema.get("properties")
        props = props if isinstance(props, dict) else {}
        names = schema.get("required")
        names = names if isinstance(names, list) else list(props)
        return {n: sample(props.get(n), depth + 1) for n in names if isinstance(n, str)}
    if kind == "array":
        return [sample(schema.get("items"), depth + 1)] * max(1, int(schema.get("minItems", 1)))
    if kind in ("integer", "number"):
        low = schema.get("minimum")
        return low if isinstance(low, int | float) and low > 1 else 1
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    return "test"


def _split(text: str) -> list[str]:
    """Tool arguments in 2–4 pieces, as vendors stream them (never fewer than 2)."""
    n = max(2, min(4, len(text) // 8 + 1))
    size = math.ceil(len(text) / n)
    return [text[i : i + size] for i in range(0, len(text), size)]


def _wants_tool(conv: Conversation) -> bool:
    if not conv.tools or conv.tool_choice == "none" or conv.last_role != "user":
        return False
    if conv.tool_choice == "required" or conv.forced_tool:
        return True
    return not TOOL_TRIGGERS.isdisjoint(_WORD.findall(conv.last_user_text.lower()))


def make_plan(conv: Conversation, opts: SimOptions, *, safety_word: str | None = None) -> Plan:
    """Decide the answer to a conversation. Pure: the same request gives the same plan."""
    plan = Plan(prompt_tokens=conv.prompt_tokens)
    if conv.reasoning:
        plan.thought = f"Considering: {conv.last_user_text}".strip()
    if safety_word and conv.last_role == "user" and safety_word in conv.last_user_text.lower():
        plan.finish = "safety"
        return plan
    if _wants_tool(conv):
        schemas = dict(conv.tools)
        plan.finish = "tool"
        plan.tool_name = conv.forced_tool or conv.tools[0][0]
        plan.tool_args = sample(schemas.get(plan.tool_name, {}))
        if not isinstance(plan.tool_args, dict):
            plan.tool_args = {}
        plan.tool_json = orjson.dumps(plan.tool_args).decode()
        plan.tool_pieces = _split(plan.tool_json)
        return plan
    if conv.last_role == "tool":
        text = f"The tool returned: {conv.tool_result}"
    elif conv.json_schema is not None:
        text = orjson.dumps(sample(conv.json_schema), option=orjson.OPT_INDENT_2).decode()
    elif conv.json_mode:
        reply = opts.reply or echo(conv.last_user_text, opts.max_reply_tokens)
        text = orjson.dumps({"reply": reply}, option=orjson.OPT_INDENT_2).decode()
    elif opts.reply is not None:
        text = opts.reply
    else:
        text = echo(conv.last_user_text, opts.max_reply_tokens)
    # A stop sequence ends the text where it first occurs; max_tokens may end it earlier.
    hits = [(text.find(s), s) for s in conv.stop if s and s in text]
    if hits:
        at, plan.stop_sequence = min(hits)
        text, plan.finish = text[:at], "stop_sequence"
    plan.pieces = pieces(text)
    if conv.max_tokens is not None and len(plan.pieces) > conv.max_tokens:
        del plan.pieces[conv.max_tokens :]
        plan.finish, plan.stop_sequence = "length", None
    plan.text = "".join(plan.pieces)
    return plan


# ---------------------------------------------------------------------------------------------
# I/O helpers


class Invalid(Exception):
    """A request the vendor would refuse; each protocol renders it as its own error body."""

    def __init__(self, message: str, status: int = 400, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.extra = extra


class Severed(Exception):
    """The simulator closed the connection on purpose (reset, drop): nothing more to send."""


def json_response(obj: Any, status: int = 200, headers: dict[str, str] | None = None):
    return web.Response(
        body=orjson.dumps(obj), status=status, content_type="application/json", headers=headers
    )


async def open_sse(request: web.Request, headers: dict[str, str] | None = None):
    """Start a Server-Sent Events response (text/event-stream, not cached, not buffered)."""
    resp = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream; charset=utf-8",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
            **(headers or {}),
        }
    )
    await resp.prepare(request)
    return resp


def _gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


async def nap(request: web.Request, seconds: float) -> None:
    """Sleep, but raise ConnectionResetError as soon as the client has gone away, so that a
    paced or hung response is counted as cancelled even without handler cancellation."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while True:
        if _gone(request):
            raise ConnectionResetError("client went away")
        left = deadline - loop.time()
        if left <= 0:
            return
        await asyncio.sleep(min(left, 0.05))


class Pacer:
    """Spaces stream chunks 1/tokens_per_s apart, on a fixed schedule so sleeps do not drift."""

    def __init__(self, request: web.Request, tokens_per_s: float) -> None:
        self.request = request
        self.interval = 1.0 / tokens_per_s if tokens_per_s > 0 else 0.0
        self.start: float | None = None
        self.n = 0

    async def tick(self) -> None:
        if not self.interval:
            return
        now = asyncio.get_running_loop().time()
        if self.start is None:
            self.start = now
            return
        self.n += 1
        await nap(self.request, self.start + self.n * self.interval - now)


def sever(request: web.Request) -> None:
    """Close the connection after what was written so far (no terminator): raises Severed."""
    if request.transport is not None:
        request.transport.close()
    raise Severed


def reset(request: web.Request) -> None:
    """Abort the connection with a TCP RST (SO_LINGER 0), before any response byte."""
    transport = request.transport
    if transport is not None:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
    raise Severed


async def send_truncated(request: web.Request, resp: web.Response) -> None:
    """Send a response's headers (with its full Content-Length) and half its body, then close."""
    body = resp.body if isinstance(resp.body, bytes) else b""
    out = web.StreamResponse(status=resp.status, headers=resp.headers)
    out.content_length = len(body)
    await out.prepare(request)
    await out.write(body[: len(body) // 2])
    sever(request)


_GARBAGE_JSON = b"<html><head><title>502 Bad Gateway</title></head><body>upstream</body></html>\n"
_GARBAGE_SSE = (
    b'data: {"id": "x", "choices": [{"delta": {"content": "tru\n\n'
    b"data: \xff\xfe not json at all\n\n"
    b"event: ???\ndata: [[[[\n\n"
)


@dataclass(frozen=True, slots=True)
class Dialect:
    """What the guard needs from a protocol: its error body, its overload status, and whether
    a request asks for a stream."""

    error: Callable[[int, str | None], web.Response]
    overloaded_status: int
    wants_stream: Callable[[web.Request, Any], bool]


Handler = Callable[[web.Request, Any], Awaitable[web.StreamResponse]]


async def _inject(request: web.Request, body: Any, sim: Sim, dialect: Dialect, fault: str):
    opts = sim.opts
    if fault == "hang":
        await nap(request, math.inf)  # returns only by raising, when the client leaves
    if fault == "reset":
        reset(request)
    if fault == "garbage":
        if dialect.wants_stream(request, body):
            resp = await open_sse(request)
            await resp.write(_GARBAGE_SSE)
            return resp
        return web.Response(body=_GARBAGE_JSON, content_type="application/json")
    if fault == "status":
        resp = dialect.error(opts.fault_status, None)
        if opts.fault_status == 429:
            resp.headers["Retry-After"] = str(opts.retry_after)
        return resp
    return dialect.error(dialect.overloaded_status, None)


def endpoint(sim: Sim, dialect: Dialect, handler: Handler):
    """Wrap a protocol handler: record the request, wait latency_ms, apply a fault or run the
    handler, send the response, and count the outcome. A client that goes away mid-response
    (a write fails, a nap notices, or the task is cancelled) is counted, never logged."""

    async def handle(request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = BAD_JSON
        sim.record(request, raw, body)
        stats = sim.stats
        stats.requests += 1
        stats.active += 1
        try:
            if sim.opts.latency_ms:
                await nap(request, sim.opts.latency_ms / 1000)
            fault = sim.roll_fault()
            if fault:
                stats.errors_injected += 1
                resp = await _inject(request, body, sim, dialect, fault)
            else:
                try:
                    resp = await handler(request, body)
                except Invalid as exc:
                    resp = dialect.error(exc.status, exc.message)
            if not resp.prepared:
                await resp.prepare(request)
            await resp.write_eof()
            stats.completed += 1
            return resp
        except Severed:
            return web.Response(status=499)  # aiohttp's write of it fails quietly
        except ConnectionError:
            stats.cancelled += 1
            return web.Response(status=499)
        except asyncio.CancelledError:
            stats.cancelled += 1
            raise
        finally:
            stats.active -= 1

    return handle


def introspection_routes(sim: Sim) -> list[web.RouteDef]:
    """/_sim/requests, /_sim/stats, /_sim/config (GET, POST a partial SimOptions), /_sim/reset."""

    async def requests(_: web.Request) -> web.Response:
        return json_response(list(sim.history))

    async def stats(_: web.Request) -> web.Response:
        return json_response(msgspec.to_builtins(sim.stats))

    async def get_config(_: web.Request) -> web.Response:
        return json_response(msgspec.to_builtins(sim.opts))

    async def set_config(request: web.Request) -> web.Response:
        try:
            patch = orjson.loads(await request.read())
            if not isinstance(patch, dict):
                raise msgspec.ValidationError("expected a JSON object")
            opts = sim.configure(patch)
        except (orjson.JSONDecodeError, msgspec.ValidationError) as exc:
            return json_response({"error": str(exc)}, status=400)
        return json_response(msgspec.to_builtins(opts))

    async def do_reset(_: web.Request) -> web.Response:
        sim.reset()
        return json_response({"ok": True})

    return [
        web.get("/_sim/requests", requests),
        web.get("/_sim/stats", stats),
        web.get("/_sim/config", get_config),
        web.post("/_sim/config", set_config),
        web.post("/_sim/reset", do_reset),
    ]


def now() -> int:
    return int(time.time())
