"""Keystone v3 tokens for the OpenStack origins (Glance, Swift).

POST {auth_url}/auth/tokens with a password (scoped to a project) or an application
credential; the token comes back in X-Subject-Token with its expiry and service catalog. A
token is fetched on first use and renewed shortly before it expires, or when a service
answers 401 (the caller passes the refused token as `stale`). Secrets never reach a log or
an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import aiohttp

from isocache.config import OriginConfig
from isocache.errors import OriginError

# Renew this long before Keystone's expiry, so a token never expires mid-request.
_TOKEN_MARGIN = 60.0


@dataclass(frozen=True, slots=True)
class Token:
    value: str = field(repr=False)
    # The token's service catalog: [{"type", "endpoints": [{"interface", "region", "url"}]}].
    catalog: list[Any] = field(default_factory=list, repr=False)

    def endpoint(self, service_type: str, region: str | None = None) -> str | None:
        """The public endpoint of `service_type` (in `region` if given), else None."""
        for service in self.catalog:
            if not isinstance(service, dict) or service.get("type") != service_type:
                continue
            for endpoint in service.get("endpoints") or []:
                if (
                    isinstance(endpoint, dict)
                    and endpoint.get("interface") == "public"
                    and (region is None or endpoint.get("region") in (region, None))
                    and isinstance(endpoint.get("url"), str)
                ):
                    return str(endpoint["url"])
        return None


def auth_body(c: OriginConfig) -> dict[str, Any]:
    """The JSON body of POST /v3/auth/tokens for the origin's credentials."""
    if c.application_credential_id and c.application_credential_secret:
        identity: dict[str, Any] = {
            "methods": ["application_credential"],
            "application_credential": {
                "id": c.application_credential_id,
                "secret": c.application_credential_secret,
            },
        }
        return {"auth": {"identity": identity}}
    identity = {
        "methods": ["password"],
        "password": {
            "user": {
                "name": c.username,
                "domain": {"name": c.user_domain_name},
                "password": c.password,
            }
        },
    }
    auth: dict[str, Any] = {"identity": identity}
    if c.project_name:
        auth["scope"] = {
            "project": {"name": c.project_name, "domain": {"name": c.project_domain_name}}
        }
    return {"auth": auth}


class Keystone:
    """The token of one origin. `client` gives the origin's HTTP session (its TLS trust)."""

    def __init__(self, config: OriginConfig, client: Callable[[], aiohttp.ClientSession]) -> None:
        self._config = config
        self._auth_url = (config.auth_url or "").rstrip("/")
        self._client = client
        self._token: Token | None = None
        self._expires = 0.0
        self._lock = asyncio.Lock()

    async def token(self, stale: str | None = None) -> Token:
        """The current token; a new one when it is about to expire or equals `stale`."""
        async with self._lock:
            current = self._token
            if current and current.value != stale and time.monotonic() < self._expires:
                return current
            token, lifetime = await self._issue()
            self._token = token
            self._expires = time.monotonic() + max(0.0, lifetime - _TOKEN_MARGIN)
            return token

    async def _issue(self) -> tuple[Token, float]:
        name = self._config.name
        try:
            async with self._client().post(
                self._auth_url + "/auth/tokens",
                data=json.dumps(auth_body(self._config)),
                headers={"Content-Type": "application/json"},
                allow_redirects=False,
            ) as resp:
                if resp.status != 201 or "X-Subject-Token" not in resp.headers:
                    raise OriginError(
                        f"Keystone refused the credentials of origin {name} (HTTP {resp.status})"
                    )
                value = resp.headers["X-Subject-Token"]
                payload = await resp.json(content_type=None)
        except OriginError:
            raise
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
            raise OriginError(
                f"cannot reach Keystone for origin {name}: {type(exc).__name__}"
            ) from exc
        body = (payload.get("token") or {}) if isinstance(payload, dict) else {}
        lifetime = 3600.0
        expires = body.get("expires_at") if isinstance(body, dict) else None
        if isinstance(expires, str):
            with contextlib.suppress(ValueError):
                lifetime = (
                    datetime.fromisoformat(expires.replace("Z", "+00:00")).timestamp() - time.time()
                )
        catalog = body.get("catalog") if isinstance(body, dict) else None
        return Token(value, catalog if isinstance(catalog, list) else []), lifetime
