"""The `openai` wire format: a near-zero-copy pass-through (SPEC §3).

The client's body is split into its top-level members as raw JSON slices (msgspec.Raw); only `model`
and `stream_options` are replaced and the OpenRouter-only members removed, then the slices are joined
again. Messages and tools are never decoded into Python objects on this path.
"""

from __future__ import annotations

from typing import Any

import msgspec
import orjson

from ..errors import UpstreamProtocolError, UpstreamStatusError
from .base import SSEParser, Target, UpstreamCall

__all__ = ["OpenAIAdapter", "error_message"]

# Request members that only the gateway understands; OpenAI itself rejects unknown arguments.
_GATEWAY_ONLY = ("models", "route", "provider", "transforms", "usage", "plugins")
_INCLUDE_USAGE = msgspec.Raw(b'{"include_usage":true}')
_top_decoder = msgspec.json.Decoder(dict[str, msgspec.Raw])
_encoder = msgspec.json.Encoder()
_JSON = "application/json"


def error_message(data: bytes, limit: int = 2000) -> tuple[str, Any]:
    """An OpenAI-style error body -> (message, raw error object or text)."""
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        text = data[:limit].decode("utf-8", "replace")
        return text.strip() or "empty body", text
    err = doc.get("error") if isinstance(doc, dict) else None
    if isinstance(err, dict):
        msg = err.get("message") or err.get("type") or "error"
        return str(msg)[:limit], err
    if isinstance(err, str):
        return err[:limit], doc
    return str(doc)[:limit], doc


def _members(body: bytes, target: Target) -> dict[str, msgspec.Raw]:
    """The client's top-level members as raw slices, the model rewritten, gateway-only removed."""
    top = _top_decoder.decode(body)
    for key in _GATEWAY_ONLY:
        top.pop(key, None)
    top["model"] = msgspec.Raw(_encoder.encode(target.model))
    return top


def _post(path: str, top: dict[str, msgspec.Raw], target: Target) -> UpstreamCall:
    headers = {"Content-Type": _JSON}
    if target.api_key:
        headers["Authorization"] = "Bearer " + target.api_key
    return UpstreamCall(target.base_url + path, headers, _encoder.encode(top))


class OpenAIAdapter:
    name = "openai"
    needs_dict = False

    def build_request(
        self, req: dict[str, Any] | None, body: bytes, target: Target, stream: bool
    ) -> UpstreamCall:
        top = _members(body, target)
        if stream:
            # Usage is always reported (SPEC §1.1), so the upstream is always asked for it.
            top["stream_options"] = _INCLUDE_USAGE
        else:
            top.pop("stream_options", None)
        return _post("/chat/completions", top, target)

    def forward(self, body: bytes, target: Target, stream: bool) -> UpstreamCall:
        return self.build_request(None, body, target, stream)

    def build_embeddings(self, body: bytes, target: Target) -> UpstreamCall:
        """The client's embeddings request ("Embeddings › Create embeddings") as it is, but for
        the model and the gateway-only members."""
        return _post("/embeddings", _members(body, target), target)

    def parse_embeddings(self, status: int, data: bytes) -> dict[str, Any]:
        """The upstream's embeddings object: `data` as the JSON the upstream sent (an
        orjson.Fragment, never parsed: four vectors of 1536 floats are ~80 KB) and `usage`, which
        billing reads (SPEC §5.3: per input token), with `completion_tokens` set to 0: an
        embedding generates none."""
        where = "upstream embeddings answer"
        try:
            top = _top_decoder.decode(data)
        except msgspec.ValidationError:
            raise UpstreamProtocolError(f"{where} is not a JSON object") from None
        except msgspec.DecodeError:
            raise UpstreamProtocolError(f"{where} is not valid JSON") from None
        vectors = top.get("data")
        if vectors is None or memoryview(vectors)[:1] != b"[":
            raise UpstreamProtocolError(
                f"{where} has no data list", raw=data[:500].decode("utf-8", "replace"))
        doc: dict[str, Any] = {"data": orjson.Fragment(bytes(vectors))}
        if "usage" in top:
            usage = doc["usage"] = msgspec.json.decode(top["usage"])
            if isinstance(usage, dict):
                usage["completion_tokens"] = 0
        return doc

    def parse_response(self, status: int, data: bytes) -> dict[str, Any]:
        try:
            doc = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise UpstreamProtocolError(
                f"upstream answered invalid JSON: {exc}", raw=data[:500].decode("utf-8", "replace")
            ) from None
        choices = doc.get("choices") if isinstance(doc, dict) else None
        if not isinstance(choices, list) or not all(isinstance(c, dict) for c in choices):
            raise UpstreamProtocolError(
                "upstream answer has no choices", raw=data[:500].decode("utf-8", "replace")
            )
        for c in choices:
            c.setdefault("native_finish_reason", c.get("finish_reason"))
        return doc

    def parse_error(self, status: int, data: bytes) -> tuple[str, Any]:
        return error_message(data)

    def effective_status(self, status: int, raw: Any) -> int:
        return status

    def stream_decoder(self) -> OpenAIStreamDecoder:
        return OpenAIStreamDecoder()


class OpenAIStreamDecoder:
    __slots__ = ("_done", "_sse")

    def __init__(self) -> None:
        self._sse = SSEParser()
        self._done = False

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        out = []
        for _event, payload in self._sse.feed(data):
            if self._done:
                continue
            if payload == b"[DONE]":
                self._done = True
                continue
            try:
                chunk = orjson.loads(payload)
            except orjson.JSONDecodeError:
                raise UpstreamProtocolError(
                    "upstream stream carried invalid JSON",
                    raw=payload[:500].decode("utf-8", "replace"),
                ) from None
            if not isinstance(chunk, dict):
                raise UpstreamProtocolError("upstream stream event is not an object", raw=chunk)
            if "error" in chunk and not chunk.get("choices"):
                msg, raw = error_message(payload)
                raise UpstreamStatusError(msg, raw=raw)
            choices = chunk.get("choices")
            if not isinstance(choices, list):
                raise UpstreamProtocolError("upstream chunk has no choices", raw=chunk)
            for c in choices:
                if isinstance(c, dict) and c.get("finish_reason") is not None:
                    c.setdefault("native_finish_reason", c["finish_reason"])
            out.append(chunk)
        return out

    def close(self) -> list[dict[str, Any]]:
        if not self._done:
            raise UpstreamProtocolError("upstream stream ended before [DONE]")
        return []
