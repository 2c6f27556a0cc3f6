"""OpenStack Swift origin backend: one container (and optional prefix) of one account.

The origin's tree is `swift://NAME/PREFIX/`; `swift://NAME/PREFIX/a/b.iso` is the object
`PREFIX/a/b.iso` of the container. Requests are plain HTTP on the shared machinery of
HttpOrigin (HEAD for size and ETag, ranged GET with If-Match on the ETag, resume after a
drop), to `{storage URL}/{container}/{object}` with an X-Auth-Token. The token and storage
URL come from Swift's TempAuth (GET .../auth/v1.0 with X-Auth-User and X-Auth-Key) or from
Keystone v3 (the token's catalog entry of type "object-store", unless `url` overrides it);
both are renewed when Swift answers 401. Large objects (SLO and DLO manifests) need nothing
of their own: Swift serves a manifest as one object with one size and one ETag and honours
Range and If-Match on it.

Listings are GET {container}?format=json&prefix=P&delimiter=/ page by page with `marker`
(Swift answers at most 10,000 names a request); "subdir" entries are pseudo-directories.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote, urlencode, urlsplit

import aiohttp

from isocache.config import OriginConfig
from isocache.errors import ImageNotFound, OriginError, OriginProtocolError, OriginUnavailable
from isocache.origins.base import DEFAULT_LIMITS, FetchLimits, ListEntry, plain_name
from isocache.origins.http import HttpOrigin
from isocache.origins.keystone import Keystone
from isocache.urls import is_under, redact_url

log = logging.getLogger(__name__)

# Names per listing request. Swift's own ceiling is 10,000 (container_listing_limit); a
# smaller page streams the first entries sooner and holds less in memory at once.
LIST_PAGE = 1000

_Page = list[dict[str, Any]]


@dataclass(frozen=True, slots=True)
class _Auth:
    token: str = field(repr=False)
    storage_url: str  # the account's URL, without a trailing "/"


class SwiftOrigin(HttpOrigin):
    """One configured Swift container. Use on the event loop."""

    def __init__(self, config: OriginConfig, limits: FetchLimits = DEFAULT_LIMITS) -> None:
        # Swift does not redirect object reads; following one would carry the token away.
        super().__init__(is_allowed=lambda url: False, limits=limits, ca_file=config.ca_file)
        self._config = config
        self._name = config.name
        self._base = config.url  # swift://NAME/PREFIX/
        self._container = config.container or ""
        auth_url = config.auth_url or ""
        self._keystone = (
            Keystone(config, self._client)
            if urlsplit(auth_url).path.rstrip("/").endswith("/v3")
            else None
        )
        self._auth_url = auth_url
        self._auth: _Auth | None = None
        self._auth_lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"<SwiftOrigin {self._name} container={self._container}>"

    # -- authentication -------------------------------------------------------------------

    async def _current(self, stale: str | None = None) -> _Auth:
        """The token and storage URL; new ones when none yet or the current is `stale`."""
        if self._keystone is not None:
            token = await self._keystone.token(stale)
            storage = self._config.storage_url or token.endpoint(
                "object-store", self._config.region
            )
            if not storage:
                raise OriginError(
                    f"Keystone's catalog has no object-store endpoint for origin {self._name}; "
                    "set the origin's url to the storage URL"
                )
            return _Auth(token.value, storage.rstrip("/"))
        async with self._auth_lock:
            if self._auth is None or self._auth.token == stale:
                self._auth = await self._tempauth()
            return self._auth

    async def _tempauth(self) -> _Auth:
        headers = {
            "X-Auth-User": self._config.username or "",
            "X-Auth-Key": self._config.password or "",
        }
        try:
            async with self._client().get(
                self._auth_url, headers=headers, allow_redirects=False
            ) as resp:
                token = resp.headers.get("X-Auth-Token")
                storage = self._config.storage_url or resp.headers.get("X-Storage-Url")
                if resp.status not in (200, 204) or not token or not storage:
                    raise OriginError(
                        f"Swift TempAuth refused the credentials of origin {self._name} "
                        f"(HTTP {resp.status})"
                    )
        except OriginError:
            raise
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise OriginUnavailable(
                f"cannot reach Swift's auth for origin {self._name}: {type(exc).__name__}"
            ) from exc
        return _Auth(token, storage.rstrip("/"))

    # -- requests -------------------------------------------------------------------------

    def _suffix(self, url: str) -> str:
        """The part of the request URL after the storage URL: /container[/object][?query].
        A URL with a query is a request on the container itself (a listing page)."""
        parts = urlsplit(url)
        container = "/" + quote(self._container, safe="")
        if parts.query and parts.path == "/" and parts.netloc == self._name:
            return f"{container}?{parts.query}"
        if parts.query or not is_under(url, self._base):
            raise OriginProtocolError(f"{redact_url(url)} is not in Swift origin {self._name}")
        # Swift takes the object name percent-encoded once; "/" stays a separator.
        return container + "/" + quote(unquote(parts.path.lstrip("/")), safe="/")

    @asynccontextmanager
    async def _request(
        self, method: str, url: str, headers: dict[str, str]
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        suffix = self._suffix(url)
        auth = await self._current()
        async with super()._request(
            method, auth.storage_url + suffix, {**headers, "X-Auth-Token": auth.token}
        ) as resp:
            if resp.status != 401:
                yield resp
                return
        # Expired or revoked: one new token, one more try.
        log.info("swift-token-renew origin=%s", self._name)
        auth = await self._current(stale=auth.token)
        async with super()._request(
            method, auth.storage_url + suffix, {**headers, "X-Auth-Token": auth.token}
        ) as resp:
            if resp.status == 401:
                raise OriginError(f"Swift origin {self._name} refused a fresh token (HTTP 401)")
            yield resp

    # -- listings -------------------------------------------------------------------------

    async def list(self, url: str) -> AsyncIterator[ListEntry]:
        prefix = unquote(urlsplit(url).path.lstrip("/"))
        marker = ""
        seen_any = False
        while True:
            query = {"format": "json", "prefix": prefix, "delimiter": "/", "limit": LIST_PAGE}
            if marker:
                query["marker"] = marker
            page = await self._page(url, f"swift://{self._name}/?" + urlencode(query))
            for item in page:
                entry = self._entry(item, prefix)
                if entry is not None:
                    seen_any = True
                    yield entry
            if len(page) < LIST_PAGE:
                break
            last = page[-1]
            marker = str(last.get("name") or last.get("subdir") or "")
            if not marker:
                raise OriginProtocolError(f"Swift origin {self._name} listed an unnamed entry")
        if not seen_any and prefix != unquote(urlsplit(self._base).path.lstrip("/")):
            raise ImageNotFound(f"Swift origin {self._name} has nothing under {redact_url(url)}")

    async def _page(self, shown: str, url: str) -> _Page:
        async with self._request("GET", url, {"Accept": "application/json"}) as resp:
            if resp.status == 204:  # an empty container, to some Swift versions
                return []
            if resp.status == 404:
                raise ImageNotFound(
                    f"Swift origin {self._name}: container {self._container!r} does not exist"
                )
            if resp.status != 200:
                raise self._status_error(shown, resp.status)
            try:
                data = json.loads(await resp.read())
            except (ValueError, aiohttp.ClientError, OSError) as exc:
                raise OriginProtocolError(
                    f"unreadable listing from Swift origin {self._name}"
                ) from exc
        if not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
            raise OriginProtocolError(f"unexpected listing from Swift origin {self._name}")
        return data

    @staticmethod
    def _entry(item: dict[str, Any], prefix: str) -> ListEntry | None:
        subdir = item.get("subdir")
        if isinstance(subdir, str):
            name = subdir[len(prefix) :].rstrip("/") if subdir.startswith(prefix) else ""
            return ListEntry(name, None, True) if plain_name(name) else None
        full = item.get("name")
        if not isinstance(full, str) or not full.startswith(prefix):
            return None
        name = full[len(prefix) :]
        size = item.get("bytes")
        # An SLO lists its whole size; a DLO manifest lists its own (0): only a HEAD tells.
        exact = isinstance(size, int) and not isinstance(size, bool) and size >= 0
        return ListEntry(name, size if exact else None, False) if plain_name(name) else None
