"""The owner side of the peer protocol: serve another cluster member a range of one image
version, from the cache or filled from the origin once (coalesced with this host's own
misses), never forwarded to a third member.

Only members with the cluster token (when one is set), only URLs this host's own origins and
images allow (the cluster is not an open proxy), and only the version the member asked for
(`If-Match` on the identity): otherwise 412, and the member reads from the origin.
"""

from __future__ import annotations

from aiohttp import web

from isocache.bearer import check_bearer
from isocache.catalog import Catalog
from isocache.cluster import SERVING_PEER
from isocache.errors import BadRequest, Forbidden, PreconditionFailed
from isocache.front.images import ImageHandlers
from isocache.metrics import Metrics
from isocache.origins.peer import PEER_PATH, URL_HEADER
from isocache.resolver import Resolver


class PeerHandlers:
    def __init__(
        self,
        *,
        token: str | None,
        catalog: Catalog,
        resolver: Resolver,
        images: ImageHandlers,
        metrics: Metrics,
    ) -> None:
        self._token = token
        self._catalog = catalog
        self._resolver = resolver
        self._images = images
        self._metrics = metrics

    def routes(self) -> list[web.RouteDef]:
        return [web.get(PEER_PATH, self.read)]

    async def read(self, request: web.Request) -> web.StreamResponse:
        check_bearer(request.headers.get("Authorization"), self._token, "cluster token")
        url = request.headers.get(URL_HEADER)
        wanted = request.headers.get("If-Match")
        if not url or not wanted or "Range" not in request.headers:
            raise BadRequest(f"a peer read needs {URL_HEADER}, If-Match and Range")
        ref = self._catalog.ref_for_url(url)
        if ref is None:
            raise Forbidden("that URL is outside this host's configured origins")
        version = await self._resolver.resolve(ref)
        if version.etag != wanted:
            # The member may have seen a change this host has not yet: ask the origin once.
            self._resolver.invalidate(ref.url)
            version = await self._resolver.resolve(ref)
            if version.etag != wanted:
                raise PreconditionFailed("this host has another version of that image")
        marker = SERVING_PEER.set(True)
        try:
            response = await self._images.respond(request, version)
        finally:
            SERVING_PEER.reset(marker)
        self._metrics.peer_served_bytes.inc(response.content_length or 0)
        return response
