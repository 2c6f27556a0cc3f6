"""file:// origins: a real directory tree in tmp_path, served through a real Service.

Byte-exact ranges on miss and hit, coalesced cold readers, listings, confinement (dot
segments, encoded separators, symlinks that leave the tree), versions (rewrite, vanish),
a stalled read (a FIFO: its open blocks) that is a 504 for that request alone, and
cache = false (sendfile from the file, nothing stored).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import re
import shutil
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bench.origin import generate_image
from isocache.config import ConfigError, parse_config_text
from isocache.errors import OriginChanged
from isocache.origins import file as file_module
from isocache.origins.file import FileOrigin
from isocache.service import Service
from tests.conftest import MiB, fetch
from tests.test_qemu import run as run_qemu

SIZE = 3 * MiB + 12345
DATA = generate_image(SIZE, seed=12)
QEMU_SIZE = 12 * MiB + 4096 * 3  # whole 4 KiB sectors, not whole chunks
SECRET = b"outside-the-tree " * 100

FileService = Callable[..., Coroutine[Any, Any, Service]]


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """The origin's tree, with symlinks in and out of it, and a directory outside."""
    root = tmp_path / "tree"
    outside = tmp_path / "outside"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret.iso").write_bytes(SECRET)
    # Anything that opened this for reading would hang: its 403 shows it was never opened.
    os.mkfifo(outside / "trap.iso")
    (root / "x.img").write_bytes(DATA)
    (root / "my disk.iso").write_bytes(b"i" * 1234)
    (root / "Floppy.VFD").write_bytes(b"f" * 17)
    (root / "README").write_bytes(b"r" * 3)
    (root / "sub" / "inner.iso").write_bytes(b"n" * 5)
    (root / "ünïcode.iso").write_bytes(b"u" * 8)
    (root / "in-link.img").symlink_to("x.img")  # relative, inside
    (root / "abs-link.img").symlink_to(root / "x.img")  # absolute, inside
    (root / "sub" / "up-link.iso").symlink_to("../my disk.iso")  # up, still inside
    (root / "passwd.iso").symlink_to("/etc/passwd")
    (root / "secret.iso").symlink_to(outside / "secret.iso")
    (root / "trap.iso").symlink_to(outside / "trap.iso")
    (root / "outdir").symlink_to(outside)
    (root / "rel-out.iso").symlink_to("../outside/secret.iso")
    return root


def file_config(
    tree: Path,
    cache_dir: Path,
    *,
    cache: bool = True,
    read_timeout: str = "2s",
    images: dict[str, str] | None = None,
    chunk_size: str = "64KiB",
) -> str:
    lines = [
        "[server]",
        'listen = "127.0.0.1:0"',
        "[cache]",
        f'dir = "{cache_dir}"',
        f'chunk_size = "{chunk_size}"',
        'size_limit = "64MiB"',
        "[fetch]",
        f'read_timeout = "{read_timeout}"',
        "[origins.files]",
        f'url = "file://{tree}/"',
        f"cache = {'true' if cache else 'false'}",
        "threads = 4",
    ]
    for name, path in (images or {}).items():
        lines += [f"[images.{name}]", f'url = "file://{tree}/{path}"']
    return "\n".join(lines) + "\n"


@pytest.fixture
async def file_service(tmp_path: Path) -> AsyncIterator[FileService]:
    started: list[Service] = []

    async def make(tree: Path, **kwargs: Any) -> Service:
        text = file_config(tree, tmp_path / "cache", **kwargs)
        service = Service(parse_config_text(text, source="test.toml"))
        await service.start()
        started.append(service)
        return service

    yield make
    for service in started:
        await service.stop()


async def origin_bytes(client: aiohttp.ClientSession, service: Service) -> float:
    async with client.get(service.url + "metrics") as resp:
        text = await resp.text()
    match = re.search(r'^isocache_origin_bytes_total\{origin="files"\} (\S+)$', text, re.M)
    return float(match.group(1)) if match else 0.0


async def get_range(
    client: aiohttp.ClientSession, url: str, start: int, stop: int
) -> tuple[int, bytes]:
    status, _, body = await fetch(client, url, {"Range": f"bytes={start}-{stop - 1}"})
    return status, body


