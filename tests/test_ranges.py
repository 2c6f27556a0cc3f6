"""Range parsing (RFC 9110 14.1.2), If-Range, chunk spans and multipart framing: pure logic."""

from __future__ import annotations

import email
import random
import re

import pytest

from isocache.errors import BadRequest, RangeNotSatisfiable
from isocache.ranges import (
    ByteRange,
    if_range_allows,
    multipart_layout,
    parse_range,
    unsatisfied_content_range,
)

# (header, size, expected half-open ranges)
VALID = [
    ("bytes=0-0", 10, [(0, 1)]),  # first byte
    ("bytes=9-9", 10, [(9, 10)]),  # last byte
    ("bytes=0-9", 10, [(0, 10)]),  # whole file, explicitly
    ("bytes=0-", 10, [(0, 10)]),  # whole file, open-ended
    ("bytes=-10", 10, [(0, 10)]),  # whole file, as a suffix
    ("bytes=3-", 10, [(3, 10)]),
    ("bytes=9-", 10, [(9, 10)]),
    ("bytes=-3", 10, [(7, 10)]),
    ("bytes=-1", 10, [(9, 10)]),
    ("bytes=-30", 10, [(0, 10)]),  # suffix longer than the representation
    ("bytes=2-5", 10, [(2, 6)]),
    ("bytes=5-100", 10, [(5, 10)]),  # clamped
    ("bytes=0-9999999999999999999", 10, [(0, 10)]),  # 19 digits: accepted, clamped
    ("bytes=007-008", 10, [(7, 9)]),  # leading zeros are still 1*DIGIT
    ("bytes=0-0", 1, [(0, 1)]),  # 1-byte image
    ("bytes=-1", 1, [(0, 1)]),
    ("bytes=0-", 1, [(0, 1)]),
    ("bytes=-5", 1, [(0, 1)]),
    ("Bytes=1-2", 10, [(1, 3)]),
    ("BYTES=1-2", 10, [(1, 3)]),
    ("bYtEs=1-2", 10, [(1, 3)]),
    ("bytes=1-2,4-5", 10, [(1, 3), (4, 6)]),
    ("bytes=4-5,1-2", 10, [(4, 6), (1, 3)]),  # order kept
    ("bytes=-2,0-0", 10, [(8, 10), (0, 1)]),
    ("bytes=0-5,3-8", 10, [(0, 6), (3, 9)]),  # overlaps not merged
    ("bytes=0-1,0-1", 10, [(0, 2), (0, 2)]),  # duplicates not merged
    ("bytes=1-2, 4-5", 10, [(1, 3), (4, 6)]),
    ("bytes=1-2 ,\t4-5", 10, [(1, 3), (4, 6)]),
    ("bytes=1-2 \t, \t4-5", 10, [(1, 3), (4, 6)]),
    ("bytes=1-2,,4-5,", 10, [(1, 3), (4, 6)]),  # empty list elements ignored
    ("bytes=,1-2", 10, [(1, 3)]),
    ("bytes=1-2, ,4-5", 10, [(1, 3), (4, 6)]),
    ("bytes=1-2,50-60", 10, [(1, 3)]),  # the unsatisfiable one dropped
    ("bytes=-0,1-2", 10, [(1, 3)]),
    ("  bytes=2-3  ", 10, [(2, 4)]),  # OWS around the whole value
    ("\tbytes=2-3\t", 10, [(2, 4)]),
]


@pytest.mark.parametrize(("header", "size", "expected"), VALID)
def test_valid(header: str, size: int, expected: list[tuple[int, int]]) -> None:
    assert parse_range(header, size) == [ByteRange(a, b) for a, b in expected]


