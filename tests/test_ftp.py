"""FTP origins against a real FTP server (pyftpdlib) on loopback."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Iterator
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
    make_service: MakeService,
    ftp: FtpServer,
    password: str = PASSWORD,
    fetch: dict[str, str] | None = None,
    origin_extra: str = "",
) -> Service:
    origin = f'[origins.ftp]\nurl = "{ftp.url()}isos/"\npassword = "{password}"\n{origin_extra}'
    return await make_service("http://127.0.0.1:9/", extra=origin, fetch=fetch)


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


# -- pooled sessions the server has ended or forgotten ---------------------------------------

POOL_FILES = 4
POOL_SIZE = 3 * CHUNK + 99


async def wait_for(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def pool_sessions(
    ftp: FtpServer, client: aiohttp.ClientSession, url: str
) -> dict[str, bytes]:
    """Read the second half of POOL_FILES files concurrently: the stats and the reads (to the
    end of each file, so their sessions are kept) leave several logged-in sessions pooled."""
    files = {}
    for i in range(POOL_FILES + 1):
        data = generate_image(POOL_SIZE, seed=90 + i)
        (ftp.root / "isos" / f"d{i}.iso").write_bytes(data)
        files[f"d{i}.iso"] = data
    half = POOL_SIZE // 2
    results = await asyncio.gather(
        *(fetch(client, f"{url}d{i}.iso", {"Range": f"bytes={half}-"}) for i in range(POOL_FILES))
    )
    for i, (status, _, body) in enumerate(results):
        assert (status, body) == (206, files[f"d{i}.iso"][half:])
    assert ftp.sessions() >= 2  # several sessions stay open, pooled
    return files


async def read_heads_and_a_new_file(
    client: aiohttp.ClientSession, url: str, files: dict[str, bytes]
) -> None:
    """Uncached heads of the resolved files (reads only), then a file never seen (stat +
    read), one after another so that each may meet the pool's dead sessions: all exact."""
    half = POOL_SIZE // 2
    for i in range(POOL_FILES):
        status, _, body = await fetch(client, f"{url}d{i}.iso", {"Range": f"bytes=0-{half - 1}"})
        assert (status, body) == (206, files[f"d{i}.iso"][:half]), body[:200]
    status, _, body = await fetch(client, f"{url}d{POOL_FILES}.iso")
    assert (status, body) == (200, files[f"d{POOL_FILES}.iso"]), body[:200]


@pytest.mark.parametrize("retries", ["0", "1"])
async def test_sessions_the_server_ended_are_replaced_without_spending_retries(
    ftp: FtpServer, make_service: MakeService, client: aiohttp.ClientSession, retries: str
) -> None:
    service = await ftp_service(make_service, ftp, fetch={"retries": retries})
    url = service.url + "origins/ftp/"
    files = await pool_sessions(ftp, client, url)
    # The server's idle timeout ends every session: 421, then it closes the connection.
    assert ftp.drop_sessions() >= 2
    await wait_for(lambda: ftp.sessions() == 0, "the server to close its sessions")
    logins = ftp.logins()
    await read_heads_and_a_new_file(client, url, files)
    assert ftp.logins() > logins  # fresh logins replaced the dead sessions


async def test_a_silently_stalled_session_is_replaced_after_one_read_timeout(
    ftp: FtpServer, make_service: MakeService, client: aiohttp.ClientSession
) -> None:
    read_timeout = 2.0  # tests.conftest's [fetch] read_timeout
    service = await ftp_service(make_service, ftp, fetch={"retries": "0"})
    url = service.url + "origins/ftp/"
    files = await pool_sessions(ftp, client, url)
    stalled = ftp.stall_sessions()  # open, but never another reply
    assert stalled >= 2
    logins = ftp.logins()
    started = time.monotonic()
    status, _, body = await fetch(client, f"{url}d0.iso", {"Range": "bytes=0-99"})
    elapsed = time.monotonic() - started
    assert (status, body) == (206, files["d0.iso"][:100])
    # One read timeout on the first stalled session, then a fresh login; the other stalled
    # sessions, idle as long or longer, are not tried one after another.
    assert read_timeout <= elapsed < read_timeout + 1.5
    assert ftp.logins() == logins + 1
    # isocache closed every stalled session (and spent the fresh one on a partial RETR).
    await wait_for(lambda: ftp.sessions() == 0, "isocache to close the stalled sessions")


async def test_sessions_idle_past_the_limit_are_not_reused(
    ftp: FtpServer, make_service: MakeService, client: aiohttp.ClientSession
) -> None:
    service = await ftp_service(
        make_service, ftp, fetch={"retries": "0"}, origin_extra='idle_timeout = "0s"\n'
    )
    url = service.url + "origins/ftp/"
    files = await pool_sessions(ftp, client, url)
    assert ftp.stall_sessions() >= 2
    started = time.monotonic()
    status, _, body = await fetch(client, f"{url}d1.iso", {"Range": "bytes=0-99"})
    assert (status, body) == (206, files["d1.iso"][:100])
    assert time.monotonic() - started < 1.0  # no stalled session was tried: no read timeout
