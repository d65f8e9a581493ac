"""What translation costs over the openai pass-through (issue 3's numbers), sans-IO.

    python bench/bench_translation.py

Per protocol: the request path's translation work for one non-streaming request
(build_request + parse_response of a typical chat answer) and for one streamed chunk
(decoder.feed of one text-delta event, framing included), median of repeated runs. The
difference to the openai adapter is what translation adds; targets: <= 50 us per request and
<= 10 us per chunk. The wire bodies are the ones the simulators send, captured once at start.
"""

from __future__ import annotations

import statistics
import time

import orjson

from edgeproxy.protocols import adapter_for
from edgeproxy.protocols.base import Target

REQUEST = {
    "model": "x",
    "messages": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Write a haiku about the sea. " * 8},
    ],
    "max_tokens": 200,
    "temperature": 0.7,
}
BODY = orjson.dumps(REQUEST)
TEXT = "The sea is calm tonight, the tide is full, the moon lies fair upon the straits."

RESPONSES = {
    "openai": orjson.dumps({
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "x",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": TEXT},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 60, "completion_tokens": 20, "total_tokens": 80}}),
    "anthropic": orjson.dumps({
        "id": "msg_1", "type": "message", "role": "assistant", "model": "x",
        "content": [{"type": "text", "text": TEXT}], "stop_reason": "end_turn",
        "stop_sequence": None, "usage": {"input_tokens": 60, "output_tokens": 20}}),
    "gemini": orjson.dumps({
        "candidates": [{"content": {"role": "model", "parts": [{"text": TEXT}]},
                        "finishReason": "STOP", "index": 0}],
        "usageMetadata": {"promptTokenCount": 60, "candidatesTokenCount": 20,
                          "totalTokenCount": 80}}),
}
CHUNKS = {
    "openai": b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,'
              b'"model":"x","choices":[{"index":0,"delta":{"content":" tide"},'
              b'"finish_reason":null}]}\n\n',
    "anthropic": b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
                 b'"delta":{"type":"text_delta","text":" tide"}}\n\n',
    "gemini": b'data: {"candidates":[{"content":{"role":"model","parts":[{"text":" tide"}]},'
              b'"index":0}],"usageMetadata":{"promptTokenCount":60,"candidatesTokenCount":5,'
              b'"totalTokenCount":65}}\r\n\r\n',
}
PREFIX = {
    "openai": b"",
    "anthropic": b'event: message_start\ndata: {"type":"message_start","message":{"id":"m",'
                 b'"type":"message","role":"assistant","model":"x","content":[],'
                 b'"stop_reason":null,"usage":{"input_tokens":60,"output_tokens":1}}}\n\n'
                 b'event: content_block_start\ndata: {"type":"content_block_start","index":0,'
                 b'"content_block":{"type":"text","text":""}}\n\n',
    "gemini": b"",
}


def median_us(fn, n: int, repeats: int = 7) -> float:
    runs = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        runs.append((time.perf_counter() - t) / n * 1e6)
    return statistics.median(runs)


def main() -> int:
    target = Target("http://127.0.0.1:1/v1", "sk-x", "upstream-model", 4096)
    req_cost: dict[str, float] = {}
    chunk_cost: dict[str, float] = {}
    for proto in ("openai", "anthropic", "gemini"):
        a = adapter_for(proto)

        def one_request(a=a, proto=proto) -> None:
            d = orjson.loads(BODY) if a.needs_dict else None
            a.build_request(d, BODY, target, False)
            a.parse_response(200, RESPONSES[proto])

        req_cost[proto] = median_us(one_request, 5000)
        dec = a.stream_decoder()
        dec.feed(PREFIX[proto])
        chunk = CHUNKS[proto]
        chunk_cost[proto] = median_us(lambda dec=dec, chunk=chunk: dec.feed(chunk), 20000)
    print("| protocol | request: build + parse (µs) | over openai | streamed chunk (µs) | over openai |")
    print("|---|---|---|---|---|")
    for proto in req_cost:
        print(f"| {proto} | {req_cost[proto]:.1f} | {req_cost[proto] - req_cost['openai']:+.1f} | "
              f"{chunk_cost[proto]:.2f} | {chunk_cost[proto] - chunk_cost['openai']:+.2f} |")
    worst_req = max(req_cost[p] - req_cost["openai"] for p in ("anthropic", "gemini"))
    worst_chunk = max(chunk_cost[p] - chunk_cost["openai"] for p in ("anthropic", "gemini"))
    print(f"\ntargets: request <= 50 µs over openai: {'met' if worst_req <= 50 else 'NOT met'} "
          f"({worst_req:+.1f}); chunk <= 10 µs: {'met' if worst_chunk <= 10 else 'NOT met'} "
          f"({worst_chunk:+.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
