"""One access-log line per request: method, path, range, status, body bytes, how the
response was served (hit, miss, mixed, or - when no chunk was read), duration.

The reader counts chunk hits and misses into a per-request context variable; the query
string is left out of the log (it is never needed to read an image and may carry secrets)."""

from __future__ import annotations

import logging
import time

from aiohttp import web
from aiohttp.typedefs import Handler

from isocache.request_stats import RequestStats, current_stats

log = logging.getLogger("isocache.access")


def access_log_middleware(level: int) -> web.middleware:  # type: ignore[valid-type]
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not log.isEnabledFor(level):
            return await handler(request)
        stats = RequestStats()
        token = current_stats.set(stats)
        started = time.monotonic()
        status, sent = 500, 0
        try:
            response = await handler(request)
            status = response.status
            sent = (
                stats.body_bytes if stats.body_bytes is not None else response.content_length or 0
            )
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            current_stats.reset(token)
            log.log(
                level,
                "%s %s range=%s status=%d bytes=%d cache=%s seconds=%.4f",
                request.method,
                request.path,
                request.headers.get("Range", "-"),
                status,
                sent,
                stats.served,
                time.monotonic() - started,
            )

    return middleware
