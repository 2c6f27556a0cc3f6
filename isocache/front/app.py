"""Builds the aiohttp application: image routes, health, metrics, JSON errors for the rest."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from isocache.front.errors import error_middleware
from isocache.front.images import ImageHandlers
from isocache.metrics import Metrics


def build_app(images: ImageHandlers, metrics: Metrics) -> web.Application:
    app = web.Application(middlewares=[error_middleware], client_max_size=64 * 1024)

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def metrics_page(request: web.Request) -> web.Response:
        body = generate_latest(metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app.add_routes(
        [
            web.get("/healthz", healthz),
            web.get("/metrics", metrics_page),
            *images.routes(),
        ]
    )
    return app
