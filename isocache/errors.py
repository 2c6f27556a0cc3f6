"""The isocache exception tree; each class carries the HTTP status it maps to.

    IsocacheError (500)
    ├── BadRequest (400)
    │   └── BadPath (400)            request path escapes an origin's prefix
    ├── Unauthorized (401)           admin mutation without a bearer token
    ├── Forbidden (403)              wrong token; URL outside the configured origins
    ├── NotFound (404)
    │   └── ImageNotFound (404)      unknown catalog name, origin or origin path
    ├── MethodNotAllowed (405)
    ├── Conflict (409)               e.g. pinning more than fits in size_limit
    ├── Gone (410)                   an attachment's version can no longer be read
    ├── PreconditionFailed (412)     a peer asked for a version this host does not have
    ├── RangeNotSatisfiable (416)    carries the resource size for Content-Range: bytes */SIZE
    ├── OriginError (502)            anything an origin did wrong
    │   ├── OriginUnavailable (502)  connection refused, reset, DNS, 5xx after retries
    │   ├── OriginTimeout (504)      connect or read timed out
    │   ├── OriginProtocolError (502) wrong status, Content-Range or length; bad redirect
    │   └── OriginChanged (502)      the origin's file is not the version we were reading
    └── StoreError (503)             the local chunk store failed

Origin backends raise these from their client library's exceptions (``raise ... from exc``);
nothing above a backend catches aiohttp, aioftp, botocore or sqlite3 exceptions.
"""

from __future__ import annotations


class IsocacheError(Exception):
    status = 500
    error = "internal_error"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class BadRequest(IsocacheError):
    status = 400
    error = "bad_request"


class BadPath(BadRequest):
    error = "bad_path"


class Unauthorized(IsocacheError):
    status = 401
    error = "unauthorized"


class Forbidden(IsocacheError):
    status = 403
    error = "forbidden"


class Conflict(IsocacheError):
    status = 409
    error = "conflict"


class Gone(IsocacheError):
    status = 410
    error = "attachment_gone"


class PreconditionFailed(IsocacheError):
    status = 412
    error = "precondition_failed"


class NotFound(IsocacheError):
    status = 404
    error = "not_found"


class ImageNotFound(NotFound):
    error = "image_not_found"


class MethodNotAllowed(IsocacheError):
    status = 405
    error = "method_not_allowed"


class RangeNotSatisfiable(IsocacheError):
    status = 416
    error = "range_not_satisfiable"

    def __init__(self, detail: str, size: int) -> None:
        super().__init__(detail)
        self.size = size


class OriginError(IsocacheError):
    status = 502
    error = "origin_error"
    # Whether retrying the same request may succeed (resets, 5xx), as opposed to a
    # definite answer (404, 412, protocol violations).
    retryable = False


class OriginUnavailable(OriginError):
    error = "origin_unavailable"
    retryable = True


class OriginTimeout(OriginError):
    status = 504
    error = "origin_timeout"
    retryable = True


class OriginProtocolError(OriginError):
    error = "origin_protocol_error"


class OriginChanged(OriginError):
    error = "origin_changed"


class StoreError(IsocacheError):
    status = 503
    error = "store_error"
