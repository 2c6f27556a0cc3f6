"""Attachments: one image version held for one VM for as long as it is attached.

An attachment resolves an image (or origin path) once, pins that version in the store and
prewarms it; its URL (/v/<identity>) serves exactly that version and never follows the
origin. A chunk that is missing once the origin has moved on cannot be fetched: that read
is a 410, never bytes of another version. Records live in the store (`s:attach/<id>`), so
attachments survive restarts. Knows nothing about HTTP; use on the event loop.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from isocache.catalog import Catalog
from isocache.errors import Conflict, Gone, NotFound, OriginChanged
from isocache.image import ImageRef, ImageVersion
from isocache.origins.base import ListEntry, OriginMeta
from isocache.resolver import Resolver
from isocache.state import ServiceState
from isocache.store import ChunkStore

log = logging.getLogger(__name__)

_STATE = "attach/"
PIN_PREFIX = "attachment/"  # store pin owners: attachment/<id>; image names never hold "/"
# Detached attachments are remembered (their URL keeps serving cached chunks) while any of
# their chunks are stored, up to this many.
DETACHED_KEPT = 256


@dataclass
class Attachment:
    id: str
    target: dict[str, str]  # {"image": NAME} or {"path": "/origins/NAME/x.iso"}
    url: str  # the origin URL of the version
    meta: OriginMeta
    first_seen: float
    created: float = field(default_factory=time.time)
    attached: bool = True
    error: str | None = None  # why the version can no longer be completed
    identity: str = ""  # the version's chunk identity, derived from url and meta

    def __post_init__(self) -> None:
        # The identity depends on the URL and the metadata only, not on the backend.
        probe = ImageRef(url=self.url, origin=_GoneOrigin(""), origin_label="")
        self.identity = ImageVersion.of(probe, self.meta, self.first_seen).identity

    def record(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "target": self.target,
            "url": self.url,
            "meta": dataclasses.asdict(self.meta),
            "first_seen": self.first_seen,
            "created": self.created,
            "attached": self.attached,
            "error": self.error,
        }

    @classmethod
    def of_record(cls, record: dict[str, Any]) -> Attachment:
        meta = dict(record["meta"])
        if meta.get("digest") is not None:
            meta["digest"] = tuple(meta["digest"])
        return cls(
            id=record["id"],
            target=dict(record["target"]),
            url=record["url"],
            meta=OriginMeta(**meta),
            first_seen=record["first_seen"],
            created=record["created"],
            attached=record["attached"],
            error=record.get("error"),
        )


class _GoneOrigin:
    """Stands in for the origin of a version that may no longer be fetched (detached, or
    its origin left the config): every read is a 410, so only cached chunks are served."""

    def __init__(self, detail: str) -> None:
        self._detail = detail

    async def stat(self, url: str) -> OriginMeta:
        raise Gone(self._detail)

    async def read(
        self, url: str, meta: OriginMeta, offset: int, length: int
    ) -> AsyncIterator[bytes]:
        raise Gone(self._detail)
        yield b""  # pragma: no cover - makes this an async generator

    async def list(self, url: str) -> AsyncIterator[ListEntry]:
        raise Gone(self._detail)
        yield  # pragma: no cover

    async def close(self) -> None:
        return None


class Attachments:
    """The attachments of this host, keyed by id. Use on the event loop."""

    def __init__(
        self, *, catalog: Catalog, resolver: Resolver, store: ChunkStore, state: ServiceState
    ) -> None:
        self._catalog = catalog
        self._resolver = resolver
        self._store = store
        self._state = state
        self._by_id: dict[str, Attachment] = {}
        # id -> ((attached, catalog generation) it was built for, version)
        self._versions: dict[str, tuple[tuple[bool, int], ImageVersion]] = {}

    # -- life cycle -----------------------------------------------------------------------

    async def restore(self) -> None:
        """Load saved attachments and make sure every attached version is pinned."""
        for key, record in (await self._state.load_states(_STATE)).items():
            try:
                attachment = Attachment.of_record(record)
            except (KeyError, TypeError, ValueError) as exc:
                log.warning("attachment-restore-skipped key=%s reason=%s", key, exc)
                continue
            self._by_id[attachment.id] = attachment
            if attachment.attached:
                await self._store.pin(PIN_PREFIX + attachment.id, attachment.identity)
        for owner in self._store.pins():
            if owner.startswith(PIN_PREFIX):
                attachment_or_none = self._by_id.get(owner[len(PIN_PREFIX) :])
                if attachment_or_none is None or not attachment_or_none.attached:
                    await self._store.unpin(owner)

    # -- queries --------------------------------------------------------------------------

    def all(self) -> list[Attachment]:
        return sorted(self._by_id.values(), key=lambda a: a.created)

    def get(self, attachment_id: str) -> Attachment:
        attachment = self._by_id.get(attachment_id)
        if attachment is None:
            raise NotFound(f"no attachment {attachment_id!r}")
        return attachment

    def version(self, attachment: Attachment) -> ImageVersion:
        """The attachment's version, reading from its origin only while it is attached.
        Kept per attachment (every read of its URL asks) until it is detached or the
        catalog is reloaded (its origin may have left the config)."""
        cached = self._versions.get(attachment.id)
        if cached is not None and cached[0] == (attachment.attached, self._catalog.generation):
            return cached[1]
        ref: ImageRef | None = None
        if attachment.attached:
            ref = self._catalog.ref_for_url(attachment.url)
        if ref is None:
            gone = _GoneOrigin(self.gone_detail(attachment))
            ref = ImageRef(url=attachment.url, origin=gone, origin_label="attachments")
        version = ImageVersion(ref, attachment.meta, attachment.identity, attachment.first_seen)
        self._versions[attachment.id] = ((attachment.attached, self._catalog.generation), version)
        return version

    def by_identity(self, identity: str) -> Attachment | None:
        """The attachment serving `identity`: an attached one first, else the newest."""
        return min(
            (a for a in self._by_id.values() if a.identity == identity),
            key=lambda a: (not a.attached, -a.created),
            default=None,
        )

    @staticmethod
    def gone_detail(attachment: Attachment) -> str:
        if not attachment.attached:
            why = "it was detached"
        else:
            why = attachment.error or "the origin no longer has this version"
        return (
            f"attachment {attachment.id}: this part of the image is not cached and cannot be "
            f"fetched any more ({why})"
        )

    def pinned_sizes(self) -> dict[str, int]:
        """Identity -> size of the versions attachments pin."""
        return {a.identity: a.meta.size for a in self._by_id.values() if a.attached}

    # -- changes --------------------------------------------------------------------------

    async def attach(
        self, target: dict[str, str], ref: ImageRef, other_pinned: dict[str, int]
    ) -> Attachment:
        """Resolve `ref` now and attach that version. Raises Conflict (409) before anything
        is fetched when it would not fit in size_limit beside the other pinned versions
        (`other_pinned`: identity -> size) and those attachments pin."""
        version = await self._resolver.resolve(ref)
        sizes = {**other_pinned, **self.pinned_sizes()}
        pinned = sum(size for identity, size in sizes.items() if identity != version.identity)
        if version.identity not in sizes and pinned + version.size > self._store.size_limit:
            raise Conflict(
                f"attaching {version.size} bytes next to {pinned} pinned bytes would exceed "
                f"cache.size_limit ({self._store.size_limit} bytes)"
            )
        attachment = Attachment(
            id=secrets.token_hex(8),
            target=target,
            url=version.ref.url,
            meta=version.meta,
            first_seen=version.first_seen,
        )
        self._by_id[attachment.id] = attachment
        await self._store.pin(PIN_PREFIX + attachment.id, version.identity)
        await self._save(attachment)
        log.info("attach id=%s image=%s identity=%s", attachment.id, target, version.identity)
        return attachment

    async def detach(self, attachment_id: str) -> Attachment:
        attachment = self.get(attachment_id)
        if attachment.attached:
            attachment.attached = False
            await self._store.unpin(PIN_PREFIX + attachment.id)
            await self._save(attachment)
            log.info("detach id=%s", attachment.id)
        await self._prune()
        return attachment

    async def broken(self, attachment: Attachment, exc: OriginChanged | Gone) -> None:
        """The version cannot be completed from the origin any more; remember why."""
        if attachment.error is None:
            attachment.error = exc.detail
            await self._save(attachment)

    async def _save(self, attachment: Attachment) -> None:
        await self._state.save_state(_STATE + attachment.id, attachment.record())

    async def _prune(self) -> None:
        """Forget detached attachments whose chunks are all gone, and the oldest beyond
        DETACHED_KEPT."""
        detached = [a for a in self.all() if not a.attached]
        for index, attachment in enumerate(detached):
            if (
                self._store.chunk_count(attachment.identity) == 0
                or index < len(detached) - DETACHED_KEPT
            ):
                del self._by_id[attachment.id]
                self._versions.pop(attachment.id, None)
                await self._state.delete_state(_STATE + attachment.id)
