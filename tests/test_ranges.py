"""Range parsing (RFC 9110 14.1.2), If-Range, chunk spans and multipart framing: pure logic."""

from __future__ import annotations

import email
import random

import pytest

from isocache.errors import BadRequest, RangeNotSatisfiable
from isocache.ranges import (
    ByteRange,
    if_range_allows,
    multipart_layout,
    parse_range,
    unsatisfied_content_range,
)

VALID = [
    ("bytes=0-0", 10, [(0, 1)]),
    ("bytes=0-9", 10, [(0, 10)]),
    ("bytes=9-9", 10, [(9, 10)]),
    ("bytes=3-", 10, [(3, 10)]),
    ("bytes=-3", 10, [(7, 10)]),
    ("bytes=-30", 10, [(0, 10)]),
    ("bytes=5-100", 10, [(5, 10)]),
    ("bytes=0-0", 1, [(0, 1)]),
    ("Bytes=1-2", 10, [(1, 3)]),
    ("BYTES=1-2", 10, [(1, 3)]),
    ("bytes=1-2,4-5", 10, [(1, 3), (4, 6)]),
    ("bytes=4-5,1-2", 10, [(4, 6), (1, 3)]),  # order kept
    ("bytes=1-2, 4-5", 10, [(1, 3), (4, 6)]),
    ("bytes=1-2 ,\t4-5", 10, [(1, 3), (4, 6)]),
    ("bytes=1-2,,4-5,", 10, [(1, 3), (4, 6)]),  # empty list elements ignored
    ("bytes=1-2,50-60", 10, [(1, 3)]),  # the unsatisfiable one dropped
    ("bytes=0-1,0-1", 10, [(0, 2), (0, 2)]),
    ("  bytes=2-3  ", 10, [(2, 4)]),
]


@pytest.mark.parametrize(("header", "size", "expected"), VALID)
def test_valid(header: str, size: int, expected: list[tuple[int, int]]) -> None:
    assert parse_range(header, size) == [ByteRange(a, b) for a, b in expected]


MALFORMED = [
    "bytes=",
    "bytes",
    "bytes=,",
    "bytes= , ",
    "bytes=-",
    "bytes=--5",
    "bytes=5-1",
    "bytes=a-b",
    "bytes=1-2-3",
    "bytes=0x10-20",
    "bytes=+1-2",
    "bytes=1_0-20",
    "bytes=１-2",
    "bytes=٠-1",
    "bytes=0-1;2-3",
    "bytes=0-1 2-3",
    "bytes=1 -2",
    "bytes=1- 2",
    "bytes=1\t-2",
    "bytes=12345678901234567890-",
    "bytes=-12345678901234567890",
    "bytes=0-12345678901234567890",
    "bytes=0-1,zz",
    "bytes=0.5-1",
    "bytes=-1.5",
    "bytes=1e3-2e3",
    "bytes==0-1",
    "bytes=0--1",
    "=0-1",
    "bytes 0-1",
    "bytes:0-1",
    "bytes=0-1\x00",
    "bytes=\x001-2",
    "bytes=0-1\x7f",
    "by tes=0-1",
    "bytes=1-2,\n3-4",
    "bytes=ⅰ-2",
]


@pytest.mark.parametrize("header", MALFORMED)
def test_malformed_is_bad_request(header: str) -> None:
    with pytest.raises(BadRequest):
        parse_range(header, 100)


@pytest.mark.parametrize(
    ("header", "size"),
    [
        ("bytes=10-", 10),
        ("bytes=10-20", 10),
        ("bytes=-0", 10),
        ("bytes=0-0", 0),
        ("bytes=-5", 0),
        ("bytes=20-30,40-", 10),
    ],
)
def test_unsatisfiable(header: str, size: int) -> None:
    with pytest.raises(RangeNotSatisfiable) as caught:
        parse_range(header, size)
    assert caught.value.size == size
    assert unsatisfied_content_range(size) == f"bytes */{size}"


@pytest.mark.parametrize("header", [None, "items=0-1", "none=1", "pages=1-2"])
def test_whole_representation(header: str | None) -> None:
    assert parse_range(header, 10) is None


def test_too_many_ranges() -> None:
    with pytest.raises(BadRequest):
        parse_range("bytes=" + ",".join(["0-0"] * 65), 10)
    assert len(parse_range("bytes=" + ",".join(["0-0"] * 64), 10) or []) == 64


def test_random_ranges_match_slicing() -> None:
    rng = random.Random(1234)
    for _ in range(500):
        size = rng.randrange(1, 5000)
        data = rng.randbytes(size)
        if rng.random() < 0.7:
            first = rng.randrange(size)
            last = first + rng.randrange(2 * size)
            header, want = f"bytes={first}-{last}", data[first : last + 1]
        else:
            suffix = rng.randrange(1, 2 * size)
            header, want = f"bytes=-{suffix}", data[-suffix:]
        (result,) = parse_range(header, size) or []
        assert data[result.start : result.stop] == want, header
        assert result.content_range(size) == f"bytes {result.start}-{result.stop - 1}/{size}"


ETAG = '"abc"'
DATE = "Tue, 24 Nov 2026 10:00:00 GMT"


@pytest.mark.parametrize(
    ("if_range", "allowed"),
    [
        (None, True),
        (ETAG, True),
        ('"abd"', False),
        ('W/"abc"', False),  # weak tags never match (strong comparison)
        (DATE, True),
        ("Tue, 24 Nov 2026 10:00:01 GMT", False),
        ("not a date", False),
        ("", False),
    ],
)
def test_if_range(if_range: str | None, allowed: bool) -> None:
    assert if_range_allows(if_range, ETAG, DATE) is allowed


def test_if_range_date_without_last_modified() -> None:
    assert if_range_allows(DATE, ETAG, None) is False


@pytest.mark.parametrize(
    ("start", "stop", "expected"),
    [
        (0, 1, range(0, 1)),
        (0, 100, range(0, 1)),
        (99, 101, range(0, 2)),
        (100, 200, range(1, 2)),
        (100, 201, range(1, 3)),
        (5, 5, range(0)),
    ],
)
def test_chunk_indexes(start: int, stop: int, expected: range) -> None:
    assert ByteRange(start, stop).chunk_indexes(100) == expected


def test_multipart_layout_parses_back() -> None:
    data = random.Random(5).randbytes(1000)
    ranges = [ByteRange(0, 10), ByteRange(500, 600), ByteRange(990, 1000)]
    layout = multipart_layout(ranges, len(data), "application/octet-stream")
    body = b"".join(header + data[r.start : r.stop] for header, r in layout.parts) + layout.trailer
    assert len(body) == layout.content_length
    message = email.message_from_bytes(
        f"Content-Type: {layout.content_type}\r\n\r\n".encode() + body
    )
    parts = message.get_payload()
    assert isinstance(parts, list) and len(parts) == 3
    for part, rng in zip(parts, ranges, strict=True):
        assert part["Content-Range"] == rng.content_range(len(data))
        assert part.get_payload(decode=True) == data[rng.start : rng.stop]
