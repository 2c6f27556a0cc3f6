"""Builds the aiohttp application: image routes, health, metrics, the admin API and its web
page (/ui/), JSON errors for the rest."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from isocache.admin.api import AdminApi
from isocache.admin.prewarm import PrewarmManager
from isocache.front.access_log import access_log_middleware
from isocache.front.errors import error_middleware
from isocache.front.images import ImageHandlers
from isocache.metrics import Metrics
from isocache.ui import UiPages


def build_app(
    images: ImageHandlers,
    admin: AdminApi,
    metrics: Metrics,
    prewarm: PrewarmManager,
    access_log_level: int | None = None,
    extra_routes: list[web.RouteDef] | None = None,
) -> web.Application:
    middlewares = [error_middleware]
    if access_log_level is not None:
        middlewares.insert(0, access_log_middleware(access_log_level))
    app = web.Application(middlewares=middlewares, client_max_size=64 * 1024)

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def metrics_page(request: web.Request) -> web.Response:
        counts = prewarm.counts()
        for state in ("queued", "running", "done", "failed", "cancelled"):
            metrics.prewarm_jobs.labels(state).set(counts.get(state, 0))
        body = generate_latest(metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app.add_routes(
        [
            web.get("/healthz", healthz),
            web.get("/metrics", metrics_page),
            *admin.routes(),
            *(extra_routes or []),
            *images.routes(),
            *UiPages().routes(),
        ]
    )
    return app
