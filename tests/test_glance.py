"""Glance origins against the Glance-v2-shaped stand-in server (tests/glance_server.py)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import random
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bench.origin import generate_image
from isocache.service import Service
from tests.conftest import CHUNK, MakeService, fetch
from tests.glance_server import PASSWORD, PROJECT, USER, GlanceServer

SIZE = 9 * CHUNK + 5


@pytest.fixture
async def glance() -> AsyncIterator[GlanceServer]:
    server = GlanceServer()
    await server.start()
    yield server
    await server.stop()


async def glance_service(
    make_service: MakeService, glance: GlanceServer, password: str = PASSWORD, **kwargs: Any
) -> Service:
    extra = (
        f'[origins.glance]\nkind = "glance"\nurl = "{glance.url}"\n'
        f'auth_url = "{glance.url}v3"\nusername = "{USER}"\npassword = "{password}"\n'
        f'project_name = "{PROJECT}"\n'
    )
    return await make_service("http://127.0.0.1:9/", extra=extra, **kwargs)


@pytest.mark.parametrize("address", ["id", "name"])
async def test_ranges_by_id_and_name(
    glance: GlanceServer, make_service: MakeService, client: aiohttp.ClientSession, address: str
) -> None:
    data = generate_image(SIZE, seed=100)
    image_id = glance.add_image("cirros 0.6", data)
    service = await glance_service(make_service, glance)
    url = service.url + "origins/glance/" + (image_id if address == "id" else "cirros%200.6")
    rng = random.Random(101)
    for _ in range(30):
        first = rng.randrange(SIZE)
        last = min(SIZE - 1, first + rng.randrange(3 * CHUNK))
        status, _, body = await fetch(client, url, {"Range": f"bytes={first}-{last}"})
        assert (status, body) == (206, data[first : last + 1])
    assert (await fetch(client, url))[2] == data
    assert all(entry[3] == 206 for entry in glance.log)  # ranged reads only
    assert glance.body_bytes() <= SIZE  # each chunk once


async def test_token_renewed_on_401(
    glance: GlanceServer, make_service: MakeService, client: aiohttp.ClientSession
) -> None:
    data = generate_image(SIZE, seed=102)
    image_id = glance.add_image("a", data)
    service = await glance_service(make_service, glance)
    url = service.url + "origins/glance/" + image_id
    assert (await fetch(client, url, {"Range": "bytes=0-9"}))[2] == data[:10]
    assert glance.auth_requests == 1
    glance.revoke_tokens()
    status, _, body = await fetch(client, url, {"Range": f"bytes={5 * CHUNK}-{5 * CHUNK + 9}"})
    assert (status, body) == (206, data[5 * CHUNK : 5 * CHUNK + 10])
    assert glance.auth_requests == 2


async def test_wrong_password_is_502_without_secret(
    glance: GlanceServer,
    make_service: MakeService,
    client: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    image_id = glance.add_image("a", b"x" * 100)
    service = await glance_service(make_service, glance, password="wrong-pass-77")
    status, _, body = await fetch(client, service.url + "origins/glance/" + image_id)
    assert status == 502 and b"Keystone refused the credentials of origin glance" in body
    assert b"wrong-pass-77" not in body and "wrong-pass-77" not in caplog.text


async def test_unknown_image_is_404(
    glance: GlanceServer, make_service: MakeService, client: aiohttp.ClientSession
) -> None:
    service = await glance_service(make_service, glance)
    for ref in ("no-such-name", "00000000-0000-0000-0000-000000000000"):
        status, _, _ = await fetch(client, service.url + "origins/glance/" + ref)
        assert status == 404, ref


async def test_listing_pages_and_types(
    glance: GlanceServer, make_service: MakeService, client: aiohttp.ClientSession
) -> None:
    for number in range(230):
        glance.add_image(f"img{number:03}", b"d" * number, "qcow2" if number % 2 else "iso")
    service = await glance_service(make_service, glance)
    status, _, body = await fetch(client, service.url + "origins/glance/")
    entries = json.loads(body)
    assert status == 200 and len(entries) == 230  # two pages of 200
    assert {"name": "img007", "size": 7, "type": "qcow2"} in entries
    status, _, body = await fetch(client, service.url + "origins/glance/?type=iso")
    assert len(json.loads(body)) == 115


async def wait_verified(service: Service, identity: str) -> bool:
    deadline = asyncio.get_running_loop().time() + 10
    while (result := service.verifier.result(identity)) is None:
        assert asyncio.get_running_loop().time() < deadline, "not verified in time"
        await asyncio.sleep(0.02)
    return result


@pytest.mark.parametrize("honest", [True, False])
async def test_whole_image_checked_against_os_hash_value(
    glance: GlanceServer, make_service: MakeService, client: aiohttp.ClientSession, honest: bool
) -> None:
    data = generate_image(SIZE, seed=103)
    image_id = glance.add_image("v", data)
    if not honest:
        glance.images[image_id]["os_hash_value"] = "0" * 128
    service = await glance_service(make_service, glance)
    url = service.url + "origins/glance/" + image_id
    status, headers, body = await fetch(client, url)
    assert (status, body) == (200, data)  # the bytes went out as they came
    identity = headers["ETag"].strip('"')
    assert await wait_verified(service, identity) is honest
    if honest:
        assert service.store.chunk_count(identity) == 10
        return
    assert service.store.chunk_count(identity) == 0  # dropped
    status, _, body = await fetch(client, url, {"Range": "bytes=0-9"})
    assert status == 502
    assert b"0" * 128 in body and hashlib.sha512(data).hexdigest().encode() in body


async def test_credentials_from_clouds_yaml(
    glance: GlanceServer,
    make_service: MakeService,
    client: aiohttp.ClientSession,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clouds = tmp_path / "clouds.yaml"
    clouds.write_text(
        "clouds:\n  lab:\n    auth:\n"
        f"      auth_url: {glance.url}v3\n      username: {USER}\n      password: {PASSWORD}\n"
        f"      project_name: {PROJECT}\n"
    )
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(clouds))
    data = generate_image(1000, seed=104)
    image_id = glance.add_image("c", data)
    extra = f'[origins.glance]\nkind = "glance"\nurl = "{glance.url}"\ncloud = "lab"\n'
    service = await make_service("http://127.0.0.1:9/", extra=extra)
    status, _, body = await fetch(client, service.url + "origins/glance/" + image_id)
    assert (status, body) == (200, data)


async def wait_stored(service: Service, identity: str, chunks: int) -> None:
    deadline = time.monotonic() + 10
    while service.store.chunk_count(identity) < chunks:
        assert time.monotonic() < deadline, "chunks not stored in time"
        await asyncio.sleep(0.02)


@pytest.mark.parametrize("retire", ["delete", "deactivate"])
async def test_a_name_follows_the_image_published_under_it(
    glance: GlanceServer, make_service: MakeService, client: aiohttp.ClientSession, retire: str
) -> None:
    old_data, new_data = generate_image(SIZE, seed=105), generate_image(SIZE, seed=106)
    old_id = glance.add_image("nightly", old_data)
    service = await glance_service(make_service, glance, revalidate="200ms")
    url = service.url + "origins/glance/nightly"
    status, headers, body = await fetch(client, url)
    assert (status, body) == (200, old_data)
    await wait_stored(service, headers["ETag"].strip('"'), 10)
    # A new build under the same name; the old one goes away.
    reads_before = len(glance.log)
    new_id = glance.add_image("nightly", new_data)
    if retire == "delete":
        glance.delete_image(old_id)
    else:
        glance.deactivate_image(old_id)
    deadline = time.monotonic() + 10
    seen = []
    while True:
        status, headers, body = await fetch(client, url)
        seen.append(status)
        assert status == 200, seen  # never a 404 for a name that has an active image
        assert body in (old_data, new_data)  # one version or the other, never a mix
        if body == new_data:
            break
        assert time.monotonic() < deadline, "the name still serves the old image"
        await asyncio.sleep(0.05)
    for first, last in ((0, 99), (SIZE - 1000, SIZE - 1), (3 * CHUNK - 7, 5 * CHUNK)):
        status, _, body = await fetch(client, url, {"Range": f"bytes={first}-{last}"})
        assert (status, body) == (206, new_data[first : last + 1])
    later = glance.log[reads_before:]
    assert [e for e in later if old_id in e[1]] == []  # the old image's data never read again
    assert sum(e[4] for e in later if new_id in e[1]) == SIZE  # the new one's, each byte once
    # The only image under the name is deleted: 404 once the name is looked up again.
    glance.delete_image(new_id)
    deadline = time.monotonic() + 10
    while True:
        async with client.get(url) as resp:
            status, answer = resp.status, await resp.read()
        if status == 404:
            break
        assert (status, answer) == (200, new_data)
        assert time.monotonic() < deadline, "a deleted image is still served"
        await asyncio.sleep(0.05)
    error = json.loads(answer)
    assert set(error) == {"error", "detail"} and error["error"] == "image_not_found"
