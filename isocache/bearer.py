"""Bearer-token checks for the admin API and the peer endpoint: the same rules, one place."""

from __future__ import annotations

import hmac

from isocache.errors import Forbidden, Unauthorized


def check_bearer(header: str | None, token: str | None, what: str = "token") -> None:
    """Raise Unauthorized (401) without a well-formed `Authorization: Bearer <...>` header
    and Forbidden (403) for a wrong one; nothing when no `token` is configured. The token is
    compared in constant time."""
    if token is None:
        return
    if header is None:
        raise Unauthorized(f"this needs Authorization: Bearer <{what}>")
    scheme, _, credentials = header.partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        raise Unauthorized(f"malformed Authorization header; expected Bearer <{what}>")
    if not hmac.compare_digest(credentials.strip().encode(), token.encode()):
        raise Forbidden(f"wrong {what}")
