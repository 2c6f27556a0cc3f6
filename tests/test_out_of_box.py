"""Out of the box: config.example.toml as it is, and `isocache serve` without --config.

Nothing here reaches the internet: the example's HTTPS mirror is only parsed, never fetched.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from isocache import cli
from isocache.config import load_config, parse_config_text
from isocache.service import Service
from tests.conftest import fetch

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config.example.toml"


@pytest.fixture
def xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """XDG cache and state homes in tmp_path; no systemd StateDirectory."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg-state"))
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    return tmp_path


async def test_example_config_serves_a_file_origin_it_creates(
    xdg: Path, client: aiohttp.ClientSession
) -> None:
    config = load_config(EXAMPLE)
    local = xdg / "xdg-state" / "isocache" / "local"
    assert config.origins["local"].url == f"file://{local}/"
    assert not local.exists()
    alpine = config.images["alpine"]
    assert alpine.url.startswith("https://dl-cdn.alpinelinux.org/alpine/v3.20/releases/")
    assert alpine.sha256 == "81df854fbd7327d293c726b1eeeb82061d3bc8f5a86a6f77eea720f6be372261"
    assert config.cache.dir == xdg / "xdg-cache" / "isocache"
    # As it is, but on a free port.
    server = dataclasses.replace(config.server, port=0)
    service = Service(dataclasses.replace(config, server=server))
    await service.start()
    try:
        assert local.is_dir()
        status, _, body = await fetch(client, service.url + "origins/local/")
        assert (status, json.loads(body)) == (200, [])
        (local / "drop.iso").write_bytes(b"an iso" * 1000)
        status, _, body = await fetch(client, service.url + "origins/local/?type=iso")
        assert json.loads(body) == [{"name": "drop.iso", "size": 6000, "type": "iso"}]
        status, _, body = await fetch(client, service.url + "origins/local/drop.iso")
        assert (status, body) == (200, b"an iso" * 1000)
        status, _, body = await fetch(client, service.url + "api/images")
        assert status == 200 and "alpine" in body.decode()
        assert service.store.bytes_used == 0  # cache = false: nothing copied
    finally:
        await service.stop()


@pytest.mark.parametrize("name", ["mirror", "ftpmirror", "bucket", "glance"])
def test_commented_examples_parse_when_uncommented(name: str, xdg: Path) -> None:
    lines = EXAMPLE.read_text().splitlines()
    start = lines.index(f"#[origins.{name}]")
    block = []
    for line in lines[start:]:
        if not line.strip():
            break
        # "#key = value" is config; "# words" and indented comments stay comments.
        block.append(re.sub(r"^#(?=\[|[a-z_]+ =)", "", line))
    config = parse_config_text("\n".join(block) + "\n", source="example")
    assert list(config.origins) == [name]


def test_defaults_without_config(xdg: Path) -> None:
    args = cli._parser().parse_args(["serve"])
    config = cli._serve_config(args)
    assert (config.server.host, config.server.port) == ("127.0.0.1", 8080)
    assert config.cache.dir == xdg / "xdg-cache" / "isocache"
    assert config.origins == {} and config.images == {}
    args = cli._parser().parse_args(["serve", "--listen", "[::1]:0"])
    assert cli._serve_config(args).server.host == "::1"


async def test_serve_without_config_starts(tmp_path: Path, client: aiohttp.ClientSession) -> None:
    log_path = tmp_path / "serve.log"
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "XDG_CACHE_HOME": str(tmp_path / "xdg-cache"),
        "XDG_STATE_HOME": str(tmp_path / "xdg-state"),
    }
    env.pop("STATE_DIRECTORY", None)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "isocache", "serve", "--listen", "127.0.0.1:0"],
            stdout=log,
            stderr=log,
            env=env,
            cwd=tmp_path,  # no config file lying around to be picked up
        )
    try:
        deadline = time.monotonic() + 20
        text = ""
        while "listening on " not in text:
            assert proc.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            await asyncio.sleep(0.05)
            text = log_path.read_text()
        first = text.splitlines()[0]
        assert "to add an origin" in first.lower() and "[origins.NAME]" in first, first
        url = text.split("listening on ")[1].split()[0]
        assert url.startswith("http://127.0.0.1:")
        status, _, body = await fetch(client, url + "api/images")
        assert status == 200 and json.loads(body) in ([], {})
        assert (tmp_path / "xdg-cache" / "isocache").is_dir()
    finally:
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, 10)
    assert code == 0


def test_uncreatable_state_directory_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("STATE_DIRECTORY", str(blocker / "state"))  # ENOTDIR, even as root
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    config = tmp_path / "c.toml"
    config.write_text('[server]\nlisten = "127.0.0.1:0"\n[origins.local]\nurl = "file:local/"\n')
    assert cli.main(["serve", "--config", str(config)]) == cli.EXIT_CONFIG
    assert "origins.local.url: cannot create" in capsys.readouterr().err