MALFORMED = [
    # no range at all
    "bytes=",
    "bytes",
    "bytes=,",
    "bytes=,,",
    "bytes= , ",
    "bytes=\t",
    # whitespace around "=" or inside a range-spec
    "bytes =0-1",
    "bytes= 0-1",
    "bytes\t=0-1",
    "bytes=1 -2",
    "bytes=1- 2",
    "bytes=1\t-2",
    "bytes=1\t0-20",  # tab inside a number
    "bytes=1 0-20",
    "bytes=0-1\t0",
    "bytes=0-1 2-3",
    # not the int-range or suffix-range grammar
    "bytes=-",
    "bytes=--5",
    "bytes=0--1",
    "bytes=1",
    "bytes=1-2-3",
    "bytes=a-b",
    "bytes=0x10-20",
    "bytes=-0x1",
    "bytes=0.5-1",
    "bytes=-1.5",
    "bytes=1e3-2e3",
    "bytes=0-1,zz",
    "bytes=0-1,-",
    "bytes=0-1;2-3",
    "bytes=(0-1)",
    # last before first
    "bytes=5-1",
    "bytes=0-1,5-1",
    "bytes=50-60,5-1",  # malformed wins over unsatisfiable
    # what int(), str.isdigit() or \d would accept
    "bytes=+1-2",
    "bytes=1-+2",
    "bytes=-+1",
    "bytes=1_0-20",
    "bytes=0-1_0",
    "bytes=１-2",  # fullwidth digit
    "bytes=٠-1",  # Arabic-Indic digit
    "bytes=0-٣",
    "bytes=𝟏-2",  # mathematical bold digit
    "bytes=¹-2",  # superscript: isdigit() but not int()
    "bytes=ⅰ-2",  # roman numeral
    # more than 19 digits
    "bytes=12345678901234567890-",
    "bytes=-12345678901234567890",
    "bytes=0-12345678901234567890",
    "bytes=00000000000000000000-1",
    # control characters and non-ASCII
    "bytes=0-1\x00",
    "bytes=\x001-2",
    "bytes=0-1\x7f",
    "bytes=0-1\r\n",
    "bytes=1-2,\n3-4",
    "bytes=0-1\u00a0",  # no-break space is not OWS
    "bytes=\u20030-1",
    # not a ranges-specifier
    "bytes==0-1",
    "=0-1",
    "bytes 0-1",
    "bytes:0-1",
    "by tes=0-1",
    "bytés=0-1",
    "none",
    "",
]


@pytest.mark.parametrize("header", MALFORMED)
def test_malformed_is_bad_request(header: str) -> None:
    with pytest.raises(BadRequest):
        parse_range(header, 100)


def test_malformed_table_is_big_enough() -> None:
    assert len(MALFORMED) >= 35
    assert len(set(MALFORMED)) == len(MALFORMED)


@pytest.mark.parametrize(
    ("header", "size"),
    [
        ("bytes=10-", 10),
        ("bytes=10-10", 10),
        ("bytes=10-20", 10),
        ("bytes=9999999999999999999-", 10),
        ("bytes=-0", 10),
        ("bytes=-00", 10),
        ("bytes=20-30,40-,-0", 10),
        ("bytes=0-0", 0),  # any range of an empty representation
        ("bytes=0-", 0),
        ("bytes=-5", 0),
        ("bytes=-0", 0),
    ],
)
def test_unsatisfiable(header: str, size: int) -> None:
    with pytest.raises(RangeNotSatisfiable) as caught:
        parse_range(header, size)
    assert caught.value.size == size
    assert caught.value.status == 416


@pytest.mark.parametrize("size", [0, 1, 1000, 2**40])
def test_unsatisfied_content_range(size: int) -> None:
    assert unsatisfied_content_range(size) == f"bytes */{size}"


@pytest.mark.parametrize(
    "header", [None, "items=0-1", "Items=5-", "pages=1-2", "none=1", "items=garbage", "x=\x00"]
)
def test_whole_representation(header: str | None) -> None:
    assert parse_range(header, 10) is None


def test_too_many_ranges() -> None:
    with pytest.raises(BadRequest):
        parse_range("bytes=" + ",".join(["0-0"] * 65), 10)
    assert len(parse_range("bytes=" + ",".join(["0-0"] * 64), 10) or []) == 64
    # Unsatisfiable ranges count too; empty list elements do not.
    with pytest.raises(BadRequest):
        parse_range("bytes=0-0," + ",".join(["50-60"] * 64), 10)
    assert len(parse_range("bytes=" + ",,".join(["0-0"] * 64), 10) or []) == 64
    with pytest.raises(BadRequest):
        parse_range("bytes=0-0,1-1,2-2", 10, max_ranges=2)


