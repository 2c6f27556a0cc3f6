"""GET /origins/{origin}/{dir}/: a directory of an origin as a streamed JSON array of
{"name", "size", "type"}, optionally filtered with ?type=iso,vfd (directories always kept)."""

from __future__ import annotations

import json
import os

from aiohttp import web

from isocache.catalog import Catalog
from isocache.errors import BadRequest, IsocacheError
from isocache.origins.base import ListEntry

_MAX_TYPES = 32


def entry_type(entry: ListEntry) -> str:
    """ "dir", or the lower-cased extension without its dot ("" when there is none)."""
    if entry.is_dir:
        return "dir"
    if entry.kind is not None:
        return entry.kind.lower()
    return os.path.splitext(entry.name)[1][1:].lower()


def parse_types(request: web.Request) -> frozenset[str] | None:
    values = request.query.getall("type", [])
    if not values:
        return None
    types = frozenset(
        t.strip().lower().lstrip(".") for v in values for t in v.split(",") if t.strip()
    )
    if not types or len(types) > _MAX_TYPES or not all(t.isascii() and t.isalnum() for t in types):
        raise BadRequest("type must be a comma-separated list of file extensions, e.g. iso,vfd")
    return types


async def serve_listing(
    request: web.Request, catalog: Catalog, origin: str, raw_path: str
) -> web.StreamResponse:
    """Stream the listing; errors before the first entry are clean statuses, later ones abort."""
    types = parse_types(request)
    url, backend = catalog.origin_dir(origin, raw_path)
    entries = aiter(backend.list(url))
    first = await anext(entries, None)  # a missing directory fails here, before any byte
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    await response.prepare(request)
    separator = b"["
    try:
        entry = first
        while entry is not None:
            kind = entry_type(entry)
            if types is None or kind == "dir" or kind in types:
                item = {"name": entry.name, "size": entry.size, "type": kind}
                await response.write(separator + json.dumps(item, ensure_ascii=False).encode())
                separator = b","
            entry = await anext(entries, None)
    except IsocacheError:
        if request.transport is not None:
            request.transport.abort()
        return response
    await response.write(b"[]" if separator == b"[" else b"]")
    await response.write_eof()
    return response
