"""FTP origins against a real FTP server (pyftpdlib) on loopback."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from bench.origin import generate_image
from isocache.service import Service
from tests.conftest import CHUNK, MakeService, fetch
from tests.ftp_server import FtpServer

SIZE = 12 * CHUNK + 321
PASSWORD = "s3cret-pw"


@pytest.fixture
def ftp(tmp_path: Path) -> Iterator[FtpServer]:
    logging.getLogger("pyftpdlib").setLevel(logging.WARNING)
    root = tmp_path / "ftproot"
    (root / "isos").mkdir(parents=True)
    (root / "isos" / "disk.iso").write_bytes(generate_image(SIZE, seed=80))
    server = FtpServer(root, password=PASSWORD)
    server.start()
    yield server
    server.stop()


async def ftp_service(
    make_service: MakeService, ftp: FtpServer, password: str = PASSWORD
) -> Service:
    origin = f'[origins.ftp]\nurl = "{ftp.url()}isos/"\npassword = "{password}"\n'
    return await make_service("http://127.0.0.1:9/", extra=origin)


async def assert_random_ranges(
    client: aiohttp.ClientSession, url: str, data: bytes, rng: random.Random, count: int
) -> None:
    """`count` random ranges of up to 3 chunks, then the whole image: all byte-exact."""
    for _ in range(count):
        first = rng.randrange(len(data))
        last = min(len(data) - 1, first + rng.randrange(3 * CHUNK))
        status, _, body = await fetch(client, url, {"Range": f"bytes={first}-{last}"})
        assert (status, body) == (206, data[first : last + 1])
    status, _, body = await fetch(client, url)
    assert (status, body) == (200, data)


@pytest.mark.parametrize("warm", [False, True], ids=["miss", "hit"])
async def test_ranges_are_byte_exact(
    ftp: FtpServer, make_service: MakeService, client: aiohttp.ClientSession, warm: bool
) -> None:
    data = generate_image(SIZE, seed=80)
    service = await ftp_service(make_service, ftp)
    url = service.url + "origins/ftp/disk.iso"
    if warm:
        assert (await fetch(client, url))[2] == data
    await assert_random_ranges(client, url, data, random.Random(81), 40)
    async with client.head(url) as resp:
        assert resp.headers["Content-Length"] == str(SIZE)
        assert resp.headers["Accept-Ranges"] == "bytes"


async def test_concurrent_misses_fetch_each_chunk_once(
    ftp: FtpServer, make_service: MakeService, client: aiohttp.ClientSession
) -> None:
    data = generate_image(SIZE, seed=80)
    service = await ftp_service(make_service, ftp)
    url = service.url + "origins/ftp/disk.iso"
    first, last = CHUNK + 7, 4 * CHUNK - 7  # chunks 1..3
    results = await asyncio.gather(
        *(fetch(client, url, {"Range": f"bytes={first}-{last}"}) for _ in range(16))
    )
    assert all(r[0] == 206 and r[2] == data[first : last + 1] for r in results)
    assert [(Path(r.path).name, r.offset) for r in ftp.log.retrs] == [("disk.iso", CHUNK)]


async def test_drop_mid_transfer_resumes(
    ftp: FtpServer, make_service: MakeService, client: aiohttp.ClientSession
) -> None:
    data = generate_image(SIZE, seed=80)
    service = await ftp_service(make_service, ftp)
    url = service.url + "origins/ftp/disk.iso"
    ftp.log.drop_after = CHUNK + 1000
    status, _, body = await fetch(client, url, {"Range": f"bytes=0-{4 * CHUNK - 1}"})
    assert (status, body) == (206, data[: 4 * CHUNK])
    offsets = [r.offset for r in ftp.log.retrs]
    assert offsets[0] == 0 and len(offsets) == 2
    assert 0 < offsets[1] <= CHUNK + 1000  # resumed from the last good byte, not from 0


async def test_wrong_password_is_502_without_the_password(
    ftp: FtpServer,
    make_service: MakeService,
    client: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "not-the-password-42"
    service = await ftp_service(make_service, ftp, password=wrong)
    status, headers, body = await fetch(client, service.url + "origins/ftp/disk.iso")
    assert status == 502
    assert headers["Content-Type"].startswith("application/json")
    assert b"refused the login" in body
    assert wrong.encode() not in body
    assert wrong not in caplog.text


async def test_missing_file_is_404(
    ftp: FtpServer, make_service: MakeService, client: aiohttp.ClientSession
) -> None:
    service = await ftp_service(make_service, ftp)
    status, _, body = await fetch(client, service.url + "origins/ftp/nope.iso")
    assert status == 404 and b'"error"' in body


@pytest.fixture
def ftps(tmp_path: Path, test_ca: tuple[Path, Path]) -> Iterator[FtpServer]:
    logging.getLogger("pyftpdlib").setLevel(logging.WARNING)
    root = tmp_path / "ftpsroot"
    (root / "isos").mkdir(parents=True)
    (root / "isos" / "disk.iso").write_bytes(generate_image(SIZE, seed=82))
    server = FtpServer(root, password=PASSWORD, tls_certfile=test_ca[1])
    server.start()
    yield server
    server.stop()


async def ftps_service(make_service: MakeService, ftps: FtpServer, ca_file: Path | None) -> Service:
    trust = f'ca_file = "{ca_file}"\n' if ca_file else ""
    origin = f'[origins.ftps]\nurl = "{ftps.url()}isos/"\npassword = "{PASSWORD}"\n{trust}'
    return await make_service("http://127.0.0.1:9/", extra=origin)


async def test_ftps_reads_over_tls_control_and_data(
    ftps: FtpServer,
    test_ca: tuple[Path, Path],
    make_service: MakeService,
    client: aiohttp.ClientSession,
) -> None:
    data = generate_image(SIZE, seed=82)
    service = await ftps_service(make_service, ftps, ca_file=test_ca[0])
    url = service.url + "origins/ftps/disk.iso"
    await assert_random_ranges(client, url, data, random.Random(83), 10)
    commands = [c for c, _ in ftps.log.commands]
    # TLS before the password goes out, and the data connections protected.
    assert commands.index("AUTH") < commands.index("USER") < commands.index("PASS")
    assert ("PBSZ", "0") in ftps.log.commands and ("PROT", "P") in ftps.log.commands
    assert ftps.log.retrs  # the server sent the bytes (tls_data_required: only over TLS)


async def test_ftps_with_an_untrusted_certificate_is_502_before_login(
    ftps: FtpServer, make_service: MakeService, client: aiohttp.ClientSession
) -> None:
    service = await ftps_service(make_service, ftps, ca_file=None)  # the system's CAs
    status, headers, body = await fetch(client, service.url + "origins/ftps/disk.iso")
    assert status == 502
    assert headers["Content-Type"].startswith("application/json")
    assert b"TLS certificate not trusted" in body
    # Not retried, and nothing after AUTH TLS: no USER, no PASS, no RETR.
    assert [c for c, _ in ftps.log.commands] == ["AUTH"]
    assert ftps.log.retrs == []
