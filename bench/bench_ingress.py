"""Per-request CPU of each client dialect's codec (issue 10: <= 30 µs decode + encode), sans-IO.

    python bench/bench_ingress.py

Each codec of `edgeproxy/ingress/` on two typical requests: "text", a five-turn conversation of
~1.5 KB with a system prompt, and "tools", the same with one tool definition and a round trip
after it: the assistant's call, the tool's result (the legacy completions dialect has no turns and no tools: one prompt of the same
size; embeddings: four short strings). Per request and dialect:
  decode  client bytes -> Decoded, plus what the pipeline then needs for an openai upstream:
          `Decoded.openai_body()` for every dialect but OpenAI chat, whose bytes pass through;
  encode  a canonical chat.completion (the text answer, or for "tools" a tool call) -> the
          dialect's body (embeddings: the upstream's object with 4 vectors of 1536 floats, which
          pass through as they came, and without them: the codec's own work);
  stream  a new stream encoder, a 50-chunk answer one chunk a call (as upstream reads arrive),
          then finish(usage); shown per stream and per chunk (the stream's cost / 50).
Each figure is the median over --repeats runs of the mean process CPU time per call of one run
(about --run-ms long); "× chat" is decode + encode over OpenAI chat's for the same request.
"""

from __future__ import annotations

import argparse
import platform
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import orjson
from _timing import cpu_name, per_call_ns  # bench/ is on sys.path when run as a script

from edgeproxy.billing.ledger import KeyRow
from edgeproxy.billing.service import AccountState, Caller
from edgeproxy.gateway import Generation
from edgeproxy.ingress import anthropic_messages, completions, embeddings, openai_chat, responses
from edgeproxy.ingress.base import Codec
from edgeproxy.protocols.openai import OpenAIAdapter

TARGET_US = 30.0
MODEL = "openai/gpt-4o-mini"
HEADERS = {"content-type": "application/json"}

# --------------------------------------------------------------------------- requests

