"""S3 origins against moto's standalone server (signatures enforced) on loopback."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bench.origin import OriginServer, generate_image
from isocache.service import Service
from tests.conftest import CHUNK, MakeService, fetch
from tests.s3_server import S3Server

SIZE = 10 * CHUNK + 77


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    server = S3Server()
    server.start()
    client = server.client()
    client.create_bucket(Bucket="images")
    client.put_object(Bucket="images", Key="isos/disk.iso", Body=generate_image(SIZE, seed=90))
    yield server
    server.stop()


async def s3_service(
    make_service: MakeService, s3: S3Server, secret: str | None = None, **kwargs: Any
) -> Service:
    origin = (
        '[origins.bucket]\nurl = "s3://images/isos/"\n'
        f'endpoint_url = "{s3.endpoint}"\nregion = "us-east-1"\n'
        f'aws_access_key_id = "{s3.key_id}"\naws_secret_access_key = "{secret or s3.secret}"\n'
    )
    return await make_service("http://127.0.0.1:9/", extra=origin, **kwargs)


@pytest.mark.parametrize("warm", [False, True], ids=["miss", "hit"])
async def test_ranges_are_byte_exact(
    s3: S3Server, make_service: MakeService, client: aiohttp.ClientSession, warm: bool
) -> None:
    data = generate_image(SIZE, seed=90)
    service = await s3_service(make_service, s3)
    url = service.url + "origins/bucket/disk.iso"
    if warm:
        assert (await fetch(client, url))[2] == data
    rng = random.Random(91)
    for _ in range(40):
        first = rng.randrange(SIZE)
        last = min(SIZE - 1, first + rng.randrange(3 * CHUNK))
        status, _, body = await fetch(client, url, {"Range": f"bytes={first}-{last}"})
        assert (status, body) == (206, data[first : last + 1])
    assert (await fetch(client, url))[2] == data


async def test_requests_are_signed_with_sigv4(
    origin: OriginServer, make_service: MakeService, client: aiohttp.ClientSession
) -> None:
    """Our own origin as the S3 endpoint: it logs the headers it was sent."""
    data = generate_image(3000, seed=92)
    origin.add_file("bucket/isos/x.iso", data)
    extra = (
        '[origins.bucket]\nurl = "s3://bucket/isos/"\n'
        f'endpoint_url = "{origin.url.rstrip("/")}"\nregion = "eu-west-1"\n'
        'aws_access_key_id = "AKIDEXAMPLE"\naws_secret_access_key = "top-secret-key"\n'
    )
    service = await make_service("http://127.0.0.1:9/", extra=extra)
    status, _, body = await fetch(
        client, service.url + "origins/bucket/x.iso", {"Range": "bytes=5-9"}
    )
    assert (status, body) == (206, data[5:10])
    assert origin.log
    for entry in origin.log:
        auth = entry.headers["Authorization"]
        assert auth.startswith("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/")
        assert "/eu-west-1/s3/aws4_request" in auth
        assert "x-amz-date" in auth.lower() and "top-secret-key" not in auth


async def test_bad_signature_is_502_without_secrets(
    s3: S3Server,
    make_service: MakeService,
    client: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    service = await s3_service(make_service, s3, secret="wrong-secret-value")
    status, headers, body = await fetch(client, service.url + "origins/bucket/disk.iso")
    assert status == 502
    assert headers["Content-Type"].startswith("application/json")
    assert b"images refused the request" in body
    assert b"wrong-secret-value" not in body and "wrong-secret-value" not in caplog.text


async def test_missing_object_is_404(
    s3: S3Server, make_service: MakeService, client: aiohttp.ClientSession
) -> None:
    service = await s3_service(make_service, s3)
    status, _, _ = await fetch(client, service.url + "origins/bucket/nope.iso")
    assert status == 404


async def test_replaced_object_is_detected_and_never_mixed(
    s3: S3Server, make_service: MakeService, client: aiohttp.ClientSession
) -> None:
    old = generate_image(SIZE, seed=93)
    new = generate_image(SIZE, seed=94)
    s3.client().put_object(Bucket="images", Key="isos/swap.iso", Body=old)
    service = await s3_service(make_service, s3, revalidate="1s")
    url = service.url + "origins/bucket/swap.iso"
    assert (await fetch(client, url, {"Range": f"bytes=0-{2 * CHUNK - 1}"}))[2] == old[: 2 * CHUNK]
    await asyncio.to_thread(s3.client().put_object, Bucket="images", Key="isos/swap.iso", Body=new)
    deadline = time.monotonic() + 15
    while True:
        status, _, body = await fetch(client, url, {"Range": f"bytes=0-{4 * CHUNK - 1}"})
        assert status in (206, 502)
        if status == 206:
            assert body in (old[: 4 * CHUNK], new[: 4 * CHUNK])  # one version, never a mix
            if body == new[: 4 * CHUNK]:
                break
        assert time.monotonic() < deadline
        await asyncio.sleep(0.2)
    assert (await fetch(client, url))[2] == new


@pytest.mark.parametrize("source", ["environment", "profile", "anonymous"])
async def test_credentials_from_the_aws_chain(
    origin: OriginServer,
    make_service: MakeService,
    client: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    source: str,
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    credentials = tmp_path / "credentials"
    credentials.write_text("[team]\naws_access_key_id = PROFILEKEY\naws_secret_access_key = x\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    profile = ""
    if source == "environment":
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "ENVKEY")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    elif source == "profile":
        profile = 'profile = "team"\n'
    else:
        credentials.write_text("")
    data = generate_image(500, seed=95)
    origin.add_file("public/x.iso", data)
    extra = (
        f'[origins.pub]\nurl = "s3://public/"\nendpoint_url = "{origin.url.rstrip("/")}"\n{profile}'
    )
    service = await make_service("http://127.0.0.1:9/", extra=extra)
    status, _, body = await fetch(client, service.url + "origins/pub/x.iso")
    assert (status, body) == (200, data)
    auth = [e.headers.get("Authorization") for e in origin.log]
    if source == "anonymous":
        assert auth and all(a is None for a in auth)
    else:
        key = "ENVKEY" if source == "environment" else "PROFILEKEY"
        assert all(a and a.startswith(f"AWS4-HMAC-SHA256 Credential={key}/") for a in auth)


def test_virtual_hosted_and_path_style_urls() -> None:
    from isocache.config import OriginConfig
    from isocache.origins.s3 import S3Origin

    def make(addressing: str) -> S3Origin:
        return S3Origin(
            OriginConfig(
                "b",
                "s3://bkt/p/",
                endpoint_url="https://s3.example.org",
                addressing=addressing,
                aws_access_key_id="a",
                aws_secret_access_key="b",
            )
        )

    assert make("path").http_url("s3://bkt/p/my%20disk+1.iso") == (
        "https://s3.example.org/bkt/p/my%20disk%2B1.iso"
    )
    assert make("virtual").http_url("s3://bkt/p/a.iso") == "https://bkt.s3.example.org/p/a.iso"
    assert (
        make("path").http_url("s3://bkt/?list-type=2") == "https://s3.example.org/bkt?list-type=2"
    )
