"""The aiohttp Application: routes under /v1 and /api/v1, the error middleware, and the
gateway's lifetime (upstream sessions closed on cleanup).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from aiohttp import web

from . import account_api, handlers
from .config import Config
from .errors import EdgeproxyError, error_body
from .gateway import Gateway
from .ingress import anthropic_messages, completions, embeddings, openai_chat, responses
from .listener import HANDLER_ARGS

__all__ = ["make_app"]

log = logging.getLogger("edgeproxy")
_JSON = "application/json"

def _error(request: web.Request, status: int, message: str,
           headers: dict[str, str] | None = None) -> web.Response:
    if "/messages" in request.path:
        # Anthropic clients read errors in Anthropic's shape only.
        err = EdgeproxyError(message)
        err.status = status
        body = anthropic_messages.CODEC.error_body(err)
    else:
        body = error_body(status, message)
    return web.Response(body=body, status=status, content_type=_JSON, headers=headers)


@web.middleware
async def error_middleware(request: web.Request, handler: handlers.Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except EdgeproxyError as exc:
        return web.Response(
            body=exc.to_body(), status=exc.status, content_type=_JSON, headers=exc.headers()
        )
    except web.HTTPException as exc:
        # aiohttp's own answers (unknown path, wrong method, body too large) in our error shape.
        if exc.status < 400:
            raise
        headers = {k: v for k, v in exc.headers.items() if k.lower() in ("allow",)}
        return _error(request, exc.status, exc.reason, headers)
    except Exception:
        # Nothing a client sends may produce this; if it does, it is a bug worth a traceback.
        log.exception("internal error on %s %s", request.method, request.path)
        return _error(request, 500, "internal error")


async def _lifetime(app: web.Application) -> AsyncIterator[None]:
    gw = app[handlers.GATEWAY]
    await gw.start()
    yield
    # aiohttp has let in-flight handlers finish (shutdown_timeout) before this runs, so the
    # ledger writer flushes every generation they recorded (SPEC §5.6).
    await gw.close()


def make_app(cfg: Config, gateway: Gateway | None = None) -> web.Application:
    gw = gateway or Gateway(cfg)
    app = web.Application(
        middlewares=[error_middleware],
        client_max_size=cfg.server.max_body_bytes,
        handler_args=HANDLER_ARGS,
    )
    app[handlers.GATEWAY] = gw
    app.cleanup_ctx.append(_lifetime)
    for prefix in ("/v1", "/api/v1"):
        app.router.add_post(prefix + "/chat/completions", handlers.dialect(openai_chat.CODEC))
        app.router.add_post(prefix + "/completions", handlers.dialect(completions.CODEC))
        app.router.add_post(prefix + "/responses", handlers.dialect(responses.CODEC))
        app.router.add_post(prefix + "/messages", handlers.dialect(anthropic_messages.CODEC))
        app.router.add_post(prefix + "/messages/count_tokens", handlers.messages_count_tokens)
        app.router.add_post(prefix + "/embeddings", handlers.dialect(embeddings.CODEC))
        app.router.add_get(prefix + "/models/{author}/{slug}", handlers.get_model)
        app.router.add_get(prefix + "/models/{model_id}", handlers.get_model)
        app.router.add_get(prefix + "/models", handlers.list_models)
        app.router.add_get(prefix + "/models/{author}/{slug}/endpoints", handlers.model_endpoints)
        app.router.add_routes(account_api.routes(prefix))
    app.router.add_get("/healthz", handlers.healthz)
    app.router.add_get("/readyz", handlers.readyz)
    app.router.add_get("/metrics", handlers.metrics)
    return app
