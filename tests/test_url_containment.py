"""URL containment: an image URL (configured, registered at run time, or a redirect target)
must lie under a configured origin, compared per path segment on the URL exactly as it is
sent, and dot segments are refused however they are encoded (issue 9, item 2)."""

from __future__ import annotations

import posixpath
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import aiohttp
import pytest
from aiohttp import web

from bench.origin import OriginServer, generate_image
from isocache.config import ConfigError, parse_config_text
from isocache.service import Service
from isocache.urls import is_under, path_problem
from tests.conftest import MakeService, config_text, fetch

TOKEN = "admin-token-123"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PUBLIC = generate_image(3000, seed=901)
SECRET = b"private-bytes-" + generate_image(2000, seed=902)

# Each way of writing "one directory up" that some origin resolves (nginx and Apache resolve
# dot segments; Tomcat reads "..;"; IIS and some proxies decode twice or take "\" for "/").
ESCAPES = [
    "../",
    "%2e%2e/",
    "%2E%2E/",
    ".%2e/",
    "..%2f",
    "..%2F",
    "..%5c",
    "..%5C",
    "%252e%252e/",
    "..;/",
    "..%3b/",
    "./../",
]


class RawLogOrigin(OriginServer):
    """The test origin, also keeping each request's raw path and query as received."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.raw: list[str] = []

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.raw.append(request.raw_path)
        return await super()._handle(request)

    def outside(self, prefix: str) -> list[str]:
        """Raw request paths that, decoded (twice) and with dot segments resolved, are not
        under `prefix` - what an origin that normalises paths would have served."""
        found = []
        for raw in self.raw:
            path = unquote(unquote(raw.split("?", 1)[0])).replace("\\", "/").replace(";", "")
            if not posixpath.normpath(path).lstrip("/").startswith(prefix):
                found.append(raw)
        return found


@pytest.fixture
async def raw_origin() -> AsyncIterator[RawLogOrigin]:
    server = RawLogOrigin()
    server.add_file("isos/public.iso", PUBLIC)
    server.add_file("isos/with space.iso", PUBLIC)
    server.add_file("private/secrets.tar", SECRET)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def call(
    client: aiohttp.ClientSession, method: str, url: str, body: Any = None
) -> tuple[int, Any]:
    async with client.request(method, url, json=body, headers=AUTH) as resp:
        assert resp.headers["Content-Type"].startswith("application/json"), (method, url)
        return resp.status, await resp.json()


def service_config(origin: OriginServer, cache_dir: Path, extra: str = "") -> str:
    return config_text(
        origin.url + "isos/", cache_dir, extra=f'[admin]\ntoken = "{TOKEN}"\n' + extra
    )


# -- the containment function -------------------------------------------------------------

BASE = "http://o.example/isos/"


@pytest.mark.parametrize(
    "url",
    [
        "http://o.example/isos/a.iso",
        "http://o.example/isos/a%20b.iso",
        "http://o.example/isos/a%2520b.iso",  # a literal "%20" in the name
        "http://o.example/isos/100%25.iso",
        "http://o.example/isos/%E2%9C%93/x.qcow2",
        "http://o.example/isos/%69mage.iso",  # %69 is "i": still a plain name
        "http://o.example/isos/a..b.iso",
        "http://o.example/isos/.hidden",
        "http://o.example/isos/...",
        "http://o.example/isos/v1.2/..a",
        "http://o.example/isos/a;v=1.iso",
        "http://o.example/isos/sub/dir/a.iso?X-Amz-Signature=abc&token=..%2f",
        "http://o.example/isos/a.iso#../../x",
        "HTTP://O.EXAMPLE/isos/a.iso",
        "http://o.example:80/isos/a.iso",
        "http://user:pw@o.example/isos/a.iso",
    ],
)
def test_legit_urls_are_under(url: str) -> None:
    assert path_problem(url) is None
    assert is_under(url, BASE)


@pytest.mark.parametrize("escape", [*ESCAPES, "..\\", "%252E%252E/", "%25252e%25252e/"])
def test_every_encoding_of_dot_dot_is_refused(escape: str) -> None:
    url = f"{BASE}{escape}private/secrets.tar"
    assert path_problem(url) is not None
    assert not is_under(url, BASE)


@pytest.mark.parametrize(
    "url",
    [
        "http://o.example/isos/..",  # a trailing ".."
        "http://o.example/isos/%2e%2e",
        "http://o.example/isos/a/..",
        "http://o.example/isos/.",
        "http://o.example/isos/./a.iso",
        "http://o.example/isos/%2e/a.iso",
        "http://o.example/isos/.;x/a.iso",
        "http://o.example/isos/a%2fb.iso",
        "http://o.example/isos/a%5Cb.iso",
        "http://o.example/isos/a\\b.iso",
        "http://o.example/isos/a%00.iso",
        "http://o.example/isos/a b.iso",
        "http://o.example/isos/a\tb.iso",
        "http://o.example/isos/%c0%ae%c0%ae/x",  # overlong UTF-8 "."
    ],
)
def test_unsafe_paths_are_refused(url: str) -> None:
    assert path_problem(url) is not None
    assert not is_under(url, BASE)


@pytest.mark.parametrize(
    "url",
    [
        "http://o.example/isos-evil/a.iso",
        "http://o.example/iso/a.iso",
        "http://o.example/a.iso",
        "http://o.example/private/isos/a.iso",
        "https://o.example/isos/a.iso",
        "http://o.example:8080/isos/a.iso",
        "http://o.example.evil/isos/a.iso",
        "http://evil@o.example.evil/isos/a.iso",
        "http://o.example@evil/isos/a.iso",
        "ftp://o.example/isos/a.iso",
        "not a url",
        "http://o.example:99999/isos/a.iso",
    ],
)
def test_other_places_are_not_under(url: str) -> None:
    assert not is_under(url, BASE)


def test_default_ports_and_case_are_normalised() -> None:
    assert is_under("https://O.Example:443/isos/a", "https://o.example/isos/")
    assert is_under("http://o.example/isos/a", "http://O.EXAMPLE:80/isos/")
    assert is_under("http://[::1]:80/isos/a", "http://[::1]/isos/")
    assert not is_under("http://o.example/ISOS/a", BASE)  # paths are case-sensitive


def test_an_unsafe_base_contains_nothing() -> None:
    assert not is_under("http://o.example/private/a", "http://o.example/isos/../private/")


# -- run-time registration through the real service ---------------------------------------


@pytest.mark.parametrize("escape", [*ESCAPES, "", "trailing"])
async def test_registration_outside_the_prefix_is_403_and_never_fetched(
    raw_origin: RawLogOrigin, tmp_path: Path, client: aiohttp.ClientSession, escape: str
) -> None:
    if escape == "trailing":
        url = raw_origin.url + "isos/.."
    elif escape == "":
        url = raw_origin.url + "isos-evil/x.iso"  # a string prefix of the origin, not under it
    else:
        url = raw_origin.url + "isos/" + escape + "private/secrets.tar"
    cache_dir = tmp_path / "cache"
    service = Service(parse_config_text(service_config(raw_origin, cache_dir)))
    await service.start()
    try:
        status, answer = await call(client, "PUT", service.url + "api/images/leak", {"url": url})
        assert status == 403, answer
        assert set(answer) == {"error", "detail"} and answer["error"] == "forbidden"
        status, _, body = await fetch(client, service.url + "images/leak")
        assert status == 404 and SECRET not in body
        status, images = await call(client, "GET", service.url + "api/images")
        assert status == 200 and "leak" not in [i["name"] for i in images]
    finally:
        await service.stop()
    # Nothing persisted: a restarted service does not know the name either.
    service = Service(parse_config_text(service_config(raw_origin, cache_dir)))
    await service.start()
    try:
        status, images = await call(client, "GET", service.url + "api/images")
        assert status == 200 and "leak" not in [i["name"] for i in images]
        assert (await fetch(client, service.url + "images/leak"))[0] == 404
    finally:
        await service.stop()
    assert raw_origin.raw == []  # the origin was never contacted
    assert raw_origin.log == []


async def test_legit_registration_still_works(
    raw_origin: RawLogOrigin, make_service: MakeService, client: aiohttp.ClientSession
) -> None:
    service = await make_service(raw_origin.url + "isos/", extra=f'[admin]\ntoken = "{TOKEN}"\n')
    for name, path in (("plain", "public.iso"), ("spaced", "with%20space.iso")):
        url = f"HTTP://127.0.0.1:{raw_origin.port}/isos/{path}"
        status, answer = await call(client, "PUT", service.url + f"api/images/{name}", {"url": url})
        assert status == 201, answer
        status, _, body = await fetch(client, service.url + f"images/{name}")
        assert (status, body) == (200, PUBLIC)
    assert raw_origin.outside("isos/") == []
    assert len(raw_origin.raw) >= 2


# -- the config file ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["isos/../private/secrets.tar", "isos/%2e%2e/private/secrets.tar", "isos/..%2fx"]
)
@pytest.mark.parametrize("scheme", ["http", "ftp"])
def test_config_image_escaping_its_origin_is_a_config_error(
    tmp_path: Path, path: str, scheme: str
) -> None:
    text = (
        f'[cache]\ndir = "{tmp_path}"\n'
        f'[origins.o]\nurl = "{scheme}://127.0.0.1:9/isos/"\n'
        f'[images.leak]\nurl = "{scheme}://127.0.0.1:9/{path}"\n'
    )
    with pytest.raises(ConfigError) as caught:
        parse_config_text(text, source="bad.toml")
    assert caught.value.key == "images.leak.url"


def test_config_ftp_image_beside_its_origin_is_a_config_error(tmp_path: Path) -> None:
    text = (
        f'[cache]\ndir = "{tmp_path}"\n'
        '[origins.o]\nurl = "ftp://127.0.0.1:9/isos/"\n'
        '[images.leak]\nurl = "ftp://127.0.0.1:9/isos-evil/x.iso"\n'
    )
    with pytest.raises(ConfigError) as caught:
        parse_config_text(text, source="bad.toml")
    assert caught.value.key == "images.leak.url"


def test_config_escape_exits_2_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(
        f'[cache]\ndir = "{tmp_path}"\n'
        '[origins.o]\nurl = "http://127.0.0.1:9/isos/"\n'
        '[images.leak]\nurl = "http://127.0.0.1:9/isos/..;/private/secrets.tar"\n'
    )
    result = subprocess.run(
        [sys.executable, "-m", "isocache", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2, result.stderr
    assert f"{config}: images.leak.url: " in result.stderr


# -- redirects ----------------------------------------------------------------------------


@pytest.mark.parametrize("escape", ESCAPES)
async def test_redirect_out_of_the_prefix_is_refused(
    raw_origin: RawLogOrigin,
    make_service: MakeService,
    client: aiohttp.ClientSession,
    escape: str,
) -> None:
    raw_origin.redirects["isos/jump.iso"] = f"/isos/{escape}private/secrets.tar"
    raw_origin.redirects["isos/hop.iso"] = "/isos/public.iso"
    service = await make_service(raw_origin.url + "isos/")
    status, _, body = await fetch(client, service.url + "origins/test/hop.iso")
    assert (status, body) == (200, PUBLIC)  # a redirect within the prefix is followed
    status, headers, body = await fetch(client, service.url + "origins/test/jump.iso")
    assert status == 502 and SECRET not in body
    assert headers["Content-Type"].startswith("application/json")
    assert b"outside the configured origins" in body
    assert raw_origin.outside("isos/") == []
    assert [e.path for e in raw_origin.log if "private" in e.path] == []


@pytest.mark.parametrize("escape", ["..;/", "..%3B/", "%252e%252e/", "%25252E%25252E/", ".%3b/"])
async def test_request_paths_the_origin_could_resolve_are_400(
    raw_origin: RawLogOrigin, make_service: MakeService, client: aiohttp.ClientSession, escape: str
) -> None:
    service = await make_service(raw_origin.url + "isos/")
    status, headers, body = await fetch(
        client, service.url + f"origins/test/{escape}private/secrets.tar"
    )
    assert status == 400 and headers["Content-Type"].startswith("application/json"), body
    assert SECRET not in body
    assert raw_origin.raw == []
