"""The admin API on the service's listener: image status, prewarm jobs, evict, pin, verify,
run-time images. Reads need no token; every mutation needs `Authorization: Bearer <token>`
when [admin] token is set (401 without one, 403 with a wrong one), checked before anything
else is looked at, so a refused request has no side effect."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from aiohttp import web

from isocache.admin.openapi import OPENAPI
from isocache.admin.prewarm import PrewarmManager
from isocache.attachments import Attachments
from isocache.bearer import check_bearer
from isocache.catalog import Catalog
from isocache.config import OriginConfig
from isocache.errors import BadRequest, Conflict, Forbidden, NotFound
from isocache.image import ImageRef, ImageVersion
from isocache.resolver import Resolver
from isocache.state import ServiceState
from isocache.store import ChunkStore
from isocache.urls import redact_url
from isocache.verify import Verifier

log = logging.getLogger(__name__)

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
_IMAGES_STATE = "images/"
_LEGACY_PINS_STATE = "pins/"  # before the store owned pins: name -> bool
# Paths per GET /api/origins/{origin}/cached: each costs a scan of the store's index, and the
# query must stay within aiohttp's 8 KiB request line.
_MAX_CACHED_PATHS = 100


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat().replace("+00:00", "Z")


class AdminApi:
    def __init__(
        self,
        *,
        token: str | None,
        catalog: Catalog,
        resolver: Resolver,
        store: ChunkStore,
        state: ServiceState,
        verifier: Verifier,
        prewarm: PrewarmManager,
        origins: Mapping[str, OriginConfig] | None = None,
    ) -> None:
        self._token = token
        self._origins = dict(origins or {})
        self._catalog = catalog
        self._resolver = resolver
        self._store = store
        self._state = state  # run-time images
        self._verifier = verifier
        self._prewarm = prewarm
        self.attachments: Attachments | None = None  # set by the service: their pins count

    def set_token(self, token: str | None) -> None:
        """A reloaded config's [admin] token: every later request is checked against it."""
        self._token = token

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/api/openapi.json", self.openapi),
            web.get("/api/images", self.list_images),
            web.put("/api/images/{name}", self.register),
            web.delete("/api/images/{name}", self.unregister),
            web.delete("/api/images/{name}/cache", self.evict),
            web.put("/api/images/{name}/pin", self.pin),
            web.delete("/api/images/{name}/pin", self.unpin),
            web.post("/api/images/{name}/verify", self.verify),
            web.get("/api/prewarm", self.list_jobs),
            web.post("/api/prewarm", self.start_prewarm),
            web.get("/api/prewarm/{id}", self.get_job),
            web.delete("/api/prewarm/{id}", self.cancel_job),
            web.get("/api/origins", self.list_origins),
            web.get("/api/origins/{origin}/cached", self.origin_cached),
        ]

    # -- start-up: run-time state ---------------------------------------------------------

    async def restore(self) -> None:
        """Re-register run-time images and re-apply run-time pins saved in the store."""
        for key, value in (await self._state.load_states(_IMAGES_STATE)).items():
            name = key[len(_IMAGES_STATE) :]
            try:
                # A run-time image's pin lives in the store's pins, not in its record.
                self._catalog.register(name, value["url"], value.get("sha256"), False)
            except (KeyError, TypeError, Conflict, Forbidden) as exc:
                log.warning("admin-restore-skipped image=%s reason=%s", name, exc)
                await self._state.delete_state(key)
                await self._store.unpin(name)
        for key, pinned in (await self._state.load_states(_LEGACY_PINS_STATE)).items():
            name = key[len(_LEGACY_PINS_STATE) :]
            if pinned and not self._store.is_pinned(name):
                await self._store.pin(name, None)
            await self._state.delete_state(key)

    # -- helpers --------------------------------------------------------------------------

    async def pinned_sizes(self) -> dict[str, int]:
        """Identity -> size of the versions pinned by images (sizes as last known)."""
        images = self._catalog.images()
        sizes: dict[str, int] = {}
        for owner, identity in self._store.pins().items():
            ref = images.get(owner)
            if ref is None or identity is None:
                continue
            known = await self._version(ref)
            sizes[identity] = known.size if known is not None else 0
        return sizes

    def authorise(self, request: web.Request) -> None:
        check_bearer(request.headers.get("Authorization"), self._token)

    @staticmethod
    async def _body(request: web.Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except ValueError as exc:
            raise BadRequest("the body must be a JSON object") from exc
        if not isinstance(body, dict):
            raise BadRequest("the body must be a JSON object")
        return body

    def _image(self, request: web.Request) -> ImageRef:
        return self._catalog.image(request.match_info["name"])

    async def _version(self, ref: ImageRef) -> ImageVersion | None:
        """The last known version, without asking the origin."""
        return self._resolver.known(ref.url) or await self._resolver.persisted(ref)

    async def _describe(self, ref: ImageRef) -> dict[str, Any]:
        version = await self._version(ref)
        cached, last_access = self._store.image_usage(version.identity) if version else (0, None)
        return {
            "name": ref.name,
            "url": redact_url(ref.url),
            "size": version.size if version else None,
            "cached_bytes": cached,
            "pinned": self._store.is_pinned(ref.name or ""),
            "verified": self._verifier.result(version.identity) if version else None,
            "last_access": _iso(last_access),
        }

    # -- handlers -------------------------------------------------------------------------

    async def openapi(self, request: web.Request) -> web.Response:
        return web.json_response(OPENAPI)

    async def list_images(self, request: web.Request) -> web.Response:
        images = [await self._describe(ref) for ref in self._catalog.images().values()]
        return web.json_response(images)

    async def register(self, request: web.Request) -> web.Response:
        self.authorise(request)
        name = request.match_info["name"]
        if not _NAME.fullmatch(name):
            raise BadRequest("image names are letters, digits, '.', '_' and '-'")
        body = await self._body(request)
        url, sha256, pin = body.get("url"), body.get("sha256"), body.get("pin", False)
        if not isinstance(url, str) or not url:
            raise BadRequest("url must be a string")
        if sha256 is not None and (not isinstance(sha256, str) or not _SHA256.fullmatch(sha256)):
            raise BadRequest("sha256 must be 64 hexadecimal digits")
        if not isinstance(pin, bool):
            raise BadRequest("pin must be true or false")
        if set(body) - {"url", "sha256", "pin"}:
            raise BadRequest(
                f"unknown fields: {', '.join(sorted(set(body) - {'url', 'sha256', 'pin'}))}"
            )
        existed = name in self._catalog.images()
        ref = self._catalog.register(name, url, sha256.lower() if sha256 else None, False)
        await self._state.save_state(
            _IMAGES_STATE + name, {"url": url, "sha256": ref.sha256, "pin": pin}
        )
        if pin:
            # Re-pointing a pinned image releases its old version at once.
            version = await self._version(ref)
            await self._store.pin(name, version.identity if version else None)
        else:
            await self._store.unpin(name)
        return web.json_response(await self._describe(ref), status=200 if existed else 201)

    async def unregister(self, request: web.Request) -> web.Response:
        self.authorise(request)
        name = request.match_info["name"]
        self._catalog.unregister(name)
        await self._state.delete_state(_IMAGES_STATE + name)
        await self._store.unpin(name)
        return web.json_response({"name": name, "unregistered": True})

    async def evict(self, request: web.Request) -> web.Response:
        self.authorise(request)
        ref = self._image(request)
        version = await self._version(ref)
        dropped = 0
        if (
            version is not None
            and self.attachments is not None
            and version.identity in self.attachments.pinned_sizes()
        ):
            raise Conflict(f"{ref.name}'s cached version is attached to a VM; detach it first")
        if version is not None:
            dropped = await self._store.drop_image(version.identity)
            self._verifier.forget(version.identity)
        return web.json_response({"name": ref.name, "evicted_chunks": dropped})

    async def pin(self, request: web.Request) -> web.Response:
        self.authorise(request)
        ref = self._image(request)
        version = await self._resolver.resolve(ref)
        pinned = await self.pinned_sizes()
        pinned.pop(version.identity, None)
        if self.attachments is not None:
            pinned.update(self.attachments.pinned_sizes())
        total = sum(pinned.values())
        if version.identity not in pinned and total + version.size > self._store.size_limit:
            raise Conflict(
                f"pinning {ref.name} ({version.size} bytes) next to {total} pinned bytes "
                f"would exceed cache.size_limit ({self._store.size_limit} bytes)"
            )
        await self._store.pin(ref.name or "", version.identity)
        return web.json_response(await self._describe(ref))

    async def unpin(self, request: web.Request) -> web.Response:
        self.authorise(request)
        ref = self._image(request)
        await self._store.unpin(ref.name or "")
        return web.json_response(await self._describe(ref))

    async def verify(self, request: web.Request) -> web.Response:
        self.authorise(request)
        ref = self._image(request)
        version = await self._resolver.resolve(ref)
        self._verifier.forget(version.identity)
        good, dropped = await self._store.verify_chunks(version.identity)
        verified = await self._verifier.verify(version, again=True)
        return web.json_response(
            {"name": ref.name, "chunks_ok": good, "chunks_dropped": dropped, "verified": verified}
        )

    async def list_jobs(self, request: web.Request) -> web.Response:
        return web.json_response([job.view() for job in self._prewarm.jobs()])

    async def start_prewarm(self, request: web.Request) -> web.Response:
        self.authorise(request)
        body = await self._body(request)
        target: dict[str, str]
        if isinstance(body.get("image"), str) and "path" not in body:
            target = {"image": body["image"]}
        elif isinstance(body.get("path"), str) and "image" not in body:
            target = {"path": body["path"]}
        else:
            raise BadRequest('give exactly one of "image": NAME or "path": "/origins/NAME/..."')
        range_header = body.get("range")
        if range_header is not None and not isinstance(range_header, str):
            raise BadRequest('range must be a string like "bytes=0-1048575"')
        job = await self._prewarm.submit(target, range_header)
        view = job.view()
        return web.json_response(
            {"id": job.id, "status_url": view["status_url"]},
            status=202,
            headers={"Location": view["status_url"]},
        )

    async def get_job(self, request: web.Request) -> web.Response:
        job = self._prewarm.get(request.match_info["id"])
        if job is None:
            raise NotFound("no such prewarm job")
        return web.json_response(job.view())

    async def cancel_job(self, request: web.Request) -> web.Response:
        self.authorise(request)
        job = await self._prewarm.cancel(request.match_info["id"])
        if job is None:
            raise NotFound("no such prewarm job")
        return web.json_response(job.view())

    async def list_origins(self, request: web.Request) -> web.Response:
        """The configured origins for the web page's tree: name, kind and the redacted URL
        (never a credential: those live only in OriginConfig)."""
        return web.json_response(
            [
                {
                    "name": name,
                    "kind": "glance" if origin.kind == "glance" else origin.scheme,
                    "url": redact_url(origin.url),
                }
                for name, origin in self._origins.items()
            ]
        )

    async def origin_cached(self, request: web.Request) -> web.Response:
        """What is cached of origin files, `?path=dir/name.iso` (decoded, repeatable): one
        entry per file whose version this service knows, without asking the origin."""
        origin = request.match_info["origin"]
        paths = request.query.getall("path", [])
        if not paths or len(paths) > _MAX_CACHED_PATHS:
            raise BadRequest(f"give 1 to {_MAX_CACHED_PATHS} path parameters")
        found = []
        for path in paths:
            try:
                raw = "/".join(quote(segment, safe="") for segment in path.split("/"))
            except UnicodeEncodeError as exc:
                raise BadRequest("path is not valid UTF-8") from exc
            version = await self._version(self._catalog.origin_file(origin, raw))
            if version is not None:
                cached, _ = self._store.image_usage(version.identity)
                found.append({"path": path, "size": version.size, "cached_bytes": cached})
        return web.json_response(found)
