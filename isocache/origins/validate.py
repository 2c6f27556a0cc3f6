"""One configured origin's backend as the cache sees it, with its `validate` setting.

"auto": the backend's metadata as it is; an origin that sends neither ETag nor Last-Modified
gets a version identity of URL + size, so a same-size replacement goes unnoticed, and that
is logged once per origin. "content": each stat also reads the file's first 64 KiB and puts
their sha256 into the metadata (`OriginMeta.content`), which the identity includes; each
read first checks those bytes again. Backends never see the digest, so it can never reach an
origin as a precondition (If-Match) or make FTP's version check fail.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import AsyncIterator

from isocache.config import redact_url
from isocache.errors import OriginChanged
from isocache.origins.base import ListEntry, Origin, OriginMeta

log = logging.getLogger(__name__)

# A fixed size, not the cache's chunk size: a stat sits on the path of the first request
# after each revalidate window, so it must stay one small ranged read (1 MiB at 10 Mbit/s
# is 0.8 s of qemu's 5 s budget), and the identity must not depend on chunk_size. 64 KiB
# holds the parts that differ between builds of the usual images: MBR and GPT headers and
# partition entries (disk and partition GUIDs), ISO 9660's volume descriptor at 32 KiB
# (volume creation time), a qcow2 header. Replacements whose first 64 KiB are equal (two
# qcow2 images of the same virtual size may have equal headers) still go unnoticed.
HEAD_BYTES = 64 * 1024


class ValidatedOrigin:
    """Wraps the backend of origin `name`. Use on the event loop."""

    def __init__(self, inner: Origin, name: str, validate: str = "auto") -> None:
        self._inner = inner
        self._name = name
        self._content = validate == "content"
        self._warned = False

    def __repr__(self) -> str:
        return f"<ValidatedOrigin {self._name} content={self._content} {self._inner!r}>"

    async def stat(self, url: str) -> OriginMeta:
        meta = await self._inner.stat(url)
        if self._content:
            try:
                return await self._with_content(url, meta)
            except OriginChanged:
                # Replaced between the stat and the read of its first bytes: ask again, once.
                return await self._with_content(url, await self._inner.stat(url))
        if not meta.etag and not meta.last_modified and not self._warned:
            self._warned = True
            log.warning(
                "origin-no-validator origin=%s url=%s: neither ETag nor Last-Modified, so a "
                'version is URL + size and a same-size replacement goes unnoticed (validate = "'
                'content" on the origin notices one whose first %d bytes differ)',
                self._name,
                redact_url(url),
                HEAD_BYTES,
            )
        return meta

    async def _with_content(self, url: str, meta: OriginMeta) -> OriginMeta:
        return dataclasses.replace(meta, content=await self._head_digest(url, meta))

    async def _head_digest(self, url: str, meta: OriginMeta) -> str:
        digest = hashlib.sha256()
        async for piece in self._inner.read(url, meta, 0, min(meta.size, HEAD_BYTES)):
            digest.update(piece)
        return digest.hexdigest()

    async def read(
        self, url: str, meta: OriginMeta, offset: int, length: int
    ) -> AsyncIterator[bytes]:
        plain = dataclasses.replace(meta, content=None)
        # Without a validator the origin cannot refuse another version, so check the leading
        # bytes first: a replacement since the stat is OriginChanged (the front then answers
        # from the new version alone) rather than its bytes cached under this version's
        # identity. One extra small read per origin read; a replacement during the read
        # itself is not seen (nor is it by FTP's SIZE + MDTM check).
        if (
            meta.content is not None
            and length
            and await self._head_digest(url, plain) != meta.content
        ):
            raise OriginChanged(f"{redact_url(url)} changed at the origin (first bytes)")
        async for piece in self._inner.read(url, plain, offset, length):
            yield piece

    def list(self, url: str) -> AsyncIterator[ListEntry]:
        return self._inner.list(url)

    async def close(self) -> None:
        await self._inner.close()