async def test_random_ranges_exact_on_miss_and_hit(
    tree: Path, file_service: FileService, client: aiohttp.ClientSession
) -> None:
    service = await file_service(tree)
    url = service.url + "origins/files/x.img"
    rng = random.Random(7)
    ranges = []
    for _ in range(40):
        start = rng.randrange(SIZE)
        ranges.append((start, min(SIZE, start + rng.randrange(1, 300_000))))
    for start, stop in ranges:
        status, body = await get_range(client, url, start, stop)
        assert status == 206 and body == DATA[start:stop], (start, stop)
    cold = await origin_bytes(client, service)
    assert 0 < cold <= SIZE
    assert service.store.bytes_used > 0
    for start, stop in ranges:  # every chunk is stored now: hits only
        status, body = await get_range(client, url, start, stop)
        assert status == 206 and body == DATA[start:stop], (start, stop)
    assert await origin_bytes(client, service) == cold
    status, headers, body = await fetch(client, url)
    assert status == 200 and body == DATA
    assert headers["Accept-Ranges"] == "bytes" and headers["ETag"].startswith('"')


async def test_eight_cold_readers_read_the_file_once(
    tree: Path, file_service: FileService, client: aiohttp.ClientSession
) -> None:
    service = await file_service(tree)
    url = service.url + "origins/files/x.img"
    results = await asyncio.gather(*(fetch(client, url) for _ in range(8)))
    assert all(status == 200 and body == DATA for status, _, body in results)
    read = await origin_bytes(client, service)
    assert SIZE <= read <= 1.05 * SIZE, read


async def test_symlinks_inside_the_tree_work(
    tree: Path, file_service: FileService, client: aiohttp.ClientSession
) -> None:
    service = await file_service(tree)
    for path in ("in-link.img", "abs-link.img"):
        status, _, body = await fetch(client, service.url + "origins/files/" + path)
        assert status == 200 and body == DATA, path
    status, _, body = await fetch(client, service.url + "origins/files/sub/up-link.iso")
    assert status == 200 and body == b"i" * 1234


@pytest.mark.parametrize("openat2", [True, False], ids=["openat2", "realpath-walk"])
@pytest.mark.parametrize(
    "path",
    [
        "../outside/secret.iso",
        "%2e%2e/outside/secret.iso",
        "sub/%2e%2e/%2e%2e/outside/secret.iso",
        "..%2foutside%2fsecret.iso",
        "sub%2f..%2f..%2foutside%2fsecret.iso",
        "%252e%252e/outside/secret.iso",
        "passwd.iso",
        "secret.iso",
        "trap.iso",
        "rel-out.iso",
        "outdir/secret.iso",
        "outdir/trap.iso",
        "outdir/",
        "outdir",
        "sub/..%5C..%5Coutside/secret.iso",
    ],
)
async def test_escaping_paths_are_refused(
    tree: Path,
    file_service: FileService,
    client: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
    path: str,
    openat2: bool,
) -> None:
    if not openat2:
        monkeypatch.setattr(file_module, "_openat2_works", False)
    elif not file_module._openat2_works:
        pytest.skip("this kernel has no openat2")
    service = await file_service(tree)
    started = time.monotonic()
    status, body = await raw_get(service.port, "/origins/files/" + path)
    # Quick and not a 504: the FIFO outside the tree was never opened.
    assert time.monotonic() - started < 1.5
    error = json.loads(body)
    assert set(error) == {"error", "detail"}
    # Dot segments and encoded separators never reach the tree (400); symlinks out are 403.
    expected = (400, "bad_path") if "%" in path or ".." in path else (403, "forbidden")
    assert (status, error["error"]) == expected, (status, body)
    assert b"root:" not in body and SECRET[:20] not in body
    assert await origin_bytes(client, service) == 0
    assert service.store.bytes_used == 0


