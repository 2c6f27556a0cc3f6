"""Directory listings of HTTP, FTP and S3 origins as JSON, with the type filter."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from bench.origin import OriginServer
from tests.conftest import MakeService, fetch
from tests.ftp_server import FtpServer
from tests.s3_server import S3Server

FILES = {
    "isos/my disk.iso": b"x" * 1234,
    "isos/Floppy.VFD": b"y" * 17,
    "isos/README": b"z" * 3,
    "isos/disk.qcow2": b"q" * 99,
    "isos/sub/inner.iso": b"i" * 5,
    "isos/ünïcode.iso": b"u" * 8,
    "other/secret.iso": b"s" * 2,
}
EXPECTED = {
    ("my disk.iso", 1234, "iso"),
    ("Floppy.VFD", 17, "vfd"),
    ("README", 3, ""),
    ("disk.qcow2", 99, "qcow2"),
    ("sub", None, "dir"),
    ("ünïcode.iso", 8, "iso"),
}


def as_set(body: bytes) -> set[tuple[str, int | None, str]]:
    return {(e["name"], e["size"], e["type"]) for e in json.loads(body)}


async def check_listing(
    client: aiohttp.ClientSession, base: str, expected: set[tuple[str, int | None, str]] = EXPECTED
) -> None:
    status, headers, body = await fetch(client, base + "isos/")
    assert status == 200, body and headers["Content-Type"].startswith("application/json")
    assert as_set(body) == expected
    status, _, body = await fetch(client, base + "isos/?type=ISO,vfd")
    assert as_set(body) == {e for e in expected if e[2] in ("iso", "vfd", "dir")}
    status, _, body = await fetch(client, base + "isos/sub/")
    assert as_set(body) == {("inner.iso", 5, "iso")}
    status, _, body = await fetch(client, base + "isos/nothing/")
    assert status == 404 and b'"error"' in body
    # (Traversal in the path itself is covered byte for byte in test_bad_requests.)
    status, _, body = await fetch(client, base + "isos/?type=../x")
    assert status == 400 and b'"error"' in body


@pytest.mark.parametrize("style", ["html", "json"])
async def test_http_autoindex(
    origin: OriginServer, make_service: MakeService, client: aiohttp.ClientSession, style: str
) -> None:
    origin.autoindex = style
    for path, data in FILES.items():
        origin.add_file(path, data)
    service = await make_service(origin.url)
    await check_listing(client, service.url + "origins/test/")
    assert not any(e.path.startswith("other") for e in origin.log)


async def test_http_listing_of_10000_entries(
    origin: OriginServer, make_service: MakeService, client: aiohttp.ClientSession
) -> None:
    for number in range(10_000):
        origin.add_file(f"many/f{number:05}.iso", b"")
    service = await make_service(origin.url)
    status, _, body = await fetch(client, service.url + "origins/test/many/?type=iso")
    entries = json.loads(body)
    assert status == 200 and len(entries) == 10_000
    assert entries[0] == {"name": "f00000.iso", "size": 0, "type": "iso"}


@pytest.fixture
def ftp(tmp_path: Path) -> Iterator[FtpServer]:
    root = tmp_path / "ftproot"
    for path, data in FILES.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(data)
    server = FtpServer(root)
    server.start()
    yield server
    server.stop()


async def test_ftp_listing(
    ftp: FtpServer, make_service: MakeService, client: aiohttp.ClientSession
) -> None:
    extra = f'[origins.ftp]\nurl = "{ftp.url()}"\npassword = "{ftp.password}"\n'
    service = await make_service("http://127.0.0.1:9/", extra=extra)
    await check_listing(client, service.url + "origins/ftp/")


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    # Signatures are checked in test_s3.py; see S3Server for why not for listings.
    server = S3Server(enforce_auth=False)
    server.start()
    yield server
    server.stop()


async def test_s3_listing_with_pagination(
    s3: S3Server, make_service: MakeService, client: aiohttp.ClientSession
) -> None:
    s3c = s3.client()
    s3c.create_bucket(Bucket="listing")

    # moto's signature check rejects keys with spaces or non-ASCII characters (its bug, not
    # the signer's: the same request is accepted by AWS), so S3 lists the plain names.
    plain = {p: d for p, d in FILES.items() if p.isascii() and " " not in p}

    def upload() -> None:
        for path, data in plain.items():
            s3c.put_object(Bucket="listing", Key=path, Body=data)
        for number in range(1500):
            s3c.put_object(Bucket="listing", Key=f"bulk/o{number:04}.iso", Body=b"")

    await asyncio.to_thread(upload)
    extra = (
        '[origins.s3]\nurl = "s3://listing/"\n'
        f'endpoint_url = "{s3.endpoint}"\n'
        f'aws_access_key_id = "{s3.key_id}"\naws_secret_access_key = "{s3.secret}"\n'
    )
    service = await make_service("http://127.0.0.1:9/", extra=extra)
    expected = {e for e in EXPECTED if e[0].isascii() and " " not in e[0]}
    await check_listing(client, service.url + "origins/s3/", expected)
    status, _, body = await fetch(client, service.url + "origins/s3/bulk/")
    names = [e["name"] for e in json.loads(body)]
    assert status == 200 and len(names) == 1500 and len(set(names)) == 1500
