"""Byte ranges: the Range header (RFC 9110 14.1-14.6), Content-Range, chunk spans, multipart.

Pure logic, no I/O; a leaf module. Inside the code a ByteRange is half-open [start, stop);
the inclusive "last" of HTTP appears only in header text parsed or written here.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from isocache.errors import BadRequest, RangeNotSatisfiable

# ASCII digits only: \d, str.isdigit() and int() also accept other scripts' digits, "_", "+"
# and surrounding spaces. 19 digits at most, so a hostile header never builds a huge int.
_SIMPLE = re.compile(r"bytes=([0-9]{1,18})-([0-9]{1,18})")
_INT_RANGE = re.compile(r"([0-9]{1,19})-([0-9]{0,19})")
_SUFFIX_RANGE = re.compile(r"-([0-9]{1,19})")
# RFC 9110 5.6.2 token, the syntax of a range-unit (14.1).
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# RFC 9110 8.8.3: entity-tag = [ weak ] opaque-tag; a strong one has no "W/".
_STRONG_ETAG = re.compile(r'"[\x21\x23-\x7e\x80-\xff]*"')
# RFC 2046 5.1.1 allows 1-70 bchars; these are also token characters, so the boundary
# parameter of Content-Type needs no quoting (RFC 9110 5.6.6).
_BOUNDARY = re.compile(r"[0-9A-Za-z'+_.-]{1,70}")
_OWS = " \t"  # RFC 9110 5.6.3


@dataclass(frozen=True, slots=True)
class ByteRange:
    """Half-open [start, stop) byte range; 0 <= start <= stop (ValueError otherwise).

    The HTTP-inclusive "last" (stop - 1) appears only in header text.
    """

    start: int
    stop: int

    def __post_init__(self) -> None:
        if not 0 <= self.start <= self.stop:
            raise ValueError(f"invalid byte range [{self.start}, {self.stop})")

    @property
    def length(self) -> int:
        """Number of bytes in the range."""
        return self.stop - self.start

    def content_range(self, size: int) -> str:
        """Content-Range value of this non-empty range of a `size`-byte representation.

        For example ByteRange(0, 100).content_range(1000) == "bytes 0-99/1000" (RFC 9110 14.4).
        Raises ValueError for an empty range, which has no inclusive form.
        """
        if self.stop <= self.start:
            raise ValueError(f"an empty range has no Content-Range: {self!r}")
        return f"bytes {self.start}-{self.stop - 1}/{size}"

    def chunk_indexes(self, chunk_size: int) -> range:
        """Indexes of the `chunk_size`-byte chunks this range touches; empty for length 0.

        Chunk i holds bytes [i * chunk_size, (i + 1) * chunk_size). Raises ValueError when
        chunk_size is not positive.
        """
        if chunk_size <= 0:
            raise ValueError(f"chunk_size must be positive, not {chunk_size}")
        if self.stop <= self.start:
            return range(0)
        return range(self.start // chunk_size, (self.stop - 1) // chunk_size + 1)


def unsatisfied_content_range(size: int) -> str:
    """Content-Range of a 416 response, "bytes */SIZE" (RFC 9110 14.4 and 15.5.17)."""
    return f"bytes */{size}"


def parse_range(header: str | None, size: int, *, max_ranges: int = 64) -> list[ByteRange] | None:
    """Parse a Range header (RFC 9110 14.1.2) against a representation of `size` bytes.

    Returns None when the whole representation should be sent: no header, or a range unit
    other than "bytes" (RFC 9110 14.2 lets a server ignore it). Otherwise returns the
    satisfiable ranges, non-empty and clamped to `size`, in the order asked; unsatisfiable
    ones are dropped. Ranges are neither merged nor reordered: clients may rely on order.

    Raises BadRequest for malformed syntax (checked for every range before satisfiability,
    including a header with no "=" at all) or more than `max_ranges` ranges, and
    RangeNotSatisfiable(detail, size) when no range is satisfiable, which includes any
    range of a 0-byte representation.
    """
    if header is None:
        return None
    # The common case, one "bytes=first-last" as qemu and curl send it, in one match; the
    # general parse below gives the same answer for it.
    simple = _SIMPLE.fullmatch(header)
    if simple is not None:
        first, last = int(simple.group(1)), int(simple.group(2))
        if last >= first and first < size:
            return [ByteRange(first, min(last + 1, size))]
    shown = header[:80]
    unit, equals, range_set = header.strip(_OWS).partition("=")
    if not equals:
        raise BadRequest(f"malformed Range header {shown!r}: expected bytes=first-last")
    # ranges-specifier = range-unit "=" range-set: no whitespace on either side of "=".
    if not _TOKEN.fullmatch(unit):
        raise BadRequest(f"malformed range unit in Range header {shown!r}")
    if unit.lower() != "bytes":  # range units are case-insensitive (RFC 9110 14.1)
        return None
    if range_set[:1] in (" ", "\t"):
        raise BadRequest(f"whitespace after '=' in Range header {shown!r}")
    # range-set = 1#range-spec. RFC 9110 5.6.1: elements are separated by OWS "," OWS and a
    # recipient ignores empty elements, but at least one range must remain.
    specs = [spec.strip(_OWS) for spec in range_set.split(",")]
    specs = [spec for spec in specs if spec]
    if not specs:
        raise BadRequest(f"Range header {shown!r} names no range")
    # RFC 9110 14.2 lets a server refuse many ranges; counted before parsing so a long
    # header cannot make us parse and hold thousands of them.
    if len(specs) > max_ranges:
        raise BadRequest(f"more than {max_ranges} ranges in one Range header")
    parsed = [_parse_spec(spec, size) for spec in specs]
    ranges = [rng for rng in parsed if rng is not None]
    if not ranges:
        raise RangeNotSatisfiable(f"no range of {shown!r} lies within {size} bytes", size)
    return ranges


def _parse_spec(spec: str, size: int) -> ByteRange | None:
    """One range-spec, clamped to `size`; None when valid but unsatisfiable (RFC 9110 14.1.1)."""
    match = _INT_RANGE.fullmatch(spec)
    if match:
        first = int(match.group(1))
        last = int(match.group(2)) if match.group(2) else None
        # "A range-spec is invalid if the last-pos value is present and less than the
        # first-pos" (RFC 9110 14.1.1): malformed, not merely unsatisfiable.
        if last is not None and last < first:
            raise BadRequest(f"range {spec!r} ends before it starts")
        if first >= size:
            return None
        # A last-pos at or past the end means "up to the end" (RFC 9110 14.1.1).
        stop = size if last is None else min(last + 1, size)
        return ByteRange(first, stop)
    match = _SUFFIX_RANGE.fullmatch(spec)
    if match:
        suffix = int(match.group(1))
        # A suffix of 0 bytes selects nothing; a longer suffix than the representation
        # selects all of it (RFC 9110 14.1.1).
        if suffix == 0 or size == 0:
            return None
        return ByteRange(max(0, size - suffix), size)
    raise BadRequest(f"malformed range {spec[:40]!r}")


def if_range_allows(if_range: str | None, etag: str, last_modified: str | None) -> bool:
    """RFC 9110 13.1.5: True when the Range header should be honoured.

    Absent -> True. An entity-tag must be a well-formed strong tag equal to `etag` (strong
    comparison, 8.8.3.2: a weak W/"..." never matches, nor does a weak `etag`). An HTTP-date
    must denote the same instant as `last_modified` (both parsed; a zoneless date is UTC,
    5.6.7); unparsable, or no `last_modified` -> False. Anything else -> False, which makes
    the caller send the whole representation with 200.
    """
    if if_range is None:
        return True
    value = if_range.strip(_OWS)
    if value.startswith(('"', "W/")):
        return _STRONG_ETAG.fullmatch(value) is not None and value == etag
    if last_modified is None:
        return False
    asked, have = _http_date(value), _http_date(last_modified)
    return asked is not None and asked == have


def _http_date(text: str) -> datetime | None:
    """An HTTP-date as an aware datetime, or None when unparsable."""
    try:
        parsed = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    # asctime-date and "-0000" parse naive; HTTP-dates are always UTC (RFC 9110 5.6.7).
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@dataclass(frozen=True)
class MultipartLayout:
    """The framing of a multipart/byteranges body (RFC 9110 14.6).

    The body is, in order: for each part its header bytes then the bytes of its range; then
    `trailer`. `content_length` is the exact length of that whole body.
    """

    boundary: str
    content_type: str  # 'multipart/byteranges; boundary=...'
    parts: list[tuple[bytes, ByteRange]]  # (header bytes that precede the part's body, range)
    trailer: bytes  # the closing delimiter
    content_length: int


def multipart_layout(
    ranges: list[ByteRange], size: int, part_content_type: str, boundary: str | None = None
) -> MultipartLayout:
    """Lay out a multipart/byteranges body for `ranges` of a `size`-byte representation.

    Each part carries Content-Type `part_content_type` and its Content-Range (RFC 9110 14.6);
    `boundary` defaults to 32 random hex digits, which cannot occur by chance in image data.
    Raises ValueError for no ranges, an empty range or one past `size`, a boundary outside
    [0-9A-Za-z'+_.-]{1,70}, or a content type that is not printable ASCII (it is written
    into the body verbatim).
    """
    if not ranges:
        raise ValueError("a multipart/byteranges body needs at least one range")
    if any(rng.stop > size for rng in ranges):
        raise ValueError(f"a range lies beyond the {size}-byte representation")
    if boundary is None:
        boundary = secrets.token_hex(16)
    if not _BOUNDARY.fullmatch(boundary):
        raise ValueError(f"invalid multipart boundary {boundary!r}")
    if not part_content_type.isascii() or not part_content_type.isprintable():
        raise ValueError(f"invalid part content type {part_content_type!r}")
    # RFC 2046 5.1.1: the CRLF before "--boundary" belongs to the delimiter, so a part's
    # body ends right before the next part's header bytes.
    parts = [
        (
            (
                f"\r\n--{boundary}\r\n"
                f"Content-Type: {part_content_type}\r\n"
                f"Content-Range: {rng.content_range(size)}\r\n\r\n"
            ).encode("ascii"),
            rng,
        )
        for rng in ranges
    ]
    trailer = f"\r\n--{boundary}--\r\n".encode("ascii")
    length = sum(len(header) + rng.length for header, rng in parts) + len(trailer)
    return MultipartLayout(
        boundary=boundary,
        content_type=f"multipart/byteranges; boundary={boundary}",
        parts=parts,
        trailer=trailer,
        content_length=length,
    )