def _expected_slice(data: bytes, spec: tuple[int, int | None] | int) -> bytes:
    """What a range-spec selects, computed by slicing alone (no clamping arithmetic)."""
    if isinstance(spec, int):  # suffix: the first `spec` bytes of the reversed data
        return data[::-1][:spec][::-1]
    first, last = spec
    return data[first:] if last is None else data[first : last + 1]


def test_random_ranges_match_slicing() -> None:
    rng = random.Random(1234)
    for _ in range(500):
        size = rng.choice([0, 1, 2, rng.randrange(1, 5000)])
        data = rng.randbytes(size)
        specs: list[tuple[int, int | None] | int] = []
        texts = []
        for _ in range(rng.choice([1, 1, 1, 2, 3])):
            if rng.random() < 0.6:  # int-range, sometimes open or starting past the end
                first = rng.randrange(2 * size + 2)
                last = None if rng.random() < 0.2 else first + rng.randrange(2 * size + 2)
                specs.append((first, last))
                texts.append(f"{first}-" if last is None else f"{first}-{last}")
            else:  # suffix-range, sometimes 0 or longer than the data
                suffix = rng.randrange(2 * size + 2)
                specs.append(suffix)
                texts.append(f"-{suffix}")
        header = "bytes=" + ",".join(texts)
        wanted = [_expected_slice(data, spec) for spec in specs]
        wanted = [piece for piece in wanted if piece]
        if not wanted:
            with pytest.raises(RangeNotSatisfiable):
                parse_range(header, size)
            continue
        result = parse_range(header, size)
        assert result is not None, header
        assert [data[r.start : r.stop] for r in result] == wanted, header
        for r in result:
            assert 0 <= r.start < r.stop <= size, header
            assert r.length == r.stop - r.start
            assert r.content_range(size) == f"bytes {r.start}-{r.stop - 1}/{size}"


ETAG = '"abc"'
DATE = "Tue, 24 Nov 2026 10:00:00 GMT"


@pytest.mark.parametrize(
    ("if_range", "allowed"),
    [
        (None, True),
        (ETAG, True),
        (f" {ETAG}\t", True),
        ('"abd"', False),
        ('"ABC"', False),
        ('W/"abc"', False),  # weak tags never match (strong comparison)
        ('w/"abc"', False),
        ('"abc', False),
        ("abc", False),
        ('"abc", "def"', False),
        ("*", False),
        (DATE, True),
        ("Tuesday, 24-Nov-26 10:00:00 GMT", True),  # RFC 850 form, same instant
        ("Tue Nov 24 10:00:00 2026", True),  # asctime form is UTC
        ("Tue, 24 Nov 2026 10:00:01 GMT", False),
        ("Tue, 24 Nov 2026 09:59:59 GMT", False),
        ("Wed, 25 Nov 2026 10:00:00 GMT", False),
        ("not a date", False),
        ("Tue, 99 Nov 2026 10:00:00 GMT", False),
        ("", False),
    ],
)
def test_if_range(if_range: str | None, allowed: bool) -> None:
    assert if_range_allows(if_range, ETAG, DATE) is allowed


def test_if_range_date_needs_a_parsable_last_modified() -> None:
    assert if_range_allows(DATE, ETAG, None) is False
    assert if_range_allows(DATE, ETAG, "yesterday") is False
    assert if_range_allows("yesterday", ETAG, "yesterday") is False


def test_if_range_weak_etag_of_ours_never_matches() -> None:
    assert if_range_allows('W/"abc"', 'W/"abc"', None) is False
    assert if_range_allows('"abc"', 'W/"abc"', None) is False


@pytest.mark.parametrize(
    ("start", "stop", "expected"),
    [
        (0, 1, range(0, 1)),
        (0, 100, range(0, 1)),  # ends exactly on a boundary
        (0, 101, range(0, 2)),
        (99, 100, range(0, 1)),
        (99, 101, range(0, 2)),  # straddles a boundary
        (100, 200, range(1, 2)),
        (100, 201, range(1, 3)),
        (150, 160, range(1, 2)),  # within one chunk
        (0, 1000, range(0, 10)),
        (5, 5, range(0)),  # empty
        (100, 100, range(0)),
        (0, 0, range(0)),
    ],
)
def test_chunk_indexes(start: int, stop: int, expected: range) -> None:
    assert ByteRange(start, stop).chunk_indexes(100) == expected


