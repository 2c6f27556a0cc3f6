"""S3 and S3-compatible (Ceph RGW, MinIO) origin backend.

Requests are plain HTTP on the shared aiohttp machinery of HttpOrigin, signed with botocore's
SigV4 signer (never by hand). `s3://bucket/key` URLs map to path-style or virtual-hosted
endpoint URLs. Credentials: the origin's keys, else its profile, else the standard AWS chain
(environment, shared files); none found means anonymous (public buckets).
"""

from __future__ import annotations

import contextlib
import logging
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import quote, unquote, urlencode, urlsplit

import aiohttp
import botocore.session
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from isocache.config import OriginConfig
from isocache.errors import ImageNotFound, OriginError, OriginProtocolError
from isocache.origins.base import DEFAULT_LIMITS, FetchLimits, ListEntry, plain_name
from isocache.origins.http import HttpOrigin

log = logging.getLogger(__name__)


def _parse_list_page(page: bytes, prefix: str) -> tuple[list[ListEntry], str | None]:
    """Entries and the next continuation token of one ListObjectsV2 response."""
    root = ET.fromstring(page)
    ns = root.tag.partition("}")[0] + "}" if root.tag.startswith("{") else ""
    entries = []
    for common in root.iter(f"{ns}CommonPrefixes"):
        name = (common.findtext(f"{ns}Prefix") or "")[len(prefix) :].rstrip("/")
        if plain_name(name):
            entries.append(ListEntry(name, None, True))
    for item in root.iter(f"{ns}Contents"):
        name = (item.findtext(f"{ns}Key") or "")[len(prefix) :]
        size = item.findtext(f"{ns}Size") or ""
        if plain_name(name):
            exact = size.isascii() and size.isdigit()
            entries.append(ListEntry(name, int(size) if exact else None, False))
    truncated = root.findtext(f"{ns}IsTruncated") == "true"
    return entries, root.findtext(f"{ns}NextContinuationToken") if truncated else None


def _credentials(config: OriginConfig) -> Credentials | None:
    if config.aws_access_key_id and config.aws_secret_access_key:
        return Credentials(config.aws_access_key_id, config.aws_secret_access_key)
    session = botocore.session.Session(profile=config.profile)
    resolver = session.get_component("credential_provider")
    # Only local sources: instance and container metadata services would mean network
    # calls to addresses outside the configured origins.
    for name in ("iam-role", "container-role", "boto2-config"):
        with contextlib.suppress(KeyError, ValueError):
            resolver.remove(name)
    found: Credentials | None = resolver.load_credentials()
    return found


class S3Origin(HttpOrigin):
    """One configured S3 origin (bucket and prefix). Use on the event loop."""

    def __init__(self, config: OriginConfig, limits: FetchLimits = DEFAULT_LIMITS) -> None:
        # S3 does not redirect object reads; following one would leave the signed endpoint.
        super().__init__(
            is_allowed=lambda url: False,
            limits=limits,
            ca_file=config.ca_file,
        )
        self._bucket = urlsplit(config.url).netloc
        self._region = config.region or "us-east-1"
        endpoint = config.endpoint_url or f"https://s3.{self._region}.amazonaws.com"
        self._endpoint = urlsplit(endpoint.rstrip("/"))
        self._virtual = config.addressing == "virtual"
        self._credentials = _credentials(config)
        if self._credentials is None:
            log.info("s3-anonymous origin=%s", config.name)

    def http_url(self, url: str) -> str:
        """The endpoint URL of an s3://bucket/key[?query] URL of this origin."""
        parts = urlsplit(url)
        if parts.scheme != "s3" or parts.netloc != self._bucket:
            raise OriginProtocolError(f"{url} is not in bucket {self._bucket}")
        # S3's SigV4 canonical URI encodes every byte but unreserved ones, exactly once.
        key = quote(unquote(parts.path.lstrip("/")), safe="/~")
        query = f"?{parts.query}" if parts.query else ""
        scheme, host = self._endpoint.scheme, self._endpoint.netloc
        if self._virtual:
            return f"{scheme}://{self._bucket}.{host}/{key}{query}"
        # A bucket-level request (ListObjectsV2) is /bucket, not /bucket/, in path style.
        path = f"/{self._bucket}/{key}" if key else f"/{self._bucket}"
        return f"{scheme}://{host}{path}{query}"

    def _sign(self, method: str, url: str, headers: dict[str, str]) -> dict[str, str]:
        if self._credentials is None:
            return headers
        request = AWSRequest(method=method, url=url, headers=headers)
        S3SigV4Auth(self._credentials.get_frozen_credentials(), "s3", self._region).add_auth(
            request
        )
        return dict(request.headers.items())

    @asynccontextmanager
    async def _request(
        self, method: str, url: str, headers: dict[str, str]
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        target = self.http_url(url)
        # Sign exactly what is sent: HttpOrigin adds Accept-Encoding, so add it first.
        signed = self._sign(method, target, {"Accept-Encoding": "identity", **headers})
        async with super()._request(method, target, signed) as resp:
            if resp.status in (400, 401, 403):
                code = await self._error_code(resp)
                raise OriginError(f"{self._bucket} refused the request (HTTP {resp.status} {code})")
            yield resp

    async def list(self, url: str) -> AsyncIterator[ListEntry]:
        """ListObjectsV2 with the directory as prefix and "/" as delimiter, page by page."""
        parts = urlsplit(url)
        prefix = unquote(parts.path.lstrip("/"))
        base = f"s3://{self._bucket}/"
        token: str | None = None
        seen_any = False
        while True:
            query = {"list-type": "2", "delimiter": "/", "prefix": prefix, "max-keys": "1000"}
            if token:
                query["continuation-token"] = token
            async with self._request(
                "GET", base + "?" + urlencode(query, quote_via=quote), {}
            ) as resp:
                if resp.status == 404:
                    raise ImageNotFound(f"bucket {self._bucket} does not exist")
                if resp.status != 200:
                    raise self._status_error(url, resp.status)
                page = await resp.read()
            try:
                entries, token = _parse_list_page(page, prefix)
            except ET.ParseError as exc:
                raise OriginProtocolError(f"unreadable listing from {self._bucket}") from exc
            for entry in entries:
                seen_any = True
                yield entry
            if not token:
                break
        if not seen_any and prefix:
            raise ImageNotFound(f"no objects under s3://{self._bucket}/{prefix}")

    @staticmethod
    async def _error_code(resp: aiohttp.ClientResponse) -> str:
        if resp.method == "HEAD":
            return ""
        try:
            body = (await resp.content.read(4096)).decode("utf-8", "replace")
        except (aiohttp.ClientError, OSError):
            return ""
        start = body.find("<Code>")
        end = body.find("</Code>")
        return body[start + 6 : end] if 0 <= start < end else ""
