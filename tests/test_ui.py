"""The web page at /ui/, in a real headless Chromium against a real Service and origin: the
origin tree with the type filter shows exactly what the listing API lists, a prewarm's
progress runs to 100 % by itself, evict drops the image, a wrong token shows the API's error,
names are text, and the page works behind a reverse proxy's path prefix."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema
import pytest
from aiohttp import web

from bench.origin import OriginServer, generate_image
from tests.conftest import CHUNK, KiB, MakeService, fetch
from tests.test_openapi import schema_for
from tests.ui_browser import By, Page, chromium

__all__ = ["chromium"]  # the module-scoped browser fixture

TOKEN = "ui-test-token"
EVIL = "<img src=x onerror=alert(1)>.iso"
ROOT = Path(__file__).resolve().parent.parent
UI_FILES = ("index.html", "app.js", "style.css")

FILES = {
    "isos/alpine.iso": 3 * CHUNK + 100,
    "isos/debian.iso": 2 * CHUNK,
    "isos/floppy.vfd": 1474560 // 64,
    "isos/disk.qcow2": CHUNK + 7,
    "isos/notes.txt": 12,
    "isos/sub/inner.iso": 999,
    f"isos/{EVIL}": 10,
}


def add_files(origin: OriginServer) -> None:
    for number, (path, size) in enumerate(FILES.items()):
        origin.add_file(path, generate_image(size, seed=1400 + number))


def auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def admin(token: str = TOKEN) -> str:
    return f'[admin]\ntoken = "{token}"\n'


@pytest.fixture
def page(chromium: Any) -> Page:
    return Page(chromium)


def no_console_errors(page: Page) -> None:
    errors = page.console_errors()
    assert errors == [], errors


# -- the files themselves ------------------------------------------------------------------


async def test_page_is_served_with_a_strict_csp(
    origin: OriginServer, make_service: MakeService, client: aiohttp.ClientSession
) -> None:
    service = await make_service(origin.url)
    status, headers, body = await fetch(client, service.url + "ui/")
    assert status == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
    csp = headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp
    assert "frame-ancestors 'none'" in csp and "unsafe" not in csp
    assert headers["X-Content-Type-Options"] == "nosniff"
    html = body.decode()
    # No inline script, no inline style, nothing loaded from another host.
    assert re.findall(r"<script\b[^>]*>", html) == ['<script src="app.js" defer>']
    assert re.findall(r"<script\b[^>]*>(.*?)</script>", html, re.S) == [""]
    assert " style=" not in html and "<style" not in html
    for name, content_type in [
        ("app.js", "text/javascript; charset=utf-8"),
        ("style.css", "text/css; charset=utf-8"),
        ("favicon.svg", "image/svg+xml"),
    ]:
        status, headers, body = await fetch(client, service.url + "ui/" + name)
        assert status == 200 and headers["Content-Type"] == content_type
        assert headers["Content-Security-Policy"] == csp
        assert body == (ROOT / "isocache" / "ui" / name).read_bytes()
    for name in UI_FILES:
        text = (ROOT / "isocache" / "ui" / name).read_text()
        assert re.search(r"(https?:)?//[a-z0-9]", text.replace("http://www.w3.org", "")) is None
        assert "innerHTML" not in text and "insertAdjacentHTML" not in text
    # /ui redirects relatively (a proxy's prefix survives); unknown files are JSON 404s.
    async with client.get(service.url + "ui", allow_redirects=False) as resp:
        assert resp.status == 301 and resp.headers["Location"] == "ui/"
    status, _, body = await fetch(client, service.url + "ui/secret.txt")
    assert status == 404 and json.loads(body)["error"] == "not_found"


def test_an_install_ships_the_page(tmp_path: Path) -> None:
    """A non-editable install has the page: setuptools' build_py (what a wheel holds) copies
    every file UiPages serves. Runs offline, unlike a wheel build with build isolation."""
    source = tmp_path / "src"
    shutil.copytree(
        ROOT / "isocache", source / "isocache", ignore=shutil.ignore_patterns("__pycache__")
    )
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    build = tmp_path / "lib"
    subprocess.run(
        [
            sys.executable,
            "-c",
            "from setuptools import setup; setup()",
            "-q",
            "build_py",
            "--build-lib",
            str(build),
        ],
        cwd=source,
        check=True,
        capture_output=True,
    )
    shipped = {p.name for p in (build / "isocache" / "ui").iterdir()}
    assert shipped == {*UI_FILES, "favicon.svg", "__init__.py"}


async def test_origins_api_names_kinds_without_secrets(
    origin: OriginServer, make_service: MakeService, client: aiohttp.ClientSession
) -> None:
    extra = (
        '[origins.ftp]\nurl = "ftp://alice@127.0.0.1:9/pub/"\npassword = "hunter2-secret"\n'
        '[origins.bucket]\nurl = "s3://isos/prefix/"\nendpoint_url = "http://127.0.0.1:9"\n'
        'aws_access_key_id = "AKIDUI"\naws_secret_access_key = "s3-secret-key"\n'
    )
    service = await make_service(origin.url, extra=extra)
    status, _, body = await fetch(client, service.url + "api/origins")
    assert status == 200
    data = json.loads(body)
    jsonschema.validate(data, schema_for("/api/origins", "get", 200))
    assert data == [
        {"name": "test", "kind": "http", "url": origin.url},
        {"name": "ftp", "kind": "ftp", "url": "ftp://alice@127.0.0.1:9/pub/"},
        {"name": "bucket", "kind": "s3", "url": "s3://isos/prefix/"},
    ]
    assert b"secret" not in body and b"hunter2" not in body


async def test_cached_api_reports_known_versions_only(
    origin: OriginServer, make_service: MakeService, client: aiohttp.ClientSession
) -> None:
    add_files(origin)
    service = await make_service(origin.url)
    base = service.url + "api/origins/test/cached"
    query = "?path=isos/alpine.iso&path=isos/debian.iso"
    status, _, body = await fetch(client, base + query)
    assert (status, json.loads(body)) == (200, [])  # nothing known yet: the origin isn't asked
    assert origin.requests() == []
    status, _, data = await fetch(
        client, service.url + "origins/test/isos/alpine.iso", {"Range": "bytes=0-99"}
    )
    assert status == 206 and len(data) == 100
    # The chunk is stored just after the response went out: poll until it is.
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while True:
        status, _, body = await fetch(client, base + query)
        found = json.loads(body)
        if (found and found[0]["cached_bytes"]) or loop.time() > deadline:
            break
        await asyncio.sleep(0.02)
    jsonschema.validate(found, schema_for("/api/origins/{origin}/cached", "get", 200))
    assert found == [
        {"path": "isos/alpine.iso", "size": FILES["isos/alpine.iso"], "cached_bytes": CHUNK}
    ]
    status, _, body = await fetch(client, base + "?path=isos/../../etc/passwd")
    assert status == 400 and json.loads(body)["error"] == "bad_path"
    status, _, body = await fetch(client, base)
    assert status == 400 and json.loads(body)["error"] == "bad_request"
    status, _, body = await fetch(client, service.url + "api/origins/nope/cached?path=a.iso")
    assert status == 404


# -- the page in a browser -----------------------------------------------------------------


def listed(page: Page, dir_path: str) -> tuple[set[tuple[str, int]], set[str]]:
    """(files as (name, size), directory names) the page shows directly in `dir_path`."""
    files = {
        (e.get_attribute("data-name") or "", int(e.get_attribute("data-size") or -1))
        for e in page.css(f'li.dir[data-path="{dir_path}"] > ul > li.file')
    }
    dirs = {
        (e.get_attribute("data-path") or "").rpartition("/")[2]
        for e in page.css(f'li.dir[data-path="{dir_path}"] > ul > li.dir')
    }
    return files, dirs


async def api_listing(
    client: aiohttp.ClientSession, url: str
) -> tuple[set[tuple[str, int]], set[str]]:
    status, _, body = await fetch(client, url)
    assert status == 200
    entries = json.loads(body)
    files = {(e["name"], e["size"]) for e in entries if e["type"] != "dir"}
    return files, {e["name"] for e in entries if e["type"] == "dir"}


async def open_isos(page: Page) -> None:
    await page.do(page.click, 'li.origin[data-origin="test"] > .toggle')
    await page.do(page.click, 'li.dir[data-path="isos"] > .toggle')
    await page.do(page.wait, lambda d: page.css('li.dir[data-path="isos"] > ul > li.file'))


async def test_browse_an_origin_with_the_type_filter(
    origin: OriginServer, make_service: MakeService, client: aiohttp.ClientSession, page: Page
) -> None:
    add_files(origin)
    service = await make_service(origin.url)
    listing = service.url + "origins/test/isos/"
    await page.do(page.open, service.url + "ui/")
    await open_isos(page)

    async def shows(query: str) -> None:
        expected = await api_listing(client, listing + query)
        await page.do(page.wait, lambda d: listed(page, "isos") == expected)

    await shows("")
    everything = await api_listing(client, listing)
    assert len(everything[0]) == 6 and everything[1] == {"sub"}
    await page.do(page.click, '#type-filter input[value="iso"]')
    await shows("?type=iso")
    files, _ = listed(page, "isos")
    assert {name for name, _ in files} == {"alpine.iso", "debian.iso", EVIL}
    await page.do(page.click, '#type-filter input[value="vfd"]')
    await shows("?type=iso,vfd")
    assert ("floppy.vfd", FILES["isos/floppy.vfd"]) in listed(page, "isos")[0]
    # A subdirectory opens under the filter too.
    await page.do(page.click, 'li.dir[data-path="isos/sub"] > .toggle')
    expected_sub = await api_listing(client, listing + "sub/?type=iso,vfd")
    await page.do(page.wait, lambda d: listed(page, "isos/sub") == expected_sub)
    assert expected_sub == ({("inner.iso", 999)}, set())
    await page.do(page.click, '#type-filter input[value="all"]')
    await shows("")

    # Attach: the URL, qemu line and libvirt XML point at this service.
    await page.do(page.click, 'li.file[data-name="alpine.iso"] > .attach')
    url = await page.do(
        lambda: page.wait(lambda d: d.find_element(By.ID, "attach-url").get_attribute("value"))
    )
    assert url == service.url + "origins/test/isos/alpine.iso"
    qemu = await page.do(
        lambda: page.driver.find_element(By.ID, "attach-qemu").get_attribute("value")
    )
    assert qemu == (
        f"-drive 'if=none,id=cd0,media=cdrom,readonly=on,format=raw,file={url}' "
        "-device ide-cd,drive=cd0"
    )
    xml = await page.do(
        lambda: page.driver.find_element(By.ID, "attach-libvirt").get_attribute("value")
    )
    assert "<disk type='network' device='cdrom'>" in xml
    assert "<source protocol='http' name='/origins/test/isos/alpine.iso'>" in xml
    assert f"<host name='127.0.0.1' port='{service.port}'/>" in xml
    # Listing the tree read only listings: no file was fetched.
    assert {e.path for e in origin.log} == {"", "isos/", "isos/sub/"}
    await page.do(no_console_errors, page)


async def test_names_render_as_text(
    origin: OriginServer, make_service: MakeService, page: Page
) -> None:
    add_files(origin)
    service = await make_service(origin.url)
    await page.do(page.open, service.url + "ui/")
    await open_isos(page)
    selector = 'li.dir[data-path="isos"] > ul > li.file .name'
    text = await page.do(page.wait_text, selector, lambda t: t == EVIL)
    assert text == EVIL
    # Rendered as text: no element was made from the name, no handler ran.
    assert await page.do(lambda: page.driver.execute_script("return document.images.length")) == 0
    assert await page.do(lambda: len(page.css("li.file img"))) == 0
    assert not await page.do(page.alert_open)
    await page.do(page.click, f'li.file[data-name="{EVIL}"] > .attach')
    title = await page.do(page.text, "#attach-title")
    assert title == f"test/isos/{EVIL}"
    xml = await page.do(
        lambda: page.driver.find_element(By.ID, "attach-libvirt").get_attribute("value")
    )
    assert "name='/origins/test/isos/%3Cimg%20src%3Dx%20onerror%3Dalert(1)%3E.iso'" in xml
    assert not await page.do(page.alert_open)
    await page.do(no_console_errors, page)


async def test_prewarm_progress_to_100_then_evict(
    tmp_path: Path, make_service: MakeService, client: aiohttp.ClientSession, page: Page
) -> None:
    # 2 MiB on 4 connections of 128 KiB/s: about 4 s, several page refreshes of progress.
    # (A per-connection rate: a shared one would let a connection idle past read_timeout.)
    size = 32 * CHUNK
    data = generate_image(size, seed=1410)
    async with OriginServer(per_connection_rate=128 * KiB) as origin:
        origin.add_file("img.raw", data)
        service = await make_service(origin.url, images={"img": "img.raw"}, extra=admin())
        await page.do(page.open, service.url + "ui/#images")
        row = 'tr[data-name="img"]'
        await page.do(page.wait_text, f"{row} .cached-text", lambda t: t.startswith("0 B"))
        # Read-only until the token is entered; then the buttons work.
        assert not await page.do(lambda: page.css(f"{row} .prewarm")[0].is_enabled())
        await page.do(page.set_token, TOKEN)
        await page.do(page.click, f"{row} .prewarm")
        message = await page.do(page.wait_text, "#message-text", lambda t: "queued as job" in t)
        match = re.search(r"queued as job ([0-9a-f]+);", message)
        assert match, message
        job_id = match.group(1)

        await page.do(page.click, "#nav-jobs")
        job = f'tr[data-id="{job_id}"]'
        seen: list[str] = []

        def progressed(driver: Any) -> bool:
            cells = page.css(f"{job} .pct")
            if cells:
                text = cells[0].text
                if not seen or seen[-1] != text:
                    seen.append(text)
            return bool(cells) and cells[0].text == "100 %"

        await page.do(page.wait, progressed)
        state = await page.do(page.wait_text, f"{job} .state", lambda t: t == "done")
        assert state == "done"
        assert await page.do(page.text, f"{job} .bytes") == "2.0 MiB / 2.0 MiB"
        # The page updated by itself along the way: some value between 0 and 100 was shown.
        middle = [s for s in seen if s not in ("–", "0 %", "100 %")]
        assert middle, seen
        _, _, body = await fetch(client, service.url + f"api/prewarm/{job_id}")
        view = json.loads(body)
        assert (view["state"], view["bytes_done"], view["bytes_total"]) == ("done", size, size)
        assert origin.body_bytes("img.raw") == size  # each byte fetched once

        await page.do(page.click, "#nav-images")
        await page.do(page.wait_text, f"{row} .cached-text", lambda t: t == "2.0 MiB (100 %)")
        _, _, body = await fetch(client, service.url + "api/images")
        (image,) = json.loads(body)
        assert image["cached_bytes"] == size and image["size"] == size

        await page.do(page.click, f"{row} .evict")
        await page.do(page.wait_text, "#message-text", lambda t: t == "Evicted 32 chunks of img.")
        await page.do(page.wait_text, f"{row} .cached-text", lambda t: t == "0 B (0 %)")
        _, _, body = await fetch(client, service.url + "api/images")
        assert json.loads(body)[0]["cached_bytes"] == 0
        await page.do(no_console_errors, page)


async def test_a_wrong_token_shows_the_apis_error(
    origin: OriginServer, make_service: MakeService, client: aiohttp.ClientSession, page: Page
) -> None:
    origin.add_file("img.raw", generate_image(2 * CHUNK, seed=1411))
    service = await make_service(origin.url, images={"img": "img.raw"}, extra=admin())
    await page.do(page.open, service.url + "ui/#images")
    mode = await page.do(page.text, "#mode")
    assert mode.startswith("Read-only: enter the admin token")
    await page.do(page.set_token, "not-the-token")
    await page.do(page.click, 'tr[data-name="img"] .evict')
    async with client.delete(
        service.url + "api/images/img/cache", headers=auth("not-the-token")
    ) as resp:
        assert resp.status == 403
        body = await resp.json()
    expected = f"403 {body['error']}: {body['detail']}"
    assert expected == "403 forbidden: wrong token"
    shown = await page.do(page.wait_text, "#message-text", lambda t: t == expected)
    assert shown == expected
    # The token went only into a header: no URL the page loaded holds it.
    urls = await page.do(
        lambda: page.driver.execute_script(
            "return performance.getEntriesByType('resource').map(e => e.name)"
        )
    )
    assert any("api/images/img/cache" in u for u in urls)
    assert not any("not-the-token" in u for u in [*urls, page.driver.current_url])
    stored = await page.do(
        lambda: page.driver.execute_script("return sessionStorage.getItem('isocache.token')")
    )
    assert stored == "not-the-token"
    # The only console entry is the browser's note of the refused request itself.
    errors = await page.do(page.console_errors)
    assert len(errors) == 1 and "api/images/img/cache" in errors[0]["message"], errors
    assert "403" in errors[0]["message"]
    # Forget: back to read-only.
    await page.do(page.click, "#token-forget")
    await page.do(page.wait_text, "#mode", lambda t: t.startswith("Read-only"))


async def test_register_pin_verify_cancel_remove(
    tmp_path: Path, make_service: MakeService, client: aiohttp.ClientSession, page: Page
) -> None:
    size = 64 * CHUNK
    data = generate_image(size, seed=1412)
    async with OriginServer(per_connection_rate=64 * KiB) as origin:  # a job slow to cancel
        origin.add_file("isos/new.iso", data)
        service = await make_service(origin.url, extra=admin())
        await page.do(page.open, service.url + "ui/#images")
        await page.do(page.set_token, TOKEN)

        def fill(name: str, url: str) -> None:
            form = page.driver.find_element(By.ID, "register-form")
            for field, value in (("name", name), ("url", url)):
                element = form.find_element(By.NAME, field)
                element.clear()
                element.send_keys(value)
            form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()

        # Outside the origins: refused by the API, and the page shows its answer.
        outside = "http://127.0.0.1:9/elsewhere.iso"
        await page.do(fill, "stray", outside)
        async with client.put(
            service.url + "api/images/stray", json={"url": outside}, headers=auth()
        ) as resp:
            refused = await resp.json()
        assert resp.status == 403
        expected = f"403 {refused['error']}: {refused['detail']}"
        await page.do(page.wait_text, "#message-text", lambda t: t == expected)
        assert not await page.do(page.css, 'tr[data-name="stray"]')

        await page.do(fill, "fresh", origin.url + "isos/new.iso")
        await page.do(page.wait_text, "#message-text", lambda t: t == "Registered fresh.")
        row = 'tr[data-name="fresh"]'
        await page.do(page.click, f"{row} .pin")
        await page.do(page.wait_text, f"{row} .pinned", lambda t: t == "yes")
        await page.do(page.click, f"{row} .verify")
        await page.do(
            page.wait_text,
            "#message-text",
            lambda t: t.startswith("Verified fresh: 0 chunks good, 0 dropped"),
        )

        await page.do(page.click, f"{row} .prewarm")
        message = await page.do(page.wait_text, "#message-text", lambda t: "queued as job" in t)
        match = re.search(r"queued as job ([0-9a-f]+);", message)
        assert match, message
        job = f'tr[data-id="{match.group(1)}"]'
        await page.do(page.click, "#nav-jobs")
        await page.do(page.click, f"{job} .cancel")
        await page.do(page.wait_text, f"{job} .state", lambda t: t == "cancelled")
        _, _, body = await fetch(client, service.url + f"api/prewarm/{match.group(1)}")
        view = json.loads(body)
        assert view["state"] == "cancelled" and view["bytes_done"] < size

        await page.do(page.click, "#nav-images")
        await page.do(page.click, f"{row} .remove")  # arms it
        await page.do(page.wait_text, f"{row} .remove", lambda t: t == "Really remove?")
        await page.do(page.click, f"{row} .remove")
        await page.do(page.wait, lambda d: not page.css(row))
        _, _, body = await fetch(client, service.url + "api/images")
        assert json.loads(body) == []
        # The refused registration is the only request the browser logged as failed.
        errors = await page.do(page.console_errors)
        assert len(errors) == 1 and "api/images/stray" in errors[0]["message"], errors


# -- behind a path prefix ------------------------------------------------------------------


class PrefixProxy:
    """A reverse proxy that serves the service under /prefix/ and logs every path asked."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.paths: list[str] = []
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.paths.append(request.raw_path)
        if not request.raw_path.startswith("/prefix/"):
            return web.Response(status=404, text="outside the prefix")
        assert self._session is not None
        target = self.upstream + request.raw_path[len("/prefix/") :]
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host",)}
        async with self._session.request(
            request.method,
            target,
            headers=headers,
            data=await request.read(),
            allow_redirects=False,
        ) as upstream:
            body = await upstream.read()
            keep = {"Content-Type", "Location", "Content-Security-Policy"}
            return web.Response(
                status=upstream.status,
                body=body,
                headers={k: v for k, v in upstream.headers.items() if k in keep},
            )

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(auto_decompress=False)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}/"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()


