"""A small Glance-v2-shaped server (with Keystone v3 token issue) for the test suite: there
is no real Glance to run here. It checks the token on every call, serves Range on image
data, reports os_hash_value, pages /v2/images, and logs what it served."""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

USER, PASSWORD, PROJECT = "isocache", "glance-pw-123", "images"


@dataclass
class GlanceServer:
    images: dict[str, dict[str, Any]] = field(default_factory=dict)
    tokens: set[str] = field(default_factory=set)
    auth_requests: int = 0
    log: list[tuple[str, str, str | None, int, int]] = field(default_factory=list)
    port: int = 0

    def __post_init__(self) -> None:
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def add_image(self, name: str, data: bytes, disk_format: str = "iso") -> str:
        image_id = str(uuid.uuid4())
        self.images[image_id] = {
            "id": image_id,
            "name": name,
            "data": data,
            "disk_format": disk_format,
            "status": "active",
            "size": len(data),
            "os_hash_algo": "sha512",
            "os_hash_value": hashlib.sha512(data).hexdigest(),
            "checksum": hashlib.md5(data).hexdigest(),
            "updated_at": "2026-11-24T10:00:00Z",
        }
        return image_id

    def delete_image(self, image_id: str) -> None:
        del self.images[image_id]

    def deactivate_image(self, image_id: str) -> None:
        self.images[image_id]["status"] = "deactivated"

    def revoke_tokens(self) -> None:
        self.tokens.clear()

    def body_bytes(self) -> int:
        return sum(entry[4] for entry in self.log)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v3/auth/tokens", self._auth)
        app.router.add_get("/v2/images", self._list)
        app.router.add_get("/v2/images/{id}", self._show)
        app.router.add_get("/v2/images/{id}/file", self._file)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _auth(self, request: web.Request) -> web.Response:
        self.auth_requests += 1
        body = await request.json()
        password = body["auth"]["identity"]["password"]["user"]
        if (password["name"], password["password"]) != (USER, PASSWORD):
            return web.json_response({"error": {"code": 401}}, status=401)
        token = uuid.uuid4().hex
        self.tokens.add(token)
        expires = {"token": {"expires_at": "2099-01-01T00:00:00.000000Z"}}
        return web.json_response(expires, status=201, headers={"X-Subject-Token": token})

    def _authorised(self, request: web.Request) -> bool:
        return request.headers.get("X-Auth-Token") in self.tokens

    def _public(self, image: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in image.items() if k != "data"}

    async def _list(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return web.Response(status=401)
        images = sorted(self.images.values(), key=lambda i: i["id"])
        if "name" in request.query:
            images = [i for i in images if i["name"] == request.query["name"]]
        if "status" in request.query:
            images = [i for i in images if i["status"] == request.query["status"]]
        if "marker" in request.query:
            images = [i for i in images if i["id"] > request.query["marker"]]
        limit = int(request.query.get("limit", "25"))
        page = images[:limit]
        body: dict[str, Any] = {"images": [self._public(i) for i in page]}
        if len(images) > limit:
            body["next"] = f"/v2/images?marker={page[-1]['id']}&limit={limit}"
        return web.json_response(body)

    async def _show(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return web.Response(status=401)
        image = self.images.get(request.match_info["id"])
        if image is None:
            return web.Response(status=404)
        return web.Response(text=json.dumps(self._public(image)), content_type="application/json")

    async def _file(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return web.Response(status=401)
        image = self.images.get(request.match_info["id"])
        if image is None:
            return web.Response(status=404)
        if image["status"] != "active":
            return web.Response(status=403)  # Glance: no data of a deactivated image
        data: bytes = image["data"]
        header = request.headers.get("Range")
        if header:
            first, _, last = header.removeprefix("bytes=").partition("-")
            start, stop = int(first), min(int(last) + 1, len(data))
            self.log.append(("GET", request.path, header, 206, stop - start))
            return web.Response(
                body=data[start:stop],
                status=206,
                headers={"Content-Range": f"bytes {start}-{stop - 1}/{len(data)}"},
            )
        self.log.append(("GET", request.path, None, 200, len(data)))
        return web.Response(body=data)
