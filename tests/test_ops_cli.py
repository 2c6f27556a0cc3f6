"""The admin CLI as an operator meets it: the token from --config, HOST:PORT servers,
register that checks the URL first, unregister, one-line errors, sentences for what was done."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import aiohttp
import pytest

from bench.origin import OriginServer, generate_image
from tests.conftest import CHUNK, ProcessService, config_text
from tests.test_cli_admin import cli

SIZE = 10 * CHUNK + 3
TOKEN = "ops-token-7"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
async def proc(tmp_path: Path, origin: OriginServer):  # type: ignore[no-untyped-def]
    origin.add_file("img.raw", generate_image(SIZE, seed=160))
    origin.add_file("other.raw", generate_image(3 * CHUNK, seed=161))
    (tmp_path / "admin-token").write_text(TOKEN + "\n")
    path = tmp_path / "isocache.toml"
    extra = '[admin]\ntoken_file = "admin-token"\n'
    path.write_text(
        config_text(
            origin.url,
            tmp_path / "cache",
            images={"img": "img.raw"},
            extra=extra,
            port=free_port(),  # a real port: --config alone must find the service
        )
    )
    service = ProcessService(path)
    await service.start()
    yield service
    service.kill()


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


async def test_config_gives_the_address_and_the_token(proc: ProcessService) -> None:
    # No --token, no $ISOCACHE_TOKEN: --config's token_file is the token.
    result = await cli("pin", "img", "--config", str(proc.config_path), token=None)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("pinned img: ")
    result = await cli("unpin", "img", "--config", str(proc.config_path), token=None)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "unpinned img: its chunks may be evicted again"
    status = json.loads((await cli("status", "--json", "--config", str(proc.config_path))).stdout)
    assert status["images"][0]["pinned"] is False


async def test_server_as_host_and_port(proc: ProcessService) -> None:
    host_port = proc.url.removeprefix("http://").rstrip("/")
    result = await cli("status", "--json", "--server", host_port)
    assert result.returncode == 0, result.stderr
    assert [image["name"] for image in json.loads(result.stdout)["images"]] == ["img"]


async def test_register_checks_the_url_first_and_unregister_removes(
    proc: ProcessService, origin: OriginServer, client: aiohttp.ClientSession
) -> None:
    server = ["--server", proc.url]
    result = await cli("register", "gone", f"{origin.url}missing.raw", *server, token=TOKEN)
    assert result.returncode == 1
    line = one_line(result.stderr)
    assert "not registered" in line and "404" in line and "missing.raw" in line
    names = [
        i["name"] for i in json.loads((await cli("status", "--json", *server)).stdout)["images"]
    ]
    assert names == ["img"]  # neither the image nor the scratch name used for the check

    result = await cli("register", "other", f"{origin.url}other.raw", *server, token=TOKEN)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"registered other -> {origin.url}other.raw ({3 * CHUNK} bytes)"
    async with client.get(proc.url + "images/other") as resp:
        assert resp.status == 200 and await resp.read() == generate_image(3 * CHUNK, seed=161)

    result = await cli("unregister", "other", *server, token=TOKEN)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("unregistered other")
    async with client.get(proc.url + "images/other") as resp:
        assert resp.status == 404
    result = await cli("unregister", "img", *server, token=TOKEN)
    assert result.returncode == 1
    assert "defined in the config file" in one_line(result.stderr)


@pytest.mark.parametrize("command", ["register", "prewarm", "pin", "evict", "verify"])
async def test_a_bad_image_name_is_one_line(proc: ProcessService, command: str) -> None:
    extra = [f"{proc.url}x.iso"] if command == "register" else []
    result = await cli(command, "we ird/name", *extra, "--server", proc.url)
    assert result.returncode == 2
    assert "bad image name 'we ird/name'" in one_line(result.stderr)


async def test_a_server_that_is_not_isocache_is_named(origin: OriginServer) -> None:
    result = await cli("status", "--server", origin.url)
    assert result.returncode == 1
    line = one_line(result.stderr)
    assert "does not look like isocache" in line and "404" in line


async def test_forbidden_urls_do_not_blame_the_token(proc: ProcessService) -> None:
    server = ["--server", proc.url]
    result = await cli("register", "x", "http://127.0.0.2:1/x.iso", *server, token=TOKEN)
    line = one_line(result.stderr)
    assert "outside the configured origins" in line and "token" not in line
    result = await cli("evict", "img", *server, token="wrong")
    assert "wrong token (check the token)" in one_line(result.stderr)
    result = await cli("evict", "img", *server, token=None)
    assert "ISOCACHE_TOKEN" in one_line(result.stderr)


async def test_verify_says_what_it_found(proc: ProcessService) -> None:
    server = ["--server", proc.url]
    assert (await cli("prewarm", "img", "--wait", *server, token=TOKEN)).returncode == 0
    result = await cli("verify", "img", *server, token=TOKEN)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (
        "img: 11 cached chunks matched their checksums; the digest was not checked "
        "(the image is not fully cached, or has no sha256)."
    )
    result = await cli("verify", "img", "--json", *server, token=TOKEN)
    assert json.loads(result.stdout)["chunks_ok"] == 11
