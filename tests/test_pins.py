"""Pins have one owner (the store): API pins survive restarts before anything can evict, and
re-pointing or unregistering a pinned image releases its old version."""

from __future__ import annotations

from pathlib import Path

import aiohttp

from bench.origin import OriginServer, generate_image
from tests.conftest import CHUNK, MakeService, fetch
from tests.test_admin import TOKEN, call

PINNED = 16 * CHUNK  # 1 MiB
OTHER = 64 * CHUNK  # 4 MiB, four times the limit left over
LIMIT = "2MiB"


async def _start(make_service: MakeService, origin: OriginServer, cache_dir: Path):  # type: ignore[no-untyped-def]
    return await make_service(
        origin.url,
        cache_dir=cache_dir,
        size_limit=LIMIT,
        readahead="0B",
        extra=f'[admin]\ntoken = "{TOKEN}"\n',
    )


async def _image(client: aiohttp.ClientSession, base: str, name: str) -> dict[str, object]:
    status, images = await call(client, "GET", base + "api/images")
    assert status == 200
    return next(i for i in images if i["name"] == name)


async def test_an_api_pin_keeps_its_image_across_a_restart(
    tmp_path: Path, origin: OriginServer, make_service: MakeService, client: aiohttp.ClientSession
) -> None:
    pinned_data = generate_image(PINNED, seed=301)
    origin.add_file("pinned.iso", pinned_data)
    for n in range(4):
        origin.add_file(f"other{n}.iso", generate_image(OTHER // 4, seed=310 + n))
    cache_dir = tmp_path / "cache"
    service = await _start(make_service, origin, cache_dir)
    base = service.url
    status, _ = await call(
        client, "PUT", base + "api/images/rt", {"url": origin.url + "pinned.iso"}
    )
    assert status == 201
    assert (await fetch(client, base + "images/rt"))[2] == pinned_data
    assert (await call(client, "PUT", base + "api/images/rt/pin"))[0] == 200
    await service.stop()

    service = await _start(make_service, origin, cache_dir)
    base = service.url
    image = await _image(client, base, "rt")
    assert image["pinned"] is True and image["cached_bytes"] == PINNED
    # Twice the limit of other reads through the origin paths.
    for n in range(4):
        status, _, body = await fetch(client, f"{base}origins/test/other{n}.iso")
        assert status == 200 and len(body) == OTHER // 4
    assert service.store.bytes_used <= 2 * 1024 * 1024
    image = await _image(client, base, "rt")
    assert image["cached_bytes"] == PINNED
    before = origin.body_bytes("pinned.iso")
    assert (await fetch(client, base + "images/rt"))[2] == pinned_data
    assert origin.body_bytes("pinned.iso") == before  # every byte from the cache


async def test_re_pointing_or_unregistering_a_pinned_image_releases_the_old_version(
    tmp_path: Path, origin: OriginServer, make_service: MakeService, client: aiohttp.ClientSession
) -> None:
    origin.add_file("v1.iso", generate_image(PINNED, seed=321))
    new_data = generate_image(PINNED // 2, seed=322)
    origin.add_file("v2.iso", new_data)
    service = await _start(make_service, origin, tmp_path / "cache")
    base = service.url
    body = {"url": origin.url + "v1.iso", "pin": True}
    assert (await call(client, "PUT", base + "api/images/rt", body))[0] == 201
    await fetch(client, base + "images/rt")
    old = service.store.pins()["rt"]
    assert old is not None and old in service.store.pinned_identities()

    body = {"url": origin.url + "v2.iso", "pin": True}
    assert (await call(client, "PUT", base + "api/images/rt", body))[0] == 200
    assert old not in service.store.pinned_identities()
    assert (await fetch(client, base + "images/rt"))[2] == new_data
    new = service.store.pins()["rt"]
    assert new is not None and new != old and service.store.pinned_identities() == {new}
    assert (await _image(client, base, "rt"))["pinned"] is True

    status, _ = await call(client, "DELETE", base + "api/images/rt")
    assert status == 200
    assert service.store.pins() == {}
    await service.stop()
    # Nothing comes back at the next start either.
    service = await _start(make_service, origin, tmp_path / "cache")
    assert service.store.pins() == {}


async def test_a_config_pin_is_in_place_before_start_up_evicts(
    tmp_path: Path, origin: OriginServer, make_service: MakeService, client: aiohttp.ClientSession
) -> None:
    data = generate_image(PINNED, seed=331)
    origin.add_file("p.iso", data)
    origin.add_file("big.iso", generate_image(2 * PINNED, seed=332))
    cache_dir = tmp_path / "cache"
    pin_extra = f'[images.p]\nurl = "{origin.url}p.iso"\npin = true\n'
    service = await make_service(
        origin.url, cache_dir=cache_dir, size_limit="4MiB", readahead="0B", extra=pin_extra
    )
    assert (await fetch(client, service.url + "images/p"))[2] == data
    await fetch(client, service.url + "origins/test/big.iso")
    await service.stop()
    # The limit is lowered below what is stored: start-up evicts, but not the pinned image.
    service = await make_service(
        origin.url, cache_dir=cache_dir, size_limit=LIMIT, readahead="0B", extra=pin_extra
    )
    assert service.store.bytes_used <= 2 * PINNED
    assert service.store.chunk_count(service.store.pins()["p"] or "") == PINNED // CHUNK
    before = origin.body_bytes("p.iso")
    assert (await fetch(client, service.url + "images/p"))[2] == data
    assert origin.body_bytes("p.iso") == before
