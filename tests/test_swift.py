"""Swift origins against a real OpenStack Swift all-in-one on loopback (tests/swift_server.py:
Debian's swift-proxy/-account/-container/-object, TempAuth), and Keystone v3 through a
stand-in whose tokens are the real Swift's. Object reads go through a TCP relay that counts
the bytes the Swift proxy sends."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import random
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import aiohttp
import pytest
from yarl import URL

from bench.origin import generate_image
from isocache.origins.swift import LIST_PAGE
from isocache.service import Service
from tests.conftest import CHUNK, MakeService, MiB, fetch
from tests.sftp_server import Relay
from tests.swift_server import (
    KEY,
    KEYSTONE_PASSWORD,
    KEYSTONE_PROJECT,
    KEYSTONE_USER,
    TEMPAUTH_USER,
    KeystoneForSwift,
    SwiftAllInOne,
    swift_missing,
)
from tests.test_ftp import assert_random_ranges

pytestmark = pytest.mark.skipif(swift_missing() is not None, reason=str(swift_missing()))

SIZE = 12 * CHUNK + 321


@pytest.fixture(scope="module")
def swift(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SwiftAllInOne]:
    """One Swift for the module (it takes seconds to start); each test uses its own prefix.
    Started on a thread of its own so that no event loop of the tests is touched."""
    server = SwiftAllInOne(tmp_path_factory.mktemp("swift"))
    with ThreadPoolExecutor(1) as pool:
        try:
            pool.submit(asyncio.run, server.start()).result()
        except BaseException:
            server.stop()
            raise
    yield server
    server.stop()


@pytest.fixture
def prefix() -> str:
    return f"t-{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def relay(swift: SwiftAllInOne) -> AsyncIterator[Relay]:
    server = Relay(swift.port)
    await server.start()
    yield server
    await server.stop()


def swift_origin(swift: SwiftAllInOne, relay: Relay, prefix: str, **keys: str) -> str:
    """[origins.swift] with TempAuth, its storage URL through the relay."""
    values = {
        "kind": "swift",
        "auth_url": swift.auth_url,
        "username": TEMPAUTH_USER,
        "password": KEY,
        "container": "isos",
        "prefix": prefix,
        "url": swift.storage_url.replace(f":{swift.port}/", f":{relay.port}/"),
        **keys,
    }
    table = "\n".join(f"{k} = {json.dumps(v)}" for k, v in values.items() if v)
    return f"[origins.swift]\n{table}\n"


async def swift_service(make_service: MakeService, origin: str, **kwargs: object) -> Service:
    return await make_service("http://127.0.0.1:9/", extra=origin, **kwargs)


@pytest.mark.parametrize("warm", [False, True], ids=["miss", "hit"])
async def test_ranges_are_byte_exact(
    swift: SwiftAllInOne,
    relay: Relay,
    prefix: str,
    make_service: MakeService,
    client: aiohttp.ClientSession,
    warm: bool,
) -> None:
    data = generate_image(SIZE, seed=130)
    await swift.put(f"isos/{prefix}/disk.iso", data)
    service = await swift_service(make_service, swift_origin(swift, relay, prefix))
    url = service.url + "origins/swift/disk.iso"
    if warm:
        assert (await fetch(client, url))[2] == data
    await assert_random_ranges(client, url, data, random.Random(131), 40)
    async with client.head(url) as resp:
        assert resp.headers["Content-Length"] == str(SIZE)


async def test_eight_cold_readers_fetch_the_object_once(
    swift: SwiftAllInOne,
    relay: Relay,
    prefix: str,
    make_service: MakeService,
    client: aiohttp.ClientSession,
) -> None:
    size = 8 * MiB + 777
    data = generate_image(size, seed=132)
    await swift.put(f"isos/{prefix}/big.iso", data)
    service = await swift_service(make_service, swift_origin(swift, relay, prefix))
    url = service.url + "origins/swift/big.iso"
    results = await asyncio.gather(*(fetch(client, url) for _ in range(8)))
    assert [(status, body == data) for status, _, body in results] == [(200, True)] * 8
    fetched = service.metrics.registry.get_sample_value(
        "isocache_origin_bytes_total", {"origin": "swift"}
    )
    assert fetched is not None and size <= fetched <= 1.05 * size
    # On the wire from the Swift proxy, HTTP headers included.
    assert size <= relay.bytes_down <= 1.05 * size


async def large_objects(swift: SwiftAllInOne, prefix: str, data: bytes) -> None:
    """`data` as an SLO (three segments) and as a DLO (the same segments by prefix)."""
    cut = [0, len(data) // 3, 2 * len(data) // 3 + 5, len(data)]
    manifest = []
    for i in range(3):
        piece = data[cut[i] : cut[i + 1]]
        await swift.put(f"isos/{prefix}-seg/{i:02d}", piece)
        manifest.append(
            {
                "path": f"/isos/{prefix}-seg/{i:02d}",
                "etag": hashlib.md5(piece).hexdigest(),
                "size_bytes": len(piece),
            }
        )
    body = json.dumps(manifest).encode()
    await swift.put(f"isos/{prefix}/slo.img?multipart-manifest=put", body)
    await swift.put(f"isos/{prefix}/dlo.img", b"", {"X-Object-Manifest": f"isos/{prefix}-seg/"})


async def test_large_objects_read_as_one(
    swift: SwiftAllInOne,
    relay: Relay,
    prefix: str,
    make_service: MakeService,
    client: aiohttp.ClientSession,
) -> None:
    data = generate_image(3 * MiB + 12345, seed=133)
    await large_objects(swift, prefix, data)
    service = await swift_service(make_service, swift_origin(swift, relay, prefix))
    for name in ("slo.img", "dlo.img"):
        url = service.url + f"origins/swift/{name}"
        await assert_random_ranges(client, url, data, random.Random(134), 10)


@pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-utils is not installed")
async def test_qemu_img_convert_is_exact(
    swift: SwiftAllInOne,
    relay: Relay,
    prefix: str,
    make_service: MakeService,
    tmp_path: Path,
) -> None:
    from tests.test_qemu import run

    data = generate_image(8 * MiB + 4096, seed=135)
    await swift.put(f"isos/{prefix}/x.img", data)
    await large_objects(swift, prefix, data)
    service = await swift_service(
        make_service, swift_origin(swift, relay, prefix), chunk_size="1MiB"
    )
    for name in ("x.img", "slo.img"):
        out = tmp_path / f"{name}.raw"
        code, _, err = await run(
            "qemu-img", "convert", "-m", "1", "-f", "raw", "-O", "raw",
            f"{service.url}origins/swift/{name}", str(out),
        )  # fmt: skip
        assert code == 0, err.decode()
        assert hashlib.sha256(out.read_bytes()).hexdigest() == hashlib.sha256(data).hexdigest()


async def test_listing_filters_by_type_with_pseudo_directories(
    swift: SwiftAllInOne,
    relay: Relay,
    prefix: str,
    make_service: MakeService,
    client: aiohttp.ClientSession,
) -> None:
    for name, size in (("a.iso", 10), ("b.VFD", 20), ("c.img", 30), ("sub/inner.iso", 5)):
        await swift.put(f"isos/{prefix}/{name}", b"x" * size)
    service = await swift_service(make_service, swift_origin(swift, relay, prefix))
    status, _, body = await fetch(client, service.url + "origins/swift/?type=iso,vfd")
    assert (status, json.loads(body)) == (
        200,
        [
            {"name": "a.iso", "size": 10, "type": "iso"},
            {"name": "b.VFD", "size": 20, "type": "vfd"},
            {"name": "sub", "size": None, "type": "dir"},
        ],
    )
    status, _, body = await fetch(client, service.url + "origins/swift/sub/")
    assert (status, json.loads(body)) == (200, [{"name": "inner.iso", "size": 5, "type": "iso"}])
    status, _, body = await fetch(client, service.url + "origins/swift/nope/")
    assert status == 404 and json.loads(body)["error"] == "image_not_found"


async def test_listing_pages_with_marker(
    swift: SwiftAllInOne,
    relay: Relay,
    prefix: str,
    make_service: MakeService,
    client: aiohttp.ClientSession,
) -> None:
    """More names than one page holds; a pseudo-directory is the last entry of the first
    page, so the second page starts after everything under it."""
    count = 2 * LIST_PAGE + 345
    names = [f"{i:05d}.iso" for i in range(count) if i != LIST_PAGE - 1]
    await swift.put_many([f"isos/{prefix}/{name}" for name in names])
    await swift.put_many([f"isos/{prefix}/{LIST_PAGE - 1:05d}/{n}.iso" for n in ("a", "b")])
    service = await swift_service(make_service, swift_origin(swift, relay, prefix))
    status, _, body = await fetch(client, service.url + "origins/swift/")
    listed = json.loads(body)
    assert status == 200 and len(listed) == count
    assert [e["name"] for e in listed] == [f"{i:05d}" + ("" if i == LIST_PAGE - 1 else ".iso")
                                          for i in range(count)]  # fmt: skip
    assert listed[LIST_PAGE - 1]["type"] == "dir"


async def test_a_replaced_object_is_never_mixed(
    swift: SwiftAllInOne,
    relay: Relay,
    prefix: str,
    make_service: MakeService,
    client: aiohttp.ClientSession,
) -> None:
    """Reads send If-Match with the ETag of the version being read: Swift's 412 after a
    replacement makes the answer come from the new version alone."""
    old, new = generate_image(SIZE, seed=136), generate_image(SIZE, seed=137)
    await swift.put(f"isos/{prefix}/disk.iso", old)
    service = await swift_service(make_service, swift_origin(swift, relay, prefix), revalidate="1h")
    url = service.url + "origins/swift/disk.iso"
    status, _, body = await fetch(client, url, {"Range": "bytes=0-99"})
    assert (status, body) == (206, old[:100])
    await swift.put(f"isos/{prefix}/disk.iso", new)
    status, _, body = await fetch(client, url, {"Range": f"bytes={5 * CHUNK}-{6 * CHUNK - 1}"})
    assert (status, body) == (206, new[5 * CHUNK : 6 * CHUNK])


async def test_an_expired_token_is_renewed(
    swift: SwiftAllInOne,
    relay: Relay,
    prefix: str,
    make_service: MakeService,
    client: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    data = generate_image(SIZE, seed=138)
    await swift.put(f"isos/{prefix}/disk.iso", data)
    service = await swift_service(make_service, swift_origin(swift, relay, prefix))
    url = service.url + "origins/swift/disk.iso"
    assert (await fetch(client, url, {"Range": "bytes=0-99"}))[2] == data[:100]
    swift.flush_tokens()  # TempAuth forgets every token: Swift answers 401
    status, _, body = await fetch(client, url, {"Range": f"bytes={6 * CHUNK}-{7 * CHUNK}"})
    assert (status, body) == (206, data[6 * CHUNK : 7 * CHUNK + 1])
    assert caplog.text.count("swift-token-renew origin=swift") == 1


async def test_keystone_v3_token_and_catalog(
    swift: SwiftAllInOne,
    relay: Relay,
    prefix: str,
    make_service: MakeService,
    client: aiohttp.ClientSession,
) -> None:
    data = generate_image(SIZE, seed=139)
    await swift.put(f"isos/{prefix}/disk.iso", data)
    keystone = KeystoneForSwift(swift)
    await keystone.start()
    try:
        origin = swift_origin(
            swift,
            relay,
            prefix,
            auth_url=keystone.auth_url,
            username=KEYSTONE_USER,
            password=KEYSTONE_PASSWORD,
            project_name=KEYSTONE_PROJECT,
            url="",  # the storage URL comes from the token's catalog
        )
        service = await swift_service(make_service, origin)
        url = service.url + "origins/swift/disk.iso"
        await assert_random_ranges(client, url, data, random.Random(140), 10)
        assert keystone.auth_requests == 1
        swift.flush_tokens()  # listings always ask Swift: this one meets the 401
        status, _, body = await fetch(client, service.url + "origins/swift/")
        assert status == 200 and json.loads(body)[0]["name"] == "disk.iso"
        assert keystone.auth_requests == 2  # renewed once after the 401
    finally:
        await keystone.stop()


@pytest.mark.parametrize("auth", ["tempauth", "keystone"])
async def test_bad_credentials_are_502_without_the_secret(
    swift: SwiftAllInOne,
    relay: Relay,
    prefix: str,
    make_service: MakeService,
    client: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
    auth: str,
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "wrong-secret-9931"
    await swift.put(f"isos/{prefix}/disk.iso", b"x" * 100)
    keystone = KeystoneForSwift(swift)
    await keystone.start()
    try:
        keys = {"password": wrong}
        if auth == "keystone":
            keys.update(auth_url=keystone.auth_url, username=KEYSTONE_USER)
        service = await swift_service(make_service, swift_origin(swift, relay, prefix, **keys))
        for path in ("disk.iso", ""):
            status, headers, body = await fetch(client, service.url + "origins/swift/" + path)
            assert status == 502 and headers["Content-Type"].startswith("application/json")
            detail = json.loads(body)["detail"]
            assert "refused the credentials of origin swift" in detail
            assert wrong.encode() not in body
        assert wrong not in caplog.text
    finally:
        await keystone.stop()


async def test_unknown_objects_and_escaping_paths(
    swift: SwiftAllInOne,
    relay: Relay,
    prefix: str,
    make_service: MakeService,
    client: aiohttp.ClientSession,
) -> None:
    await swift.put(f"isos/{prefix}-secret/x.iso", b"secret")
    service = await swift_service(make_service, swift_origin(swift, relay, prefix))
    base = service.url + "origins/swift/"
    status, _, body = await fetch(client, base + "nope.iso")
    assert status == 404 and json.loads(body)["error"] == "image_not_found"
    for path in ("..%2F" + prefix + "-secret/x.iso", "%2e%2e/" + prefix + "-secret/x.iso"):
        async with client.get(URL(base + path, encoded=True)) as resp:
            assert resp.status == 400 and (await resp.json())["error"] == "bad_path"


@pytest.mark.parametrize(
    ("keys", "key", "message"),
    [
        ({"container": ""}, "container", "required"),
        ({"auth_url": "https://keystone.example.org/v2.0"}, "auth_url", "Keystone v3"),
        ({"password": ""}, "password", "needs a password"),
        ({"url": "ftp://x/"}, "url", "http:// or https://"),
        ({"prefix": "a/../b"}, "prefix", "refused"),
    ],
)
def test_config_errors_name_the_key(keys: dict[str, str], key: str, message: str) -> None:
    from isocache.config import ConfigError, parse_config_text

    values = {
        "kind": "swift",
        "auth_url": "https://swift.example.org/auth/v1.0",
        "username": "test:tester",
        "password": "k",
        "container": "isos",
        **keys,
    }
    table = "\n".join(f"{k} = {json.dumps(v)}" for k, v in values.items() if v)
    with pytest.raises(ConfigError) as caught:
        parse_config_text(f"[origins.s]\n{table}\n", source="t.toml")
    assert caught.value.key == f"origins.s.{key}" and message in caught.value.message


def test_swift_images_lie_under_the_origin() -> None:
    from isocache.config import parse_config_text

    config = parse_config_text(
        "[origins.sw]\nkind = 'swift'\nauth_url = 'https://s/auth/v1.0'\nusername = 'a:b'\n"
        "password = 'k'\ncontainer = 'isos'\nprefix = '/rel/'\n"
        "[images.x]\nurl = 'swift://sw/rel/x.iso'\n"
    )
    assert config.origins["sw"].url == "swift://sw/rel/"
    assert config.images["x"].url == "swift://sw/rel/x.iso"
