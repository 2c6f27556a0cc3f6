"""A real HTTP origin for tests and benchmarks: RFC 9110 ranges and conditionals, switchable
faults ("personalities"), throttling per connection and in total, and an exact log of what
it sent. Tests assert on that log; nothing here imports isocache.
"""

from __future__ import annotations

import argparse
import asyncio
import html
import json
import mmap
import random
import re
import signal
import ssl
import sys
import time
from dataclasses import asdict, dataclass, field
from email.utils import formatdate, parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from aiohttp import web

_PIECE = 64 * 1024
_RANGE = re.compile(r"bytes=([0-9]*)-([0-9]*)")


@dataclass
class LogEntry:
    method: str
    path: str
    range: str | None
    status: int
    body_bytes: int
    headers: dict[str, str]
    started: float
    finished: float = 0.0


@dataclass
class _File:
    # A file on disk is mapped, not read per piece: the origin stands in for a remote server,
    # and the CPU it spends on this 2-core host would otherwise be charged to the target.
    source: bytes | mmap.mmap
    size: int
    version: int
    mtime: float

    @classmethod
    def of(cls, data: bytes | Path, version: int, mtime: float) -> _File:
        if isinstance(data, bytes):
            return cls(data, len(data), version, mtime)
        size = data.stat().st_size
        if size == 0:
            return cls(b"", 0, version, mtime)
        with open(data, "rb") as file:
            return cls(mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ), size, version, mtime)