@pytest.fixture
async def proxy_factory() -> AsyncIterator[list[PrefixProxy]]:
    proxies: list[PrefixProxy] = []
    yield proxies
    for proxy in proxies:
        await proxy.stop()


async def test_behind_a_path_prefix(
    origin: OriginServer,
    make_service: MakeService,
    client: aiohttp.ClientSession,
    page: Page,
    proxy_factory: list[PrefixProxy],
) -> None:
    add_files(origin)
    service = await make_service(origin.url, extra=admin())
    proxy = PrefixProxy(service.url)
    proxy_factory.append(proxy)
    await proxy.start()
    await page.do(page.open, proxy.url + "prefix/ui")  # redirected to prefix/ui/
    assert await page.do(lambda: page.driver.current_url) == proxy.url + "prefix/ui/"
    await page.do(page.set_token, TOKEN)
    await open_isos(page)
    expected = await api_listing(client, service.url + "origins/test/isos/")
    await page.do(page.wait, lambda d: listed(page, "isos") == expected)
    # Prewarm one file from the tree; its cached amount appears in the tree by itself.
    await page.do(page.click, 'li.file[data-name="debian.iso"] > .prewarm')
    await page.do(page.wait_text, "#message-text", lambda t: "queued as job" in t)
    await page.do(
        page.wait_text,
        'li.file[data-name="debian.iso"] .cached-text',
        lambda t: t == "128.0 KiB (100 %)",
    )
    await page.do(page.click, 'li.file[data-name="debian.iso"] > .attach')
    url = await page.do(
        lambda: page.driver.find_element(By.ID, "attach-url").get_attribute("value")
    )
    assert url == proxy.url + "prefix/origins/test/isos/debian.iso"
    # Every request the page made stayed under the prefix.
    assert proxy.paths and all(p.startswith("/prefix/") for p in proxy.paths), proxy.paths
    assert any(p.startswith("/prefix/api/prewarm") for p in proxy.paths)
    assert origin.body_bytes("isos/debian.iso") == FILES["isos/debian.iso"]
    await page.do(no_console_errors, page)