def test_chunk_indexes_rejects_bad_chunk_size() -> None:
    with pytest.raises(ValueError):
        ByteRange(0, 10).chunk_indexes(0)


@pytest.mark.parametrize(("start", "stop"), [(-1, 5), (5, 4)])
def test_byte_range_rejects_inverted_or_negative(start: int, stop: int) -> None:
    with pytest.raises(ValueError):
        ByteRange(start, stop)


def test_content_range() -> None:
    assert ByteRange(0, 100).content_range(1000) == "bytes 0-99/1000"
    assert ByteRange(999, 1000).content_range(1000) == "bytes 999-999/1000"
    assert ByteRange(5, 5).length == 0
    with pytest.raises(ValueError):
        ByteRange(5, 5).content_range(1000)


def _assemble(layout_parts: list[tuple[bytes, ByteRange]], trailer: bytes, data: bytes) -> bytes:
    """The body exactly as the writer sends it: part header, part body, ..., trailer."""
    return b"".join(header + data[r.start : r.stop] for header, r in layout_parts) + trailer


@pytest.mark.parametrize("boundary", [None, "3d6b6a416f9b5", "a" * 70])
def test_multipart_layout_parses_back(boundary: str | None) -> None:
    data = random.Random(5).randbytes(1000)
    # Out of order and overlapping on purpose; data contains CR, LF and "--" by chance.
    ranges = [ByteRange(990, 1000), ByteRange(0, 10), ByteRange(500, 600), ByteRange(0, 1)]
    layout = multipart_layout(ranges, len(data), "application/octet-stream", boundary)
    if boundary is None:
        assert re.fullmatch(r"[0-9a-f]{32}", layout.boundary)
    else:
        assert layout.boundary == boundary
    assert layout.content_type == f"multipart/byteranges; boundary={layout.boundary}"
    assert [r for _, r in layout.parts] == ranges
    body = _assemble(layout.parts, layout.trailer, data)
    assert len(body) == layout.content_length
    assert layout.trailer == f"\r\n--{layout.boundary}--\r\n".encode()
    for header, r in layout.parts:
        assert header.startswith(f"\r\n--{layout.boundary}\r\n".encode())
        assert header.endswith(b"\r\n\r\n")
        assert f"\r\nContent-Range: {r.content_range(len(data))}\r\n".encode() in header
        assert b"\r\nContent-Type: application/octet-stream\r\n" in header

    message = email.message_from_bytes(
        f"Content-Type: {layout.content_type}\r\n\r\n".encode() + body
    )
    assert message.get_content_type() == "multipart/byteranges"
    parts = message.get_payload()
    assert isinstance(parts, list) and len(parts) == len(ranges)
    for part, r in zip(parts, ranges, strict=True):
        assert part["Content-Range"] == f"bytes {r.start}-{r.stop - 1}/{len(data)}"
        assert part.get_content_type() == "application/octet-stream"
        assert part.get_payload(decode=True) == data[r.start : r.stop]


def test_multipart_default_boundaries_differ() -> None:
    ranges = [ByteRange(0, 1), ByteRange(2, 3)]
    boundaries = {multipart_layout(ranges, 10, "text/plain").boundary for _ in range(20)}
    assert len(boundaries) == 20


@pytest.mark.parametrize(
    ("ranges", "content_type", "boundary"),
    [
        ([], "application/octet-stream", "b"),
        ([ByteRange(0, 1), ByteRange(3, 3)], "application/octet-stream", "b"),
        ([ByteRange(0, 11)], "application/octet-stream", "b"),  # past size
        ([ByteRange(0, 1)], "application/octet-stream", ""),
        ([ByteRange(0, 1)], "application/octet-stream", "a" * 71),
        ([ByteRange(0, 1)], "application/octet-stream", "a b"),
        ([ByteRange(0, 1)], "application/octet-stream", "a\r\nb"),
        ([ByteRange(0, 1)], "text/plain\r\nX-Injected: 1", "b"),
        ([ByteRange(0, 1)], "text/plän", "b"),
    ],
)
def test_multipart_layout_rejects(
    ranges: list[ByteRange], content_type: str, boundary: str
) -> None:
    with pytest.raises(ValueError):
        multipart_layout(ranges, 10, content_type, boundary)