class _Bucket:
    """Token bucket pacing writes to `rate` bytes per second."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.next_free = time.monotonic()

    async def take(self, count: int) -> None:
        now = time.monotonic()
        start = max(now, self.next_free)
        self.next_free = start + count / self.rate
        delay = self.next_free - now - 0.002
        if delay > 0:
            await asyncio.sleep(delay)


def generate_image(size: int, seed: int = 0) -> bytes:
    """Deterministic pseudo-random bytes."""
    return random.Random(seed).randbytes(size)


def write_image(path: Path, size: int, seed: int = 0) -> None:
    """Write generate_image-like content to `path` in 16 MiB pieces."""
    rng = random.Random(seed)
    with open(path, "wb") as file:
        remaining = size
        while remaining:
            piece = min(remaining, 16 * 1024 * 1024)
            file.write(rng.randbytes(piece))
            remaining -= piece


@dataclass
class OriginServer:
    """Serve files on 127.0.0.1; personalities are plain attributes a test sets at any time."""

    host: str = "127.0.0.1"
    port: int = 0
    per_connection_rate: float | None = None
    total_rate: float | None = None
    latency: float = 0.0
    ignore_range: bool = False
    refuse_head: bool = False
    fail_next: int = 0
    fail_head_next: int = 0
    drop_after: int | None = None
    drops_left: int = 0
    stall: asyncio.Event | None = None
    stall_headers: asyncio.Event | None = None
    etag_mode: str = "strong"
    send_last_modified: bool = True
    redirects: dict[str, str] = field(default_factory=dict)
    autoindex: str = "html"  # listing of a path ending in "/": "html" (nginx style), "json", "none"
    extra_headers: dict[str, str] = field(default_factory=dict)
    log: list[LogEntry] = field(default_factory=list)
    tls: ssl.SSLContext | None = None  # serve https with this server context

    def __post_init__(self) -> None:
        self._files: dict[str, _File] = {}
        self._runner: web.AppRunner | None = None
        self._buckets: dict[int, _Bucket] = {}
        self._total: _Bucket | None = None
        self._versions = 0

    # -- files ------------------------------------------------------------------------------

    def add_file(self, path: str, data: bytes | Path) -> None:
        """Add or replace a file; a replacement gets a new ETag and a later Last-Modified."""
        old = self._files.get(path)
        mtime = max(time.time(), old.mtime + 1) if old else time.time() - 10
        self._versions += 1
        self._files[path] = _File.of(data, self._versions, mtime)

    def remove_file(self, path: str) -> None:
        del self._files[path]

    def etag(self, path: str) -> str:
        entry = self._files[path]
        return f'"v{entry.version}-{entry.size}"'

    def _last_modified(self, entry: _File) -> str:
        return formatdate(entry.mtime, usegmt=True)

    # -- log --------------------------------------------------------------------------------

    def requests(self, path: str | None = None, method: str | None = None) -> list[LogEntry]:
        return [
            e
            for e in self.log
            if (path is None or e.path == path) and (method is None or e.method == method)
        ]

    def body_bytes(self, path: str | None = None) -> int:
        return sum(e.body_bytes for e in self.requests(path))

    def reset_log(self) -> None:
        self.log.clear()

    def stats(self) -> dict[str, Any]:
        paths: dict[str, dict[str, int]] = {}
        for entry in self.log:
            item = paths.setdefault(entry.path, {"requests": 0, "body_bytes": 0})
            item["requests"] += 1
            item["body_bytes"] += entry.body_bytes
        entries = [{k: v for k, v in asdict(e).items() if k != "headers"} for e in self.log]
        return {"paths": paths, "log": entries}

    # -- life cycle -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}/"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/_stats", self._stats)
        app.router.add_post("/_reset", self._reset)
        app.router.add_route("*", "/{path:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, ssl_context=self.tls)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        if self.total_rate:
            self._total = _Bucket(self.total_rate)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> OriginServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats())

    async def _reset(self, request: web.Request) -> web.Response:
        self.reset_log()
        return web.json_response({})

    # -- serving ----------------------------------------------------------------------------

    def _precondition_failed(self, request: web.Request, entry: _File, etag: str) -> bool:
        """RFC 9110 13.2.2: If-Match, then If-Unmodified-Since (only without If-Match)."""
        if_match = request.headers.get("If-Match")
        if if_match is not None:
            if if_match.strip() == "*":
                return False
            tags = [t.strip() for t in if_match.split(",")]
            return not (self.etag_mode == "strong" and etag in tags)
        since = request.headers.get("If-Unmodified-Since")
        if since is not None:
            try:
                return int(entry.mtime) > parsedate_to_datetime(since).timestamp()
            except (TypeError, ValueError):
                return False
        return False

    def _if_range_ok(self, request: web.Request, entry: _File, etag: str) -> bool:
        value = request.headers.get("If-Range")
        if value is None:
            return True
        if value.startswith('"'):
            return self.etag_mode == "strong" and value == etag
        return value == self._last_modified(entry)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path = request.match_info["path"]
        entry_log = LogEntry(
            request.method,
            path,
            request.headers.get("Range"),
            0,
            0,
            dict(request.headers),
            time.monotonic(),
        )
        self.log.append(entry_log)
        try:
            return await self._respond(request, path, entry_log)
        finally:
            entry_log.finished = time.monotonic()

    async def _respond(self, request: web.Request, path: str, log: LogEntry) -> web.StreamResponse:
        def simple(status: int, headers: dict[str, str] | None = None) -> web.Response:
            log.status = status
            return web.Response(status=status, headers=headers)

        if self.stall_headers is not None:
            await self.stall_headers.wait()
        if self.latency:
            await asyncio.sleep(self.latency)
        if path in self.redirects:
            return simple(302, {"Location": self.redirects[path]})
        if (path == "" or path.endswith("/")) and request.method == "GET":
            return self._listing(path, log)
        entry = self._files.get(path)
        if request.method == "HEAD":
            if self.fail_head_next > 0:
                self.fail_head_next -= 1
                return simple(500)
            if self.refuse_head:
                return simple(405)
        elif request.method != "GET":
            return simple(405)
        elif self.fail_next > 0:
            self.fail_next -= 1
            return simple(500)
        if entry is None:
            return simple(404)
        etag = self.etag(path)
        headers = {"Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
        headers.update(self.extra_headers)
        if self.etag_mode == "strong":
            headers["ETag"] = etag
        elif self.etag_mode == "weak":
            headers["ETag"] = "W/" + etag
        if self.send_last_modified:
            headers["Last-Modified"] = self._last_modified(entry)
        if self._precondition_failed(request, entry, etag):
            return simple(412, headers)
        start, stop, status = 0, entry.size, 200
        range_header = request.headers.get("Range")
        if range_header and not self.ignore_range and self._if_range_ok(request, entry, etag):
            match = _RANGE.fullmatch(range_header.strip())
            if match and (match.group(1) or match.group(2)):
                if match.group(1):
                    start = int(match.group(1))
                    stop = (
                        min(int(match.group(2)) + 1, entry.size) if match.group(2) else entry.size
                    )
                else:
                    start = max(0, entry.size - int(match.group(2)))
                if start >= entry.size or stop <= start:
                    return simple(416, {"Content-Range": f"bytes */{entry.size}"})
                status = 206
                headers["Content-Range"] = f"bytes {start}-{stop - 1}/{entry.size}"
        response = web.StreamResponse(status=status, headers=headers)
        response.content_length = stop - start
        log.status = status
        await response.prepare(request)
        if request.method == "HEAD":
            return response
        if self.stall is not None:
            await self.stall.wait()
        await self._write_body(request, response, entry, start, stop, log)
        return response

    def _listing(self, prefix: str, log: LogEntry) -> web.Response:
        """An nginx-like autoindex of the direct children of `prefix`."""
        children: dict[str, int | None] = {}
        for path, entry in self._files.items():
            if path.startswith(prefix) and path != prefix:
                head, slash, _ = path[len(prefix) :].partition("/")
                children[head + slash] = None if slash else entry.size
        if self.autoindex == "none" or not children:
            log.status = 404
            return web.Response(status=404)
        log.status = 200
        if self.autoindex == "json":
            items = [
                {
                    "name": name.rstrip("/"),
                    "type": "directory" if name.endswith("/") else "file",
                    **({"size": size} if size is not None else {}),
                }
                for name, size in children.items()
            ]
            body = json.dumps(items).encode()
            log.body_bytes = len(body)
            return web.Response(body=body, content_type="application/json")
        rows = ['<html><head><title>Index</title></head><body><pre><a href="../">../</a>']
        for name, size in children.items():
            href = quote(name)
            shown = html.escape(name)
            shown_size = "-" if size is None else str(size)
            rows.append(f'<a href="{href}">{shown}</a>   24-Nov-2026 10:00   {shown_size}')
        rows.append("</pre></body></html>")
        body = "\n".join(rows).encode()
        log.body_bytes = len(body)
        return web.Response(body=body, content_type="text/html", charset="utf-8")

    async def _write_body(
        self,
        request: web.Request,
        response: web.StreamResponse,
        entry: _File,
        start: int,
        stop: int,
        log: LogEntry,
    ) -> None:
        transport = request.transport
        bucket = None
        if self.per_connection_rate:
            key = id(transport)
            bucket = self._buckets.get(key)
            if bucket is None or bucket.rate != self.per_connection_rate:
                bucket = self._buckets[key] = _Bucket(self.per_connection_rate)
        drop_at = None
        if self.drop_after is not None and self.drops_left > 0:
            self.drops_left -= 1
            drop_at = self.drop_after
        position = start
        try:
            while position < stop:
                length = min(_PIECE, stop - position)
                if drop_at is not None:
                    length = min(length, drop_at - log.body_bytes)
                    if length <= 0:
                        if transport is not None:
                            transport.abort()
                        return
                if bucket is not None:
                    await bucket.take(length)
                if self._total is not None:
                    await self._total.take(length)
                data = entry.source[position : position + length]
                await response.write(data)
                log.body_bytes += len(data)
                position += len(data)
            await response.write_eof()
        except (ConnectionError, asyncio.CancelledError):
            if transport is not None:
                transport.abort()
            raise


def _parse_rate(text: str) -> float:
    units = {"": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3}
    match = re.fullmatch(r"([0-9.]+)\s*([A-Za-z]*)", text.strip())
    if not match or match.group(2) not in units:
        raise argparse.ArgumentTypeError(f"bad rate {text!r}")
    return float(match.group(1)) * units[match.group(2)]


def _parse_seconds(text: str) -> float:
    if text.endswith("ms"):
        return float(text[:-2]) / 1000
    return float(text.rstrip("s"))


async def _serve(args: argparse.Namespace) -> None:
    server = OriginServer(
        port=args.port,
        per_connection_rate=args.per_connection_rate,
        total_rate=args.total_rate,
        latency=args.latency,
    )
    for spec in args.file:
        name, _, path = spec.partition("=")
        server.add_file(name, Path(path))
    await server.start()
    print(f"listening on {server.url}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop()
    print(json.dumps(server.stats()["paths"]), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.origin", description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--file", action="append", default=[], help="URLPATH=FILE")
    parser.add_argument("--per-connection-rate", type=_parse_rate, default=None)
    parser.add_argument("--total-rate", type=_parse_rate, default=None)
    parser.add_argument("--latency", type=_parse_seconds, default=0.0)
    asyncio.run(_serve(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
