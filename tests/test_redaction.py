"""Secrets in image URLs (a userinfo password, a signed query) are sent to the origin but
never shown: not by the admin API, not in error bodies, not in log lines (issue 9, item 3)."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import Any

import aiohttp
import pytest

from isocache.config import redact_url as config_redact_url
from isocache.urls import redact_text, redact_url
from tests.conftest import MakeService, fetch
from tests.test_url_containment import PUBLIC, TOKEN, RawLogOrigin, call

QUERY = "X-Amz-Signature=SECRET1&token=SECRET2"
PASSWORD = "hunter2pw"
SECRETS = ("SECRET1", "SECRET2", PASSWORD)


def clean(text: str) -> bool:
    return not any(secret in text for secret in SECRETS)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://h/x", "http://h/x"),
        ("http://h/x?" + QUERY, "http://h/x?<redacted>"),
        ("http://u:p@h:8080/x?y#z", "http://u:***@h:8080/x?<redacted>#<redacted>"),
        ("http://u@h/x#frag", "http://u@h/x#<redacted>"),
        ("s3://bucket/key?versionId=7", "s3://bucket/key?<redacted>"),
        ("ftp://u:p%40ss@h/", "ftp://u:***@h/"),
        ("http://h:99999/x?token=S", "<unparsable url>"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    assert config_redact_url(url) == shown  # the old import path still works


def test_redact_text_masks_every_url_in_a_message() -> None:
    text = f"origin has no http://a:{PASSWORD}@h/x?{QUERY} (after https://h2/y?token=SECRET2)"
    shown = redact_text(text)
    assert clean(shown)
    assert "http://a:***@h/x?<redacted>" in shown and "https://h2/y?<redacted>" in shown
    assert redact_text("no url here: 404") == "no url here: 404"


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def wait_job(client: aiohttp.ClientSession, base: str, job_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 20
    while True:
        async with client.get(f"{base}api/prewarm/{job_id}") as resp:
            job: dict[str, Any] = await resp.json()
        if job["state"] in ("done", "failed"):
            return job
        assert time.monotonic() < deadline, job
        await asyncio.sleep(0.05)


async def test_secrets_in_image_urls_never_leave_the_process(
    make_service: MakeService, client: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    origin = RawLogOrigin()
    origin.add_file("isos/public.iso", PUBLIC)
    origin.add_file("isos/flaky.iso", PUBLIC)
    await origin.start()
    try:
        down = closed_port()
        extra = f'[admin]\ntoken = "{TOKEN}"\n[origins.down]\nurl = "http://127.0.0.1:{down}/d/"\n'
        service = await make_service(origin.url + "isos/", extra=extra, fetch={"retries": "1"})
        base = service.url
        userinfo = f"user:{PASSWORD}@127.0.0.1"
        urls = {
            "good": f"http://{userinfo}:{origin.port}/isos/public.iso?{QUERY}",
            "gone": f"http://{userinfo}:{origin.port}/isos/missing.iso?{QUERY}",
            "flaky": f"http://{userinfo}:{origin.port}/isos/flaky.iso?{QUERY}",
            "down": f"http://{userinfo}:{down}/d/x.iso?{QUERY}",
        }
        for name, url in urls.items():
            status, answer = await call(client, "PUT", f"{base}api/images/{name}", {"url": url})
            assert status == 201, answer
            assert clean(str(answer)) and answer["url"].endswith("?<redacted>")
        status, answer = await call(
            client, "PUT", f"{base}api/images/evil", {"url": f"http://127.0.0.2:1/x?{QUERY}"}
        )
        assert status == 403 and clean(str(answer))

        # The image is fetched with its query string intact.
        status, _, body = await fetch(client, base + "images/good")
        assert (status, body) == (200, PUBLIC)
        assert f"/isos/public.iso?{QUERY}" in origin.raw
        assert all(r.endswith(f"?{QUERY}") for r in origin.raw)

        # The unauthenticated listing shows the URL without its secrets.
        async with client.get(base + "api/images") as resp:
            listing = await resp.text()
        assert resp.status == 200 and clean(listing)
        assert f"http://user:***@127.0.0.1:{origin.port}/isos/public.iso?<redacted>" in listing

        # 404 from the origin.
        status, _, body = await fetch(client, base + "images/gone")
        assert status == 404 and clean(body.decode())
        assert f"/isos/missing.iso?{QUERY}" in origin.raw

        # 500 from the origin on every try: 502.
        origin.fail_head_next = origin.fail_next = 100
        status, _, body = await fetch(client, base + "images/flaky")
        assert status == 502 and clean(body.decode()) and b"?<redacted>" in body
        assert origin.raw.count(f"/isos/flaky.iso?{QUERY}") == 2  # the try and one retry
        origin.fail_head_next = origin.fail_next = 0

        # The origin is down: 502.
        status, _, body = await fetch(client, base + "images/down")
        assert status == 502 and clean(body.decode()) and b"cannot connect" in body

        # A prewarm job's error, readable without a token.
        status, answer = await call(client, "POST", base + "api/prewarm", {"image": "gone"})
        assert status == 202
        job = await wait_job(client, base, answer["id"])
        assert job["state"] == "failed" and clean(str(job))
    finally:
        await origin.stop()
    assert "origin-retry" in caplog.text  # the retries were logged, redacted
    assert clean(caplog.text), [r.getMessage() for r in caplog.records if not clean(r.getMessage())]


def test_redaction_is_idempotent() -> None:
    for url in (f"http://a:{PASSWORD}@h/x?{QUERY}#f", "http://h/x", "s3://b/k?v=1"):
        once = redact_url(url)
        assert redact_url(once) == once and redact_text(f"at {once}: 404") == f"at {once}: 404"