SYSTEM = (
    "You are a concise travel assistant for a small agency. Answer in plain prose, name prices in "
    "euros, and say so when you are unsure. Do not invent opening hours or timetables."
)
TURNS = [  # (role, text): user and assistant alternating, the user's last
    ("user", "We are two adults flying into Lisbon on a Thursday evening in late April and leaving "
             "on the Monday morning. We like walking, food markets and old tiled buildings, and "
             "we would rather not rent a car. Which neighbourhood should we stay in?"),
    ("assistant", "For three nights without a car, stay in Baixa or Chiado: both are flat by "
                  "Lisbon's standards, close to the metro and the river, and within a walk of "
                  "Alfama's tiled streets. Príncipe Real is quieter and greener but uphill from "
                  "everything, which matters at the end of a long day."),
    ("user", "Chiado sounds good. Can you sketch the Friday for us? We would like to see the "
             "tile museum and eat somewhere with grilled fish, nothing too formal."),
    ("assistant", "Morning: take bus 759 or a taxi to the National Tile Museum in the Madre de "
                  "Deus convent and give it two hours. Lunch: walk or ride back to the Time Out "
                  "Market at Cais do Sodré for a quick plate. Afternoon: the Santa Justa lift, "
                  "then the ruins of the Carmo convent. Evening: grilled sardines or sea bream at "
                  "one of the small places around Rua dos Correeiros."),
    ("user", "Perfect. And on Saturday we would like a day trip. Sintra or Cascais, and how do "
             "we get there by train?"),
]
TOOL = {
    "name": "get_weather",
    "description": "The weather forecast for a city on a given date.",
    "schema": {
        "type": "object",
        "properties": {
            "city": {"type": "string", "description": "City name"},
            "date": {"type": "string", "description": "ISO date, e.g. 2026-04-25"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        },
        "required": ["city", "date"],
    },
}
CHECK = "Let me check the forecast for Sintra first."
TOOL_ID = "call_7Hq2mZ4pXc"
TOOL_ARGS = {"city": "Sintra", "date": "2026-04-25", "unit": "celsius"}
TOOL_OUTPUT = '{"high_c": 19, "low_c": 11, "sky": "cloudy with sun in the afternoon", "rain_mm": 1}'


def chat_request(tools: bool) -> dict[str, Any]:
    messages: list[dict[str, Any]] = [{"role": "system", "content": SYSTEM}]
    messages += [{"role": role, "content": text} for role, text in TURNS]
    doc: dict[str, Any] = {"model": MODEL, "messages": messages, "max_tokens": 512,
                           "temperature": 0.7}
    if tools:
        messages += [
            {"role": "assistant", "content": CHECK, "tool_calls": [{
                "id": TOOL_ID, "type": "function",
                "function": {"name": TOOL["name"], "arguments": orjson.dumps(TOOL_ARGS).decode()},
            }]},
            {"role": "tool", "tool_call_id": TOOL_ID, "content": TOOL_OUTPUT},
        ]
        doc["tools"] = [{"type": "function", "function": {
            "name": TOOL["name"], "description": TOOL["description"], "parameters": TOOL["schema"],
        }}]
    return doc


def anthropic_request(tools: bool) -> dict[str, Any]:
    messages: list[dict[str, Any]] = [{"role": role, "content": text} for role, text in TURNS]
    doc: dict[str, Any] = {"model": MODEL, "system": SYSTEM, "messages": messages,
                           "max_tokens": 512, "temperature": 0.7}
    if tools:
        messages += [
            {"role": "assistant", "content": [
                {"type": "text", "text": CHECK},
                {"type": "tool_use", "id": TOOL_ID, "name": TOOL["name"], "input": TOOL_ARGS},
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": TOOL_ID, "content": TOOL_OUTPUT},
            ]},
        ]
        doc["tools"] = [{"name": TOOL["name"], "description": TOOL["description"],
                         "input_schema": TOOL["schema"]}]
    return doc


def responses_request(tools: bool) -> dict[str, Any]:
    # User turns as "easy" input messages, the assistant's earlier answers replayed as the
    # output items the API returned (what the openai SDK's users send back).
    items: list[dict[str, Any]] = []
    for i, (role, text) in enumerate(TURNS):
        if role == "user":
            items.append({"role": "user", "content": text})
        else:
            items.append({"type": "message", "id": f"msg_{i}", "role": "assistant",
                          "status": "completed",
                          "content": [{"type": "output_text", "text": text, "annotations": []}]})
    doc: dict[str, Any] = {"model": MODEL, "instructions": SYSTEM, "input": items,
                           "max_output_tokens": 512, "temperature": 0.7}
    if tools:
        items += [
            {"type": "message", "id": "msg_9", "role": "assistant", "status": "completed",
             "content": [{"type": "output_text", "text": CHECK, "annotations": []}]},
            {"type": "function_call", "id": "fc_1", "call_id": TOOL_ID, "name": TOOL["name"],
             "arguments": orjson.dumps(TOOL_ARGS).decode(), "status": "completed"},
            {"type": "function_call_output", "call_id": TOOL_ID, "output": TOOL_OUTPUT},
        ]
        doc["tools"] = [{"type": "function", "name": TOOL["name"],
                         "description": TOOL["description"], "parameters": TOOL["schema"]}]
    return doc


def completions_request() -> dict[str, Any]:
    prompt = SYSTEM + "\n\n" + "\n\n".join(f"{role}: {text}" for role, text in TURNS)
    return {"model": MODEL, "prompt": prompt + "\n\nassistant:", "max_tokens": 512,
            "temperature": 0.7}


def embeddings_request() -> dict[str, Any]:
    return {"model": "openai/text-embedding-3-small", "input": [
        "grilled sardines near the river", "tile museum opening hours",
        "train from Rossio to Sintra", "a quiet hotel in Chiado",
    ]}


# --------------------------------------------------------------------------- canonical answers

ANSWER = (
    "Take Sintra: the train leaves Rossio station every 20 minutes and takes about 40 minutes; a "
    "return ticket costs under five euros with a Viva Viagem card. Start at the Pena Palace before "
    "the crowds, walk down through the park to the Moorish Castle, and have lunch in the old town. "
    "Cascais is the easier beach day, from Cais do Sodré, if the weather turns warm."
)
USAGE = {
    "prompt_tokens": 412, "completion_tokens": 96, "total_tokens": 508, "cost": 0.0001194,
    "is_byok": False, "prompt_tokens_details": {"cached_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 0},
}


def result(message: dict[str, Any], finish: str) -> dict[str, Any]:
    """A canonical chat.completion, framing fields and usage filled in as the pipeline does."""
    return {
        "id": "gen-1764000000-abc", "object": "chat.completion", "created": 1764000000,
        "model": MODEL, "provider": "openai",
        "choices": [{"index": 0, "message": message, "finish_reason": finish,
                     "native_finish_reason": finish}],
        "usage": USAGE, "system_fingerprint": "fp_1",
    }


TEXT_RESULT = result({"role": "assistant", "content": ANSWER}, "stop")
TOOL_RESULT = result({"role": "assistant", "content": None, "tool_calls": [{
    "id": TOOL_ID, "type": "function",
    "function": {"name": TOOL["name"], "arguments": orjson.dumps(TOOL_ARGS).decode()},
}]}, "tool_calls")


def embeddings_result(dims: int) -> dict[str, Any]:
    """The upstream's object as the openai adapter hands it on (`data` left as the raw JSON the
    upstream sent, floats as OpenAI prints them), with usage as the pipeline bills it."""
    rnd = random.Random(1)
    data = [{"object": "embedding", "index": i,
             "embedding": [round(rnd.uniform(-0.08, 0.08), 10) for _ in range(dims)]}
            for i in range(4)]
    upstream = {"object": "list", "data": data, "model": "text-embedding-3-small",
                "usage": {"prompt_tokens": 24, "total_tokens": 24}}
    out = OpenAIAdapter().parse_embeddings(200, orjson.dumps(upstream))
    out["usage"] = {"prompt_tokens": 24, "total_tokens": 24, "completion_tokens": 0,
                    "cost": 0.00000048, "is_byok": False}
    return out


STREAM_CHUNKS = 50
# The embeddings case whose encode is mostly the JSON of the upstream's vectors, which the codec
# passes through: shown, but the target is about the codecs' own work (the "no vectors" row).
VECTORS = "4 × 1536 floats"


def split(text: str, n: int) -> list[str]:
    """`text` in `n` consecutive pieces of near-equal length (tokens, as a stream brings them)."""
    return [text[i * len(text) // n:(i + 1) * len(text) // n] for i in range(n)]


def _choice(delta: dict[str, Any], finish: str | None = None) -> list[dict[str, Any]]:
    choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish}
    if finish is not None:
        choice["native_finish_reason"] = finish
    return [{"choices": [choice]}]


def text_stream() -> list[list[dict[str, Any]]]:
    """The 50 canonical chunks of a text answer, one list per upstream read: the role-only
    opening, 48 pieces of text, the finish."""
    return ([_choice({"role": "assistant", "content": ""})]
            + [_choice({"content": p}) for p in split(ANSWER, STREAM_CHUNKS - 2)]
            + [_choice({}, "stop")])


def tool_stream() -> list[list[dict[str, Any]]]:
    """The 50 canonical chunks of a tool call: the opening, the call's head, 47 pieces of its
    arguments, the finish."""
    head = {"index": 0, "id": TOOL_ID, "type": "function",
            "function": {"name": TOOL["name"], "arguments": ""}}
    return ([_choice({"role": "assistant", "content": None})]
            + [_choice({"tool_calls": [head]})]
            + [_choice({"tool_calls": [{"index": 0, "function": {"arguments": p}}]})
               for p in split(orjson.dumps(TOOL_ARGS).decode(), STREAM_CHUNKS - 3)]
            + [_choice({}, "tool_calls")])


# --------------------------------------------------------------------------- cases


class Case:
    """One dialect on one request: its body, the canonical answer and stream to encode."""

    def __init__(self, dialect: str, codec: Codec, variant: str, request: dict[str, Any],
                 answer: dict[str, Any], chunks: list[list[dict[str, Any]]] | None) -> None:
        self.dialect, self.codec, self.variant = dialect, codec, variant
        self.body = orjson.dumps(request)
        self.answer = answer
        self.chunks = chunks
        key = KeyRow("k1", "acct", "h", "sk-ep", "bench", None, 0, False, False, 0)
        # As handlers.serve builds it: the serving model and provider, the dialect's echo.
        self.gen = Generation(MODEL, chunks is not None, None, Caller(key, AccountState("acct")))
        self.gen.provider = "openai"
        self.gen.echo = codec.decode(self.body, HEADERS).echo

    def decode(self) -> Callable[[], Any]:
        codec, body = self.codec, self.body
        if self.dialect == "openai_chat":
            return lambda: codec.decode(body, HEADERS)  # the client's bytes go upstream as sent
        return lambda: codec.decode(body, HEADERS).openai_body()

    def encode(self) -> Callable[[], Any]:
        codec, answer, gen = self.codec, self.answer, self.gen
        return lambda: codec.encode(answer, gen)

    def stream(self) -> Callable[[], Any]:
        codec, gen, chunks = self.codec, self.gen, self.chunks
        assert chunks is not None

        def one_stream() -> None:
            enc = codec.stream_encoder(gen)
            for chunk in chunks:
                enc.chunks(chunk)
            enc.finish(USAGE)

        return one_stream


def cases() -> list[Case]:
    text, tools = text_stream(), tool_stream()
    out = []
    for name, codec, build in (
        ("openai_chat", openai_chat.CODEC, chat_request),
        ("anthropic_messages", anthropic_messages.CODEC, anthropic_request),
        ("responses", responses.CODEC, responses_request),
    ):
        out.append(Case(name, codec, "text", build(False), TEXT_RESULT, text))
        out.append(Case(name, codec, "tools", build(True), TOOL_RESULT, tools))
    out.append(Case("completions", completions.CODEC, "text", completions_request(),
                    TEXT_RESULT, text))
    # The vectors pass through as they came: the second row is the codec's own work.
    for variant, dims in ((VECTORS, 1536), ("no vectors", 0)):
        out.append(Case("embeddings", embeddings.CODEC, variant, embeddings_request(),
                        embeddings_result(dims), None))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--run-ms", type=float, default=100.0, help="length of one timed run")
    opts = ap.parse_args()

    def us(fn: Callable[[], Any]) -> float:
        return per_call_ns(fn, (), opts.run_ms, opts.repeats, time.process_time_ns) / 1000

    print(f"Python {platform.python_version()} on {platform.machine()}, {cpu_name()}")
    print(f"median of {opts.repeats} runs of ~{opts.run_ms:.0f} ms of process CPU each, µs\n")
    rows = []
    chat: dict[str, float] = {}
    for case in cases():
        dec, enc = us(case.decode()), us(case.encode())
        stream = us(case.stream()) if case.chunks is not None else None
        total = dec + enc
        if case.dialect == "openai_chat":
            chat[case.variant] = total
        ratio = total / chat[case.variant] if case.variant in chat else None
        rows.append((case, dec, enc, total, ratio, stream))
    print(f"| dialect | case | body (B) | decode | encode | decode + encode | × chat "
          f"| stream: per chunk | per stream ({STREAM_CHUNKS} chunks) | ≤ {TARGET_US:.0f} µs |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for case, dec, enc, total, ratio, stream in rows:
        per_chunk = "—" if stream is None else f"{stream / STREAM_CHUNKS:.2f}"
        print(f"| {case.dialect} | {case.variant} | {len(case.body)} | {dec:.1f} | {enc:.1f} "
              f"| {total:.1f} | {'—' if ratio is None else f'{ratio:.2f}'} | {per_chunk} "
              f"| {'—' if stream is None else f'{stream:.0f}'} "
              f"| {verdict(case, total)} |")
    missed = [f"{c.dialect} {c.variant}" for c, _, _, total, _, _ in rows
              if total > TARGET_US and c.variant != VECTORS]
    print(f"\ntarget (decode + encode <= {TARGET_US:.0f} µs, the codecs' own work):",
          f"MISSED by {', '.join(missed)}" if missed else "met")
    return 1 if missed else 0


def verdict(case: Case, total: float) -> str:
    if total <= TARGET_US:
        return "met"
    return "over (the vectors' JSON)" if case.variant == VECTORS else "MISSED"


if __name__ == "__main__":
    sys.exit(main())
