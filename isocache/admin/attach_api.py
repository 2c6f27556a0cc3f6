"""The attachments API: attach an image's current version for a VM, list, inspect, detach.

Mutations need the admin token (checked first, so a refused request has no side effect).
An attachment's `url` (/v/<identity>) serves exactly the attached version; see
isocache/attachments.py for what it promises.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from isocache.admin.prewarm import ACTIVE, PrewarmManager
from isocache.attachments import Attachment, Attachments
from isocache.errors import BadRequest
from isocache.image import ImageRef
from isocache.store import ChunkStore


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat().replace("+00:00", "Z")


class AttachmentApi:
    def __init__(
        self,
        *,
        attachments: Attachments,
        store: ChunkStore,
        prewarm: PrewarmManager,
        authorise: Callable[[web.Request], None],
        lookup: Callable[[dict[str, str]], ImageRef],
        image_pinned_sizes: Callable[[], Awaitable[dict[str, int]]],
    ) -> None:
        self._attachments = attachments
        self._store = store
        self._prewarm = prewarm
        self._authorise = authorise
        self._lookup = lookup
        self._image_pinned_sizes = image_pinned_sizes
        self._jobs: dict[str, str] = {}  # attachment id -> its prewarm job id

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/api/attachments", self.list),
            web.post("/api/attachments", self.attach),
            web.get("/api/attachments/{id}", self.get),
            web.delete("/api/attachments/{id}", self.detach),
        ]

    async def resume(self) -> None:
        """Prewarm attachments left incomplete (prewarm jobs resume on their own; this
        covers attachments whose job was pruned or never saved)."""
        running = {job.attachment for job in self._prewarm.jobs() if job.state in ACTIVE}
        for job in self._prewarm.jobs():
            if job.attachment is not None:
                self._jobs[job.attachment] = job.id
        for attachment in self._attachments.all():
            incomplete = attachment.attached and not self._ready(attachment)
            if incomplete and attachment.id not in running and attachment.error is None:
                job = await self._prewarm.submit_attachment(attachment.id)
                self._jobs[attachment.id] = job.id

    def _ready(self, attachment: Attachment) -> bool:
        version = self._attachments.version(attachment)
        return self._store.chunk_count(attachment.identity) >= version.chunk_count(
            self._store.chunk_size
        )

    def view(self, request: web.Request, attachment: Attachment) -> dict[str, Any]:
        cached, _ = self._store.image_usage(attachment.identity)
        job = self._prewarm.get(self._jobs.get(attachment.id, ""))
        if attachment.error is None and job is not None and job.state == "failed":
            attachment.error = job.error  # saved with the next change; shown from now on
        if not attachment.attached:
            state = "detached"
        elif self._ready(attachment):
            state = "ready"
        elif attachment.error is not None:
            state = "incomplete"
        else:
            state = "prewarming"
        base = f"{request.scheme}://{request.host}"
        return {
            "id": attachment.id,
            **attachment.target,
            "url": f"{base}/v/{attachment.identity}",
            "etag": f'"{attachment.identity}"',
            "size": attachment.meta.size,
            "cached_bytes": cached,
            "state": state,
            "error": attachment.error,
            "created": _iso(attachment.created),
            "prewarm_job": job.id if job is not None else None,
        }

    async def list(self, request: web.Request) -> web.Response:
        return web.json_response([self.view(request, a) for a in self._attachments.all()])

    async def get(self, request: web.Request) -> web.Response:
        attachment = self._attachments.get(request.match_info["id"])
        return web.json_response(self.view(request, attachment))

    async def attach(self, request: web.Request) -> web.Response:
        self._authorise(request)
        try:
            body = await request.json()
        except ValueError as exc:
            raise BadRequest("the body must be a JSON object") from exc
        if not isinstance(body, dict) or set(body) - {"image", "path"} or len(body) != 1:
            raise BadRequest('give exactly one of "image": NAME or "path": "/origins/NAME/..."')
        ((key, value),) = body.items()
        if not isinstance(value, str) or not value:
            raise BadRequest(f"{key} must be a non-empty string")
        target = {key: value}
        ref = self._lookup(target)
        attachment = await self._attachments.attach(
            target, ref, other_pinned=await self._image_pinned_sizes()
        )
        if not self._ready(attachment):
            job = await self._prewarm.submit_attachment(attachment.id)
            self._jobs[attachment.id] = job.id
        view = self.view(request, attachment)
        return web.json_response(
            view, status=201, headers={"Location": f"/api/attachments/{attachment.id}"}
        )

    async def detach(self, request: web.Request) -> web.Response:
        self._authorise(request)
        attachment_id = request.match_info["id"]
        self._attachments.get(attachment_id)  # 404 before any change
        job_id = self._jobs.pop(attachment_id, None)
        if job_id is not None:
            await self._prewarm.cancel(job_id)
        attachment = await self._attachments.detach(attachment_id)
        return web.json_response(self.view(request, attachment))
