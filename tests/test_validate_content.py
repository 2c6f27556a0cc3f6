"""Origins that send neither ETag nor Last-Modified: the known limitation under
validate = "auto" (a warning, once per origin), and validate = "content", which folds a
digest of the file's first 64 KiB into the version's identity."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from bench.origin import OriginServer, generate_image
from isocache.config import ConfigError, parse_config_text
from isocache.service import Service
from tests.conftest import CHUNK, KiB, MakeService, config_text, fetch

SIZE = 5 * CHUNK + 123  # larger than the 64 KiB that content validation hashes
HEAD = 64 * KiB
A = generate_image(SIZE, seed=120)
B = generate_image(SIZE, seed=121)  # same size, other bytes from the first byte on
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def bare(origin: OriginServer) -> OriginServer:
    """The test origin as a plain web server that sends no validator at all."""
    origin.etag_mode = "none"
    origin.send_last_modified = False
    origin.add_file("disk.img", A)
    return origin


def content_origin(validate: str | None) -> str:
    # conftest's config ends with [origins.test] when no images are given: this lands in it.
    return f'validate = "{validate}"\n' if validate else ""


async def poll_until_b(client: aiohttp.ClientSession, url: str, timeout: float = 10.0) -> int:
    """GET `url` until it answers B; every answer on the way is exactly A or exactly B.
    Returns the number of A answers seen."""
    deadline = time.monotonic() + timeout
    seen_a = 0
    while True:
        status, _, body = await fetch(client, url)
        assert status == 200
        assert body in (A, B), "a mix of two versions"
        if body == B:
            return seen_a
        seen_a += 1
        assert time.monotonic() < deadline, "the replacement was never served"
        await asyncio.sleep(0.05)


async def test_content_validation_serves_a_same_size_replacement(
    bare: OriginServer, make_service: MakeService, client: aiohttp.ClientSession
) -> None:
    service = await make_service(bare.url, revalidate="300ms", extra=content_origin("content"))
    url = service.url + "origins/test/disk.img"
    status, _, body = await fetch(client, url)
    assert (status, body) == (200, A)
    bare.add_file("disk.img", B)
    await poll_until_b(client, url)
    status, _, body = await fetch(client, url, {"Range": f"bytes={CHUNK}-{3 * CHUNK - 1}"})
    assert (status, body) == (206, B[CHUNK : 3 * CHUNK])
    # The digest is isocache's own: no request ever carried it as a precondition.
    for entry in bare.log:
        assert not {"If-Match", "If-None-Match", "If-Range"} & set(entry.headers), entry
    # Each stat hashes the first 64 KiB with one ranged GET.
    assert [e for e in bare.requests(method="GET") if e.range == f"bytes=0-{HEAD - 1}"]


async def test_content_validation_never_mixes_within_the_revalidate_window(
    bare: OriginServer, make_service: MakeService, client: aiohttp.ClientSession
) -> None:
    """Half of A is cached; B replaces A; a whole read inside the window must not be A's
    cached half glued to B's other half: each origin read first checks the leading bytes."""
    service = await make_service(bare.url, revalidate="60s", extra=content_origin("content"))
    url = service.url + "origins/test/disk.img"
    half = 3 * CHUNK
    status, _, body = await fetch(client, url, {"Range": f"bytes=0-{half - 1}"})
    assert (status, body) == (206, A[:half])
    bare.add_file("disk.img", B)
    status, _, body = await fetch(client, url)
    assert status == 200
    assert body == B, "A's cached chunks mixed with B's" if body[:half] == A[:half] else ""


async def test_content_validation_keeps_the_cache_across_a_restart(
    bare: OriginServer,
    make_service: MakeService,
    client: aiohttp.ClientSession,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="isocache.resolver")
    text = config_text(bare.url, cache_dir=tmp_path / "cache", extra=content_origin("content"))
    first = Service(parse_config_text(text, source="test.toml"))
    await first.start()
    try:
        status, _, body = await fetch(client, first.url + "origins/test/disk.img")
        assert (status, body) == (200, A)
    finally:
        await first.stop()
    bare.reset_log()
    second = await make_service(bare.url, extra=content_origin("content"))
    status, _, body = await fetch(client, second.url + "origins/test/disk.img")
    assert (status, body) == (200, A)
    # Same identity after the restart: only the stat (HEAD and the 64 KiB digest read).
    assert bare.body_bytes() == HEAD
    # The saved metadata holds the digest: the restarted resolver sees the same version.
    assert "origin-changed" not in caplog.text


async def test_without_validators_auto_warns_once_and_misses_a_same_size_replacement(
    bare: OriginServer,
    make_service: MakeService,
    client: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    bare.add_file("other.img", B)
    service = await make_service(bare.url, revalidate="200ms")
    url = service.url + "origins/test/disk.img"
    status, _, body = await fetch(client, url)
    assert (status, body) == (200, A)
    assert (await fetch(client, service.url + "origins/test/other.img"))[2] == B
    bare.add_file("disk.img", B)
    # The known limitation (docs/ARCHITECTURE.md, config.example.toml): identity is URL +
    # size, so after revalidations the old bytes are still served.
    heads = len(bare.requests("disk.img", "HEAD"))
    deadline = time.monotonic() + 10
    while len(bare.requests("disk.img", "HEAD")) < heads + 2:
        assert time.monotonic() < deadline, "no revalidation happened"
        status, _, body = await fetch(client, url)
        assert (status, body) == (200, A)
        await asyncio.sleep(0.05)
    warnings = [r.getMessage() for r in caplog.records if "origin-no-validator" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith("origin-no-validator origin=test ")


async def test_no_warning_with_a_validator_or_content_validation(
    bare: OriginServer,
    make_service: MakeService,
    client: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    async with OriginServer(etag_mode="none") as dated:  # Last-Modified only
        dated.add_file("disk.img", B)
        extra = content_origin("content") + f'[origins.dated]\nurl = "{dated.url}"\n'
        service = await make_service(bare.url, extra=extra)
        assert (await fetch(client, service.url + "origins/test/disk.img"))[2] == A
        assert (await fetch(client, service.url + "origins/dated/disk.img"))[2] == B
    assert "origin-no-validator" not in caplog.text


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ('"sometimes"', "must be one of auto, content"),
        ('"Content"', "must be one of auto, content"),
        ("true", "expected a string, got bool"),
    ],
)
def test_a_bad_validate_value_is_a_config_error(tmp_path: Path, value: str, message: str) -> None:
    text = f'[origins.plain]\nurl = "http://127.0.0.1:1/isos/"\nvalidate = {value}\n'
    with pytest.raises(ConfigError) as caught:
        parse_config_text(text, source="bad.toml")
    assert caught.value.key == "origins.plain.validate"
    assert caught.value.message == message
    path = tmp_path / "bad.toml"
    path.write_text(text)
    result = subprocess.run(
        [sys.executable, "-m", "isocache", "serve", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 2
    assert f"{path}: origins.plain.validate: " in result.stderr
    assert "Traceback" not in result.stderr


def test_validate_defaults_to_auto_and_accepts_content() -> None:
    text = (
        '[origins.a]\nurl = "http://127.0.0.1:1/a/"\n'
        '[origins.c]\nurl = "ftp://127.0.0.1:1/c/"\nvalidate = "content"\n'
    )
    config = parse_config_text(text)
    assert (config.origins["a"].validate, config.origins["c"].validate) == ("auto", "content")