# -- screenshots for the README ------------------------------------------------------------


async def test_screenshots_of_the_three_views(
    tmp_path: Path, make_service: MakeService, client: aiohttp.ClientSession, page: Page
) -> None:
    """Three views with real data; ISOCACHE_UI_SCREENSHOTS=docs writes docs/ui-*.png."""
    out = Path(os.environ.get("ISOCACHE_UI_SCREENSHOTS") or tmp_path)
    async with OriginServer(per_connection_rate=256 * KiB) as origin:
        add_files(origin)
        origin.add_file("images/alpine-virt-3.20.iso", generate_image(6 * CHUNK, seed=1420))
        origin.add_file("images/debian-12-netinst.iso", generate_image(192 * CHUNK, seed=1421))
        origin.add_file("images/rocky-9-boot.iso", generate_image(8 * CHUNK, seed=1422))
        images = {
            "alpine": "images/alpine-virt-3.20.iso",
            "debian": "images/debian-12-netinst.iso",
            "rocky": "images/rocky-9-boot.iso",
        }
        service = await make_service(origin.url, images=images, extra=admin())
        headers = auth()
        async with client.post(
            service.url + "api/prewarm", json={"image": "alpine"}, headers=headers
        ) as r:
            assert r.status == 202
        async with client.put(service.url + "api/images/rocky/pin", headers=headers) as r:
            assert r.status == 200
        async with client.post(
            service.url + "api/prewarm",
            json={"path": "/origins/test/isos/alpine.iso"},
            headers=headers,
        ) as r:
            assert r.status == 202

        await page.do(page.open, service.url + "ui/")
        await page.do(page.set_token, TOKEN)
        await open_isos(page)
        await page.do(page.click, 'li.file[data-name="alpine.iso"] > .attach')
        await page.do(
            page.wait_text, 'li.file[data-name="alpine.iso"] .cached-text', lambda t: "(100 %)" in t
        )
        # Taller for this one: the attach panel and the tree below it.
        await page.do(page.driver.set_window_size, 1280, 1040)
        shots = {"origins": await page.do(page.screenshot)}
        await page.do(page.driver.set_window_size, 1280, 860)

        await page.do(page.click, "#attach-close")
        await page.do(page.click, "#nav-images")
        await page.do(
            page.wait_text, 'tr[data-name="alpine"] .cached-text', lambda t: "(100 %)" in t
        )
        await page.do(page.click, 'tr[data-name="debian"] .prewarm')
        await page.do(
            page.wait_text,
            'tr[data-name="debian"] .cached-text',
            lambda t: re.search(r"\(([1-9]\d?) %\)", t) is not None,
        )
        shots["images"] = await page.do(page.screenshot)

        await page.do(page.click, "#nav-jobs")
        await page.do(page.wait_text, "#jobs-table .state", lambda t: t == "running")
        await page.do(page.wait_text, "#jobs-table .eta", lambda t: t.endswith("s"))
        shots["prewarm"] = await page.do(page.screenshot)
        await page.do(no_console_errors, page)
    for name, png in shots.items():
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and 10_000 < len(png) < 300_000, len(png)
        (out / f"ui-{name}.png").write_bytes(png)
