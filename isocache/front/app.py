"""Builds the aiohttp application: image routes, health, metrics, the admin API and its web
page (/ui/), JSON errors for the rest."""

from __future__ import annotations

import time

from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from isocache.admin.api import AdminApi
from isocache.admin.prewarm import PrewarmManager
from isocache.front.access_log import access_log_middleware
from isocache.front.access_log import log as access_log
from isocache.front.errors import error_middleware
from isocache.front.images import ImageHandlers
from isocache.metrics import Metrics, size_class
from isocache.request_stats import RequestStats, current_stats
from isocache.ui import UiPages

# Paths whose requests isocache_request_seconds times: image reads, not the API or listings.
_IMAGE_PREFIXES = ("/images/", "/origins/", "/v/")


def request_metrics_middleware(metrics: Metrics) -> web.middleware:  # type: ignore[valid-type]
    """Times image reads into isocache_request_seconds{method, size}. Outside the error
    middleware, so a JSON error is timed as the response it is; the body size comes from the
    serving code's count (streamed bodies) or the response's Content-Length."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if not path.startswith(_IMAGE_PREFIXES) or path.endswith("/"):
            return await handler(request)
        stats = current_stats.get()
        token = None
        if stats is None:  # the access log, when on, has set one already
            stats = RequestStats()
            token = current_stats.set(stats)
        started = time.monotonic()
        sent = 0
        try:
            response = await handler(request)
            if stats.body_bytes is not None:
                sent = stats.body_bytes
            elif request.method != "HEAD":
                sent = response.content_length or 0
            return response
        except BaseException:
            sent = stats.body_bytes or 0
            raise
        finally:
            if token is not None:
                current_stats.reset(token)
            method = request.method if request.method in ("GET", "HEAD") else "GET"
            metrics.request_timer(method, size_class(sent)).observe(time.monotonic() - started)

    return middleware


def build_app(
    images: ImageHandlers,
    admin: AdminApi,
    metrics: Metrics,
    prewarm: PrewarmManager,
    access_log_level: int | None = None,
    extra_routes: list[web.RouteDef] | None = None,
) -> web.Application:
    middlewares = [request_metrics_middleware(metrics), error_middleware]
    # Left out when its logger would drop every line: each middleware costs every hit.
    if access_log_level is not None and access_log.isEnabledFor(access_log_level):
        middlewares.insert(0, access_log_middleware(access_log_level))
    app = web.Application(middlewares=middlewares, client_max_size=64 * 1024)

    async def healthz(request: web.Request) -> web.Response:
        # Always 200 while the process serves: cached images are still served when origins
        # fail, and a load balancer must not take the host out for that. "degraded" says
        # that some origin has failed every request for `metrics.degraded_after` seconds.
        failing = metrics.failing_origins()
        if not failing:
            return web.json_response({"status": "ok"})
        return web.json_response(
            {
                "status": "degraded",
                "detail": "origins not answering; cached images are still served",
                "failing_origins": {name: round(seconds, 1) for name, seconds in failing.items()},
            }
        )

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
