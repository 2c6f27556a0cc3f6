"""Error middleware: every failure before a response starts becomes a JSON error body.

After a response has started, the serving code aborts the connection instead (the client
sees a truncated body), so nothing here runs for those. Every URL in a detail is redacted
here once more: details are built all over the code base, and a signed URL's query or a
password must never reach a client, who may not even be authenticated.
"""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.typedefs import Handler

from isocache.errors import IsocacheError, RangeNotSatisfiable
from isocache.ranges import unsatisfied_content_range
from isocache.urls import redact_text

log = logging.getLogger(__name__)


def json_error(
    status: int, error: str, detail: str, headers: dict[str, str] | None = None
) -> web.Response:
    body = {"error": error, "detail": redact_text(detail)}
    return web.json_response(body, status=status, headers=headers)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except RangeNotSatisfiable as exc:
        # RFC 9110 15.5.17: a 416 carries the current length.
        return json_error(
            exc.status,
            exc.error,
            exc.detail,
            {"Content-Range": unsatisfied_content_range(exc.size)},
        )
    except IsocacheError as exc:
        return json_error(exc.status, exc.error, exc.detail)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return json_error(exc.status, exc.reason.lower().replace(" ", "_"), exc.reason, headers)
    except ConnectionError:
        raise
    except Exception:
        log.exception("request-failed method=%s path=%s", request.method, request.path)
        return json_error(500, "internal_error", "internal error; see the service log")
