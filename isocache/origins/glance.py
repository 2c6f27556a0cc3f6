"""OpenStack Glance v2 origin backend, authenticated with a Keystone v3 token.

Images are addressed by ID or by name under the origin (`/origins/glance/IMAGE`). Metadata
comes from GET /v2/images/{id}; data from GET /v2/images/{id}/file with Range, on the
shared HTTP machinery of HttpOrigin. The token is fetched on first use and renewed when it
is about to expire or when Glance answers 401. Secrets never reach a log or an error.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from email.utils import format_datetime
from typing import Any
from urllib.parse import quote, unquote, urlencode, urlsplit

import aiohttp

from isocache.config import OriginConfig
from isocache.errors import ImageNotFound, OriginError, OriginProtocolError
from isocache.origins.base import DEFAULT_LIMITS, FetchLimits, ListEntry, OriginMeta, plain_name
from isocache.origins.http import HttpOrigin
from isocache.origins.keystone import Keystone
from isocache.urls import is_under, redact_url

log = logging.getLogger(__name__)

_UUID = re.compile(
    r"[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}"
)
_PAGE = 200


def _id_of(meta: OriginMeta) -> str | None:
    """The image id in an ETag made by GlanceOrigin.stat ('"ID:DIGEST"'), else None."""
    image_id = (meta.etag or "").strip('"').split(":", 1)[0]
    return image_id if _UUID.fullmatch(image_id) else None


class GlanceOrigin(HttpOrigin):
    """One configured Glance endpoint. Use on the event loop."""

    def __init__(self, config: OriginConfig, limits: FetchLimits = DEFAULT_LIMITS) -> None:
        base = config.url
        super().__init__(
            # Glance may redirect image data to its own store only within the endpoint.
            is_allowed=lambda url: is_under(url, base),
            limits=limits,
            ca_file=config.ca_file,
        )
        self._name = config.name
        self._base = base
        self._keystone = Keystone(config, self._client)
        # No name -> id cache: a name is looked up at every stat (every revalidation), so a
        # new build published under it is found and a deleted one is a 404; reads take the
        # id from the version's metadata, so they never read another image than stat saw.

    @asynccontextmanager
    async def _request(
        self, method: str, url: str, headers: dict[str, str]
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        token = (await self._keystone.token()).value
        async with super()._request(method, url, {**headers, "X-Auth-Token": token}) as resp:
            if resp.status != 401:
                yield resp
                return
        # Revoked or expired early: one new token, one more try.
        token = (await self._keystone.token(stale=token)).value
        async with super()._request(method, url, {**headers, "X-Auth-Token": token}) as resp:
            if resp.status == 401:
                raise OriginError(f"Glance origin {self._name} refused a fresh token (HTTP 401)")
            yield resp

    # -- images ---------------------------------------------------------------------------

    async def _image_id(self, url: str) -> str:
        """The id `url` names now: an id as it is, a name looked up among active images."""
        path, base_path = urlsplit(url).path, urlsplit(self._base).path
        if not is_under(url, self._base) or not path.startswith(base_path):
            raise OriginProtocolError(f"{redact_url(url)} is not on Glance origin {self._name}")
        ref = unquote(path[len(base_path) :])
        if _UUID.fullmatch(ref):
            return ref
        query = urlencode({"name": ref, "status": "active", "limit": "2"})
        images = (await self._json(f"{self._base}v2/images?{query}", url)).get("images") or []
        if len(images) != 1 or not isinstance(images[0], dict) or "id" not in images[0]:
            raise ImageNotFound(
                f"Glance origin {self._name} has {len(images) or 'no'} active images named {ref!r}"
            )
        return str(images[0]["id"])

    async def _json(self, api_url: str, shown: str) -> dict[str, Any]:
        async with self._request("GET", api_url, {"Accept": "application/json"}) as resp:
            if resp.status != 200:
                raise self._status_error(shown, resp.status)
            try:
                data = await resp.json(content_type=None)
            except (ValueError, aiohttp.ClientError) as exc:
                raise OriginProtocolError(
                    f"unreadable answer from Glance origin {self._name}"
                ) from exc
        if not isinstance(data, dict):
            raise OriginProtocolError(f"unexpected answer from Glance origin {self._name}")
        return data

    async def stat(self, url: str) -> OriginMeta:
        image_id = await self._image_id(url)
        image = await self._json(f"{self._base}v2/images/{quote(image_id)}", url)
        if image.get("status") != "active" or not isinstance(image.get("size"), int):
            raise ImageNotFound(f"Glance image {image_id} is not active")
        digest = image.get("os_hash_value") or image.get("checksum") or ""
        modified = None
        if isinstance(image.get("updated_at"), str):
            try:
                when = datetime.fromisoformat(image["updated_at"].replace("Z", "+00:00"))
                modified = format_datetime(when, usegmt=True)
            except ValueError:
                pass
        algo, value = image.get("os_hash_algo"), image.get("os_hash_value")
        vouched = None
        if (
            isinstance(algo, str)
            and isinstance(value, str)
            and algo in hashlib.algorithms_available
        ):
            vouched = (algo, value.lower())
        elif isinstance(image.get("checksum"), str):
            vouched = ("md5", image["checksum"].lower())
        # An active Glance image never changes its data: id + hash is its identity.
        return OriginMeta(
            size=image["size"],
            etag=f'"{image_id}:{digest}"',
            last_modified=modified,
            digest=vouched,
        )

    async def read(
        self, url: str, meta: OriginMeta, offset: int, length: int
    ) -> AsyncIterator[bytes]:
        image_id = _id_of(meta) or await self._image_id(url)
        data_url = f"{self._base}v2/images/{quote(image_id)}/file"
        # Glance's /file answers carry no validator of ours: read by size alone.
        async for piece in super().read(data_url, OriginMeta(meta.size), offset, length):
            yield piece

    async def list(self, url: str) -> AsyncIterator[ListEntry]:
        if url != self._base:
            raise ImageNotFound("Glance origins have no subdirectories")
        next_url: str | None = f"{self._base}v2/images?limit={_PAGE}"
        while next_url:
            page = await self._json(next_url, url)
            for image in page.get("images") or []:
                name = image.get("name") or image.get("id")
                if not isinstance(name, str) or not plain_name(name):
                    continue
                kind = image.get("disk_format") or ""
                size = image.get("size") if isinstance(image.get("size"), int) else None
                yield ListEntry(name, size, False, kind=str(kind))
            link = page.get("next")
            next_url = self._base + link.lstrip("/") if isinstance(link, str) and link else None
