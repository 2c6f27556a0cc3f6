"""Shared fixtures: a real origin on loopback, an isocache Service in this event loop, a client.

Tests that need a separate isocache process (restart, kill -9, qemu) use `ProcessService`.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme
from multidict import CIMultiDict

from bench.origin import OriginServer, generate_image
from isocache.config import parse_config_text
from isocache.service import Service

KiB = 1024
MiB = 1024 * KiB
CHUNK = 64 * KiB  # small chunks keep test images small while crossing many boundaries


@pytest.fixture
async def origin() -> AsyncIterator[OriginServer]:
    server = OriginServer()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def config_text(
    origin_url: str,
    cache_dir: Path,
    *,
    images: dict[str, str] | None = None,
    port: int = 0,
    chunk_size: str = "64KiB",
    size_limit: str = "64MiB",
    revalidate: str = "60s",
    sendfile: bool = True,
    keepalive: str = "auto",
    readahead: str = "8MiB",
    fetch: dict[str, str] | None = None,
    extra: str = "",
) -> str:
    lines = [
        "[server]",
        f'listen = "127.0.0.1:{port}"',
        f"sendfile = {'true' if sendfile else 'false'}",
        f'keepalive = "{keepalive}"',
        "[cache]",
        f'dir = "{cache_dir}"',
        f'chunk_size = "{chunk_size}"',
        f'size_limit = "{size_limit}"',
        f'revalidate = "{revalidate}"',
        "[fetch]",
        'connect_timeout = "2s"',
        'read_timeout = "2s"',
        f'readahead = "{readahead}"',
        *(f"{key} = {value}" for key, value in (fetch or {}).items()),
        "[origins.test]",
        f'url = "{origin_url}"',
    ]
    for name, path in (images or {}).items():
        lines += [f"[images.{name}]", f'url = "{origin_url}{path}"']
    return "\n".join(lines) + "\n" + extra


MakeService = Callable[..., Coroutine[Any, Any, Service]]


@pytest.fixture
async def make_service(tmp_path: Path) -> AsyncIterator[MakeService]:
    """Start Services in this loop; all are stopped at the end of the test."""
    started: list[Service] = []

    async def make(origin_url: str, **kwargs: Any) -> Service:
        kwargs.setdefault("cache_dir", tmp_path / "cache")
        text = config_text(origin_url, **kwargs)
        service = Service(parse_config_text(text, source="test.toml"))
        await service.start()
        started.append(service)
        return service

    yield make
    for service in started:
        await service.stop()


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        yield session


async def fetch(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None
) -> tuple[int, CIMultiDict[str], bytes]:
    """GET `url`; the headers come back case-insensitive."""
    async with session.get(url, headers=headers or {}) as resp:
        return resp.status, CIMultiDict(resp.headers), await resp.read()


class ProcessService:
    """`python -m isocache serve` as a real child process (for restart and kill -9 tests)."""

    def __init__(self, config_path: Path) -> None:
        self.config_path = config_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.log_path = config_path.with_suffix(".log")

    async def start(self, timeout: float = 20.0) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "isocache", "serve", "--config", str(self.config_path)],
            stdout=log,
            stderr=log,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log_path.read_text(errors="replace")
            marker = text.rfind("listening on ")
            if (
                marker >= 0
                and self.proc.poll() is None
                and text.count("listening on ") > self._starts
            ):
                self.url = text[marker + len("listening on ") :].split()[0]
                self._starts += 1
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"isocache exited {self.proc.returncode}:\n{text}")
            await asyncio.sleep(0.05)
        raise TimeoutError(f"isocache did not start:\n{self.log_path.read_text()}")

    _starts = 0

    async def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                self.proc.kill()
                raise TimeoutError("isocache did not stop in time")
            await asyncio.sleep(0.05)
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


__all__ = ["CHUNK", "KiB", "MiB", "ProcessService", "config_text", "fetch", "generate_image"]


@pytest.fixture
def test_ca(tmp_path: Path) -> tuple[Path, Path]:
    """(the CA's certificate, a PEM with the key and certificate chain for 127.0.0.1)."""
    ca = trustme.CA()
    ca_file, server_pem = tmp_path / "ca.pem", tmp_path / "server.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(server_pem))
    return ca_file, server_pem
