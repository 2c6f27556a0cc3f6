"""HEAD and GET of images and origin files, with RFC 9110 range semantics.

Small responses (up to GATHER_LIMIT bytes) are gathered before the status line is sent,
so an origin failure becomes a clean 502/504: qemu's curl driver checks neither status nor
Content-Range and aborts on a short 206 (docs/ARCHITECTURE.md, "What qemu's curl driver
needs"). Longer responses stream, and on an unrecoverable failure the connection is aborted,
never padded.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import IO, cast

from aiohttp import web

from isocache.attachments import Attachments
from isocache.catalog import Catalog
from isocache.chunk_files import ChunkSource
from isocache.config import redact_url
from isocache.errors import Gone, IsocacheError, MethodNotAllowed, NotFound, OriginChanged
from isocache.front.listing import serve_listing
from isocache.image import ImageRef, ImageVersion
from isocache.metrics import Metrics
from isocache.origins.file import FileOrigin
from isocache.ranges import ByteRange, if_range_allows, multipart_layout, parse_range
from isocache.reader import Piece, Reader
from isocache.request_stats import current_stats
from isocache.resolver import Resolver
from isocache.units import MiB
from isocache.verify import Verifier

log = logging.getLogger(__name__)

GATHER_LIMIT = 8 * MiB
_CONTENT_TYPE = "application/octet-stream"
_BUFFERED_PIECE = 256 * 1024
_DIRECT_PIECE = MiB  # cache = false: the file's version is checked after each


@dataclass(frozen=True)
class FrontSettings:
    keepalive: str = "auto"  # "auto" | "always" | "never"
    sendfile: bool = True


class ImageHandlers:
    def __init__(
        self,
        catalog: Catalog,
        resolver: Resolver,
        reader: Reader,
        metrics: Metrics,
        settings: FrontSettings,
        verifier: Verifier,
        attachments: Attachments | None = None,
    ) -> None:
        self._attachments = attachments
        self._verifier = verifier
        self._catalog = catalog
        self._resolver = resolver
        self._reader = reader
        self._metrics = metrics
        self._settings = settings

    def routes(self) -> list[web.RouteDef]:
        return [
            web.route("*", "/images/{name}", self.image),
            web.route("*", "/origins/{origin}/{path:.*}", self.origin_file),
            web.route("*", "/origins/{origin}", self.origin_file),
            web.route("*", "/v/{identity}", self.attached),
        ]

    async def attached(self, request: web.Request) -> web.StreamResponse:
        """An attachment's URL: exactly the attached version, never the origin's current one.
        A chunk that cannot be read as that version any more is a 410, never other bytes."""
        self._check_method(request)
        attachment = None
        if self._attachments is not None:
            attachment = self._attachments.by_identity(request.match_info["identity"])
        if attachment is None or self._attachments is None:
            raise NotFound("no attachment serves this URL")
        try:
            return await self._respond(request, self._attachments.version(attachment))
        except (OriginChanged, Gone) as exc:
            self._metrics.attachment_gone.inc()
            if isinstance(exc, OriginChanged):
                await self._attachments.broken(attachment, exc)
            raise Gone(self._attachments.gone_detail(attachment)) from None

    async def image(self, request: web.Request) -> web.StreamResponse:
        self._check_method(request)
        return await self._serve(request, self._catalog.image(request.match_info["name"]))

    async def origin_file(self, request: web.Request) -> web.StreamResponse:
        self._check_method(request)
        # Parse the raw target ourselves: the router sees a decoded, dot-normalised path.
        raw = request.raw_path.split("?", 1)[0]
        prefix, _, rest = raw.partition("/origins/")
        if prefix:
            raise MethodNotAllowed("absolute-form request targets are not accepted")
        origin, _, path = rest.partition("/")
        if not path or path.endswith("/"):
            if request.method != "GET":
                raise MethodNotAllowed("directory listings answer GET only")
            return await serve_listing(request, self._catalog, origin, path)
        return await self._serve(request, self._catalog.origin_file(origin, path))

    @staticmethod
    def _check_method(request: web.Request) -> None:
        if request.method not in ("GET", "HEAD"):
            raise MethodNotAllowed(f"{request.method} is not allowed here; use GET or HEAD")

    def _apply_keepalive(self, request: web.Request, response: web.StreamResponse) -> None:
        mode = self._settings.keepalive
        # qemu 7.2's curl driver can hang when several keep-alive transfers finish together;
        # it sends no User-Agent, so "auto" closes after each response to such clients.
        if mode == "never" or (mode == "auto" and "User-Agent" not in request.headers):
            response.force_close()

    async def _serve(self, request: web.Request, ref: ImageRef) -> web.StreamResponse:
        # Timed by front/app.py's middleware (isocache_request_seconds{method, size}).
        for attempt in range(2):
            version = await self._resolver.resolve(ref)
            self._verifier.check(version)
            try:
                return await self._respond(request, version)
            except OriginChanged:
                # Nothing was sent yet: learn the new version and answer from it alone.
                self._resolver.invalidate(ref.url)
                if attempt:
                    raise
        raise AssertionError("unreachable")

    async def respond(self, request: web.Request, version: ImageVersion) -> web.StreamResponse:
        """Answer a HEAD or GET (with its Range) from exactly `version`."""
        return await self._respond(request, version)

    async def _respond(self, request: web.Request, version: ImageVersion) -> web.StreamResponse:
        size = version.size
        headers = {
            "Accept-Ranges": "bytes",  # qemu's curl driver refuses an image without exactly this
            "ETag": version.etag,
            "Last-Modified": version.last_modified,
        }
        ranges = None
        if if_range_allows(request.headers.get("If-Range"), version.etag, version.last_modified):
            ranges = parse_range(request.headers.get("Range"), size)
        response = web.StreamResponse(headers=headers)
        self._apply_keepalive(request, response)
        if ranges is None:
            whole = ByteRange(0, size)
            response.content_type = _CONTENT_TYPE
            response.content_length = size
            return await self._send(request, response, version, [whole], None)
        response.set_status(206)
        if len(ranges) == 1:
            response.content_type = _CONTENT_TYPE
            response.headers["Content-Range"] = ranges[0].content_range(size)
            response.content_length = ranges[0].length
            return await self._send(request, response, version, ranges, None)
        layout = multipart_layout(ranges, size, _CONTENT_TYPE)
        response.headers["Content-Type"] = layout.content_type
        response.content_length = layout.content_length
        parts = [header for header, _ in layout.parts] + [layout.trailer]
        return await self._send(request, response, version, ranges, parts)

    async def _send(
        self,
        request: web.Request,
        response: web.StreamResponse,
        version: ImageVersion,
        ranges: Sequence[ByteRange],
        framing: list[bytes] | None,
    ) -> web.StreamResponse:
        """Send the body: `framing` holds multipart part headers and the trailer, if any."""
        if request.method == "HEAD":
            await response.prepare(request)
            return response
        origin = version.ref.origin
        if isinstance(origin, FileOrigin) and origin.direct:
            return await self._send_direct(request, response, version, origin, ranges, framing)
        if sum(r.length for r in ranges) > GATHER_LIMIT:
            return await self._write_body(
                request,
                response,
                version,
                ranges,
                framing,
                lambda rng: self._reader.stream(version, rng),
            )
        pieces = await self._reader.open_hits(version, ranges[0]) if framing is None else None
        if pieces is not None:  # the warm read: every chunk stored, opened without fills
            try:
                return await self._write_body(
                    request, response, version, ranges, framing, lambda rng: _each(pieces)
                )
            finally:
                for piece in pieces:
                    if not isinstance(piece.source, bytes):
                        piece.source.close()
        # Every chunk is here before the status line, so an origin failure is a clean error.
        chunks = await self._reader.gather(version, ranges)
        try:
            return await self._write_body(
                request,
                response,
                version,
                ranges,
                framing,
                lambda rng: _each(self._reader.pieces(chunks, rng)),
            )
        finally:
            chunks.close()

    async def _write_body(
        self,
        request: web.Request,
        response: web.StreamResponse,
        version: ImageVersion,
        ranges: Sequence[ByteRange],
        framing: list[bytes] | None,
        pieces_of: Callable[[ByteRange], AsyncIterator[Piece]],
    ) -> web.StreamResponse:
        """The status line, then each range's pieces (with multipart `framing`). A failure
        once the status line is out aborts the connection: the client sees a truncated body,
        never padded or wrong bytes."""
        try:
            await response.prepare(request)
            for number, rng in enumerate(ranges):
                if framing:
                    await response.write(framing[number])
                async for piece in pieces_of(rng):
                    await self._send_piece(request, response, piece)
            if framing:
                await response.write(framing[-1])
        except IsocacheError as exc:
            log.warning("response-aborted url=%s error=%s", redact_url(version.ref.url), exc.detail)
            if request.transport is not None:
                request.transport.abort()
            return response
        except ConnectionError:
            return response
        await response.write_eof()
        return response

    async def _send_direct(
        self,
        request: web.Request,
        response: web.StreamResponse,
        version: ImageVersion,
        origin: FileOrigin,
        ranges: Sequence[ByteRange],
        framing: list[bytes] | None,
    ) -> web.StreamResponse:
        """cache = false: the bytes go from the origin's file to the socket (sendfile) and
        nothing is stored. The file is opened and its version checked before the status
        line (a change is then a clean retry from the new version); after each piece it is
        checked again, and a change aborts the connection. What sendfile already sent of an
        in-place rewrite cannot be taken back: trees served this way are updated by rename."""
        fd = await origin.open_version(version.ref.url, version.meta)
        # Wrapping an open descriptor does no I/O.
        with open(fd, "rb", buffering=0) as source:  # noqa: ASYNC230

            async def checked_pieces(rng: ByteRange) -> AsyncIterator[Piece]:
                for start in range(rng.start, rng.stop, _DIRECT_PIECE):
                    yield Piece(source, start, min(_DIRECT_PIECE, rng.stop - start))
                    if not await origin.still(fd, version.meta):  # after the piece was sent
                        raise OriginChanged("the file changed while being sent")

            return await self._write_body(
                request, response, version, ranges, framing, checked_pieces
            )

    async def _send_piece(
        self, request: web.Request, response: web.StreamResponse, piece: Piece
    ) -> None:
        source = piece.source
        if isinstance(source, bytes):
            await response.write(memoryview(source)[piece.offset : piece.offset + piece.length])
        elif self._settings.sendfile:
            await self._sendfile(request, source, piece)
        else:
            await self._buffered(response, source, piece)
        self._count_sent(piece.length)

    def _count_sent(self, length: int) -> None:
        self._metrics.client_bytes.inc(length)
        if (stats := current_stats.get()) is not None:
            stats.body_bytes = (stats.body_bytes or 0) + length

    @staticmethod
    async def _sendfile(request: web.Request, source: ChunkSource, piece: Piece) -> None:
        transport = request.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("client went away")
        offset, remaining = piece.offset, piece.length
        sock = transport.get_extra_info("socket")
        # Fast path: with nothing queued in the transport, the socket's own buffer usually
        # takes a whole chunk at once. loop.sendfile would first pause reading and register
        # for writability (a third of the CPU of a 256 KiB hit, measured with py-spy).
        if sock is not None and transport.get_write_buffer_size() == 0:
            try:
                while remaining:
                    sent = os.sendfile(sock.fileno(), source.fileno(), offset, remaining)
                    if sent == 0:
                        raise ConnectionResetError("client went away")
                    offset += sent
                    remaining -= sent
            except BlockingIOError:
                pass
        if remaining:
            # asyncio's native sendfile uses fileno() and seek() only (os.sendfile at offsets).
            file = cast(IO[bytes], source)
            await asyncio.get_running_loop().sendfile(transport, file, offset, remaining)

    @staticmethod
    async def _buffered(response: web.StreamResponse, source: ChunkSource, piece: Piece) -> None:
        loop = asyncio.get_running_loop()
        offset, remaining = piece.offset, piece.length
        while remaining:
            data = await loop.run_in_executor(
                None, _pread, source, offset, min(remaining, _BUFFERED_PIECE)
            )
            if not data:
                raise ConnectionResetError("chunk file ended early")
            await response.write(data)
            offset += len(data)
            remaining -= len(data)


def _pread(source: ChunkSource, offset: int, length: int) -> bytes:
    return os.pread(source.fileno(), length, offset)


async def _each(pieces: Iterable[Piece]) -> AsyncIterator[Piece]:
    for piece in pieces:
        yield piece
