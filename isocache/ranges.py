"""Byte ranges: the Range header (RFC 9110 14.1-14.6), Content-Range, chunk spans, multipart.

Pure logic, no I/O. Inside the code a ByteRange is half-open [start, stop); the inclusive
"last" of HTTP appears only in header text parsed or written here.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

from isocache.errors import BadRequest, RangeNotSatisfiable

# ASCII digits only: \d, str.isdigit() and int() also accept other scripts' digits, "_" and "+".
_INT_RANGE = re.compile(r"([0-9]{1,19})-([0-9]{0,19})")
_SUFFIX_RANGE = re.compile(r"-([0-9]{1,19})")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_OWS = " \t"


@dataclass(frozen=True, slots=True)
class ByteRange:
    """Half-open [start, stop) byte range."""

    start: int
    stop: int

    @property
    def length(self) -> int:
        return self.stop - self.start

    def content_range(self, size: int) -> str:
        """The Content-Range value for this range of a `size`-byte representation."""
        return f"bytes {self.start}-{self.stop - 1}/{size}"

    def chunk_indexes(self, chunk_size: int) -> range:
        """Indexes of the chunks this range touches (empty for an empty range)."""
        if self.stop <= self.start:
            return range(0)
        return range(self.start // chunk_size, (self.stop - 1) // chunk_size + 1)


def unsatisfied_content_range(size: int) -> str:
    """Content-Range of a 416 response (RFC 9110 14.4)."""
    return f"bytes */{size}"


def parse_range(header: str | None, size: int, *, max_ranges: int = 64) -> list[ByteRange] | None:
    """Parse a Range header against a representation of `size` bytes.

    Returns None when the whole representation should be sent: no header, or a range unit
    other than "bytes" (RFC 9110 14.2 lets a server ignore it). Otherwise returns the
    satisfiable ranges, clamped to `size`, in the order asked (unsatisfiable ones dropped;
    no merging, clients may rely on order).
    Raises BadRequest for malformed syntax or more than `max_ranges` ranges, and
    RangeNotSatisfiable when no range is satisfiable (any range of an empty representation).
    """
    if header is None:
        return None
    unit, equals, range_set = header.strip(_OWS).partition("=")
    if not equals:
        raise BadRequest(f"malformed Range header {header[:80]!r}: expected bytes=first-last")
    if not _TOKEN.fullmatch(unit):
        raise BadRequest(f"malformed range unit in {header[:80]!r}")
    if unit.lower() != "bytes":
        return None
    # RFC 9110 5.6.1: list elements are separated by OWS "," OWS; empty elements are ignored.
    specs = [spec.strip(_OWS) for spec in range_set.split(",")]
    specs = [spec for spec in specs if spec]
    if not specs:
        raise BadRequest("Range header names no range")
    if len(specs) > max_ranges:
        raise BadRequest(f"more than {max_ranges} ranges in one request")
    ranges = []
    for spec in specs:
        rng = _parse_spec(spec, size)
        if rng is not None:
            ranges.append(rng)
    if not ranges:
        raise RangeNotSatisfiable(f"no range of {header[:80]!r} lies within {size} bytes", size)
    return ranges


def _parse_spec(spec: str, size: int) -> ByteRange | None:
    """One range-spec; None when it is valid but not satisfiable."""
    match = _INT_RANGE.fullmatch(spec)
    if match:
        first = int(match.group(1))
        last = int(match.group(2)) if match.group(2) else None
        if last is not None and last < first:
            raise BadRequest(f"range {spec!r} ends before it starts")
        if first >= size:
            return None
        stop = size if last is None else min(last + 1, size)
        return ByteRange(first, stop)
    match = _SUFFIX_RANGE.fullmatch(spec)
    if match:
        suffix = int(match.group(1))
        if suffix == 0 or size == 0:
            return None
        return ByteRange(max(0, size - suffix), size)
    raise BadRequest(f"malformed range {spec[:40]!r}")


def if_range_allows(if_range: str | None, etag: str, last_modified: str | None) -> bool:
    """RFC 9110 13.1.5: True when the Range header should be honoured.

    An entity-tag must equal `etag` by strong comparison (a weak tag never matches); an
    HTTP-date must equal `last_modified` exactly. Anything else means "send everything".
    """
    if if_range is None:
        return True
    value = if_range.strip(_OWS)
    if value.startswith(('"', "W/")):
        return value == etag and not value.startswith("W/")
    if last_modified is None:
        return False
    try:
        return parsedate_to_datetime(value) == parsedate_to_datetime(last_modified)
    except (TypeError, ValueError, IndexError):
        return False


@dataclass(frozen=True)
class MultipartLayout:
    """The framing of a multipart/byteranges body (RFC 9110 14.6)."""

    boundary: str
    content_type: str
    parts: list[tuple[bytes, ByteRange]]  # (header bytes before the part's body, range)
    trailer: bytes
    content_length: int


def multipart_layout(
    ranges: list[ByteRange], size: int, part_content_type: str, boundary: str | None = None
) -> MultipartLayout:
    """Lay out a multipart/byteranges body; the writer sends header, body, ..., trailer."""
    boundary = boundary or secrets.token_hex(16)
    parts = []
    for rng in ranges:
        header = (
            f"\r\n--{boundary}\r\n"
            f"Content-Type: {part_content_type}\r\n"
            f"Content-Range: {rng.content_range(size)}\r\n\r\n"
        ).encode("ascii")
        parts.append((header, rng))
    trailer = f"\r\n--{boundary}--\r\n".encode("ascii")
    length = sum(len(header) + rng.length for header, rng in parts) + len(trailer)
    return MultipartLayout(
        boundary, f"multipart/byteranges; boundary={boundary}", parts, trailer, length
    )