async def raw_get(port: int, target: str) -> tuple[int, bytes]:
    """GET `target` byte for byte as given (a client library would normalise "..")."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        response = await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


async def test_listing_with_type_filter(
    tree: Path, file_service: FileService, client: aiohttp.ClientSession
) -> None:
    service = await file_service(tree)
    base = service.url + "origins/files/"
    status, headers, body = await fetch(client, base)
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    entries = {(e["name"], e["size"], e["type"]) for e in json.loads(body)}
    # Symlinks leading outside the tree are left out; those inside are listed as their target.
    assert entries == {
        ("x.img", SIZE, "img"),
        ("my disk.iso", 1234, "iso"),
        ("Floppy.VFD", 17, "vfd"),
        ("README", 3, ""),
        ("sub", None, "dir"),
        ("ünïcode.iso", 8, "iso"),
        ("in-link.img", SIZE, "img"),
        ("abs-link.img", SIZE, "img"),
    }
    status, _, body = await fetch(client, base + "?type=iso,VFD")
    assert status == 200
    assert {(e["name"], e["type"]) for e in json.loads(body)} == {
        ("my disk.iso", "iso"),
        ("Floppy.VFD", "vfd"),
        ("sub", "dir"),
        ("ünïcode.iso", "iso"),
    }
    status, _, body = await fetch(client, base + "sub/")
    assert {(e["name"], e["size"]) for e in json.loads(body)} == {
        ("inner.iso", 5),
        ("up-link.iso", 1234),
    }
    status, _, body = await fetch(client, base + "nothing/")
    assert status == 404 and json.loads(body)["error"] == "image_not_found"
    for escape, expected in [("outdir/", 403), ("%2e%2e/", 400), ("../outside/", 400)]:
        status, body = await raw_get(service.port, "/origins/files/" + escape)
        assert status == expected and "detail" in json.loads(body), escape
        assert b"secret" not in body


async def test_many_entries_are_listed_in_batches(
    tmp_path: Path, file_service: FileService, client: aiohttp.ClientSession
) -> None:
    root = tmp_path / "many"
    root.mkdir()
    for number in range(1000):
        (root / f"f{number:04}.iso").write_bytes(b"")
    service = await file_service(root)
    status, _, body = await fetch(client, service.url + "origins/files/?type=iso")
    names = sorted(e["name"] for e in json.loads(body))
    assert status == 200 and names == [f"f{number:04}.iso" for number in range(1000)]


async def test_rewritten_file_is_served_in_its_new_version_only(
    tree: Path, file_service: FileService, client: aiohttp.ClientSession
) -> None:
    service = await file_service(tree)
    url = service.url + "origins/files/x.img"
    status, body = await get_range(client, url, 0, 1000)
    assert status == 206 and body == DATA[:1000]
    new = generate_image(SIZE, seed=13)
    with open(tree / "x.img", "r+b") as file:  # in place: same inode, same size
        file.write(new)
    os.utime(tree / "x.img", ns=(time.time_ns(), time.time_ns() + 10**9))
    # Within the revalidate window: the fill sees the change, the front answers from the
    # new version alone.
    status, body = await get_range(client, url, 2 * MiB, 2 * MiB + 5000)
    assert status == 206 and body == new[2 * MiB : 2 * MiB + 5000]
    status, body = await get_range(client, url, 0, 1000)
    assert status == 206 and body == new[:1000]


async def test_change_during_a_read_is_origin_changed(tree: Path) -> None:
    config = parse_config_text(file_config(tree, tree / "unused"))
    origin = FileOrigin(config.origins["files"])
    try:
        url = f"file://{tree}/x.img"
        meta = await origin.stat(url)
        pieces = aiter(origin.read(url, meta, 0, SIZE))
        assert await anext(pieces) == DATA[:MiB]
        with open(tree / "x.img", "r+b") as file:
            file.seek(2 * MiB)
            file.write(b"changed")
        os.utime(tree / "x.img", ns=(time.time_ns(), meta_mtime_later(tree / "x.img")))
        with pytest.raises(OriginChanged):
            await anext(pieces)
        await pieces.aclose()  # type: ignore[attr-defined]
    finally:
        await origin.close()


def meta_mtime_later(path: Path) -> int:
    return path.stat().st_mtime_ns + 10**9


async def test_vanished_file_is_404(
    tree: Path, file_service: FileService, client: aiohttp.ClientSession
) -> None:
    service = await file_service(tree)
    url = service.url + "origins/files/x.img"
    status, _ = await get_range(client, url, 0, 100)
    assert status == 206
    (tree / "x.img").unlink()
    status, _, body = await fetch(client, url, {"Range": f"bytes={2 * MiB}-{2 * MiB + 99}"})
    assert status == 404 and json.loads(body)["error"] == "image_not_found"
    status, _, body = await fetch(client, service.url + "origins/files/never.img")
    assert status == 404 and json.loads(body)["error"] == "image_not_found"


async def test_stalled_read_is_504_for_that_request_only(
    tree: Path, file_service: FileService, client: aiohttp.ClientSession
) -> None:
    fifo = tree / "stall.iso"
    os.mkfifo(fifo)  # opening it for reading blocks until a writer comes: a stalled NFS
    service = await file_service(tree, read_timeout="1s")
    try:
        stalled = asyncio.create_task(fetch(client, service.url + "origins/files/stall.iso"))
        served = 0
        while not stalled.done():
            status, body = await get_range(client, service.url + "origins/files/x.img", 0, 4096)
            assert status == 206 and body == DATA[:4096]
            served += 1
        status, _, body = await stalled
        assert status == 504 and json.loads(body)["error"] == "origin_timeout"
        assert served >= 10  # the loop kept serving while the read stalled
        # The stalled thread was abandoned, not awaited: a fresh file still reads at once.
        status, body = await get_range(
            client, service.url + "origins/files/x.img", 2 * MiB, 3 * MiB
        )
        assert status == 206 and body == DATA[2 * MiB : 3 * MiB]
    finally:
        # Let the abandoned thread's open() return.
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))


@pytest.mark.parametrize("sendfile", [True, False])
async def test_cache_false_serves_from_the_file(
    tree: Path,
    tmp_path: Path,
    client: aiohttp.ClientSession,
    sendfile: bool,
) -> None:
    text = file_config(tree, tmp_path / "cache", cache=False)
    if not sendfile:
        text = text.replace("[cache]", "sendfile = false\n[cache]")
    service = Service(parse_config_text(text))
    await service.start()
    try:
        url = service.url + "origins/files/x.img"
        rng = random.Random(3)
        for _ in range(20):
            start = rng.randrange(SIZE)
            stop = min(SIZE, start + rng.randrange(1, 3 * MiB))
            status, body = await get_range(client, url, start, stop)
            assert status == 206 and body == DATA[start:stop]
        status, _, body = await fetch(client, url)
        assert status == 200 and body == DATA
        status, headers, body = await fetch(client, url, {"Range": "bytes=0-9,100-109"})
        assert status == 206 and headers["Content-Type"].startswith("multipart/byteranges")
        assert DATA[:10] in body and DATA[100:110] in body
        status, _, body = await fetch(client, service.url + "origins/files/secret.iso")
        assert status == 403 and SECRET[:20] not in body
        # A file replaced by a new one (rename) is served in the new version.
        new = generate_image(SIZE + 1, seed=14)
        (tree / "x.new").write_bytes(new)
        os.replace(tree / "x.new", tree / "x.img")
        status, _, body = await fetch(client, url)
        assert status == 200 and body == new
        assert service.store.bytes_used == 0
        assert await origin_bytes(client, service) == 0
    finally:
        await service.stop()
    assert not any(p.name.endswith(".val") for p in (tmp_path / "cache").rglob("*"))


async def test_file_images_must_lie_under_a_file_origin(
    tree: Path, file_service: FileService, client: aiohttp.ClientSession, tmp_path: Path
) -> None:
    service = await file_service(tree, images={"disk": "sub/inner.iso"})
    status, _, body = await fetch(client, service.url + "images/disk")
    assert status == 200 and body == b"n" * 5
    outside = file_config(tree, tmp_path / "c2") + '[images.bad]\nurl = "file:///etc/passwd"\n'
    with pytest.raises(ConfigError, match=r"images\.bad\.url"):
        parse_config_text(outside)
    with pytest.raises(ConfigError, match=r"origins\.files\.url.*no host"):
        parse_config_text(file_config(tree, tmp_path / "c2").replace("file://", "file://h"))
    bad_cache = file_config(tree, tmp_path / "c2").replace("cache = true", 'cache = "no"')
    with pytest.raises(ConfigError, match=r"origins\.files\.cache"):
        parse_config_text(bad_cache)
    # A run-time registration is held to the same tree.
    async with client.put(
        service.url + "api/images/evil", json={"url": "file:///etc/passwd"}
    ) as resp:
        assert resp.status == 403


@pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-utils is not installed")
@pytest.mark.parametrize("cache", [True, False], ids=["cache", "direct"])
async def test_qemu_img_convert_is_exact(
    tree: Path, file_service: FileService, client: aiohttp.ClientSession, cache: bool
) -> None:
    disk = generate_image(QEMU_SIZE, seed=15)
    (tree / "disk.raw").write_bytes(disk)
    service = await file_service(tree, cache=cache, chunk_size="1MiB")
    url = service.url + "origins/files/disk.raw"
    expected = hashlib.sha256(disk).hexdigest()
    for attempt in ("miss", "hit"):
        out = tree.parent / f"out-{attempt}.raw"
        code, _, err = await run_qemu(
            "qemu-img", "convert", "-m", "1", "-f", "raw", "-O", "raw", url, str(out)
        )
        assert code == 0, err.decode()
        assert hashlib.sha256(out.read_bytes()).hexdigest() == expected, attempt
        if attempt == "miss":
            read = await origin_bytes(client, service)
            assert read <= 1.05 * QEMU_SIZE if cache else read == 0
    assert await origin_bytes(client, service) == (read if cache else 0)
