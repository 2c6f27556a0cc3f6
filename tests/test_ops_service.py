"""The service as an operator runs it: a port in use is one line, secrets come from systemd
credentials, a world-readable config with secrets is warned about, /healthz says degraded
when origins stop answering, journald gets no second timestamp, --access-log logs requests."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bench.origin import OriginServer, generate_image
from isocache import __version__
from isocache.config import load_config
from tests.conftest import CHUNK, MakeService, ProcessService, config_text, fetch


def serve(config: Path, *extra: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "isocache", "serve", "--config", str(config), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


def test_a_port_in_use_is_one_line_and_exit_1(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        path = tmp_path / "isocache.toml"
        path.write_text(f'[server]\nlisten = "127.0.0.1:{port}"\n[cache]\ndir = "{tmp_path}/c"\n')
        proc = serve(path)
        _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 1
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if line.startswith("isocache:")]
    assert errors == [f"isocache: cannot listen on 127.0.0.1:{port}: Address already in use"]
    assert stderr.strip().splitlines()[-1] == errors[0]
    # It let go of the store: another instance can take the same cache directory.
    path.write_text(f'[server]\nlisten = "127.0.0.1:0"\n[cache]\ndir = "{tmp_path}/c"\n')
    again = serve(path)
    try:
        deadline = time.monotonic() + 20
        assert again.stderr is not None
        while "listening on" not in again.stderr.readline():
            assert again.poll() is None and time.monotonic() < deadline
    finally:
        again.terminate()
        again.communicate(timeout=15)


def test_secrets_from_the_credentials_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "admin-token").write_text("from-systemd\n")
    (credentials / "ftp-password").write_text("ftp-secret\n")
    (tmp_path / "admin-token").write_text("next-to-the-config\n")
    path = tmp_path / "isocache.toml"
    path.write_text(
        '[admin]\ntoken_file = "admin-token"\n'
        '[origins.ftp]\nurl = "ftp://user@127.0.0.1/pub/"\npassword_file = "ftp-password"\n'
    )
    path.chmod(0o644)  # no secret in the file itself: nothing to warn about
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    config = load_config(path)
    assert config.admin.token == "from-systemd"
    assert config.origins["ftp"].password == "ftp-secret"
    assert config.warnings == ()
    # Without systemd (the CLI on the same host): the file next to the config.
    monkeypatch.delenv("CREDENTIALS_DIRECTORY")
    (tmp_path / "ftp-password").write_text("x\n")
    assert load_config(path).admin.token == "next-to-the-config"


def test_a_world_readable_config_with_secrets_is_warned_about(tmp_path: Path) -> None:
    path = tmp_path / "isocache.toml"
    path.write_text(
        f'[server]\nlisten = "127.0.0.1:0"\n[cache]\ndir = "{tmp_path}/c"\n'
        '[admin]\ntoken = "inline"\n'
        '[origins.ftp]\nurl = "ftp://user@127.0.0.1/pub/"\npassword = "inline"\n'
    )
    path.chmod(0o644)
    (warning,) = load_config(path).warnings
    assert warning.startswith(f"config-world-readable file={path} ")
    assert "keys=admin.token,origins.ftp.password" in warning and "inline" not in warning
    path.chmod(0o640)
    assert load_config(path).warnings == ()
    path.chmod(0o644)
    proc = serve(path)
    try:
        assert proc.stderr is not None
        deadline = time.monotonic() + 20
        lines = []
        while not lines or "listening on" not in lines[-1]:
            assert proc.poll() is None and time.monotonic() < deadline
            lines.append(proc.stderr.readline())
        assert any("WARNING isocache.service config-world-readable" in line for line in lines)
    finally:
        proc.terminate()
        proc.communicate(timeout=15)


async def test_healthz_degraded_while_origins_fail_and_cached_images_still_serve(
    origin: OriginServer, make_service: MakeService, client: aiohttp.ClientSession
) -> None:
    data = generate_image(6 * CHUNK, seed=180)
    origin.add_file("img.iso", data)
    service = await make_service(origin.url, images={"img": "img.iso"}, revalidate="1ms")
    service.metrics.degraded_after = 0.2
    assert (await fetch(client, service.url + "images/img"))[2] == data
    status, _, body = await fetch(client, service.url + "healthz")
    assert status == 200 and body == b'{"status": "ok"}'

    origin.fail_head_next = 10**6  # the origin answers nothing but 500s from now on
    # Served from the cache (stale-if-error), while the origin fails every stat.
    deadline = time.monotonic() + 10
    while True:
        status, _, body = await fetch(client, service.url + "images/img")
        assert status == 200 and body == data
        async with client.get(service.url + "healthz") as resp:
            assert resp.status == 200
            health = await resp.json()
        if health["status"] == "degraded":
            break
        assert time.monotonic() < deadline, health
        await asyncio.sleep(0.05)
    assert list(health["failing_origins"]) == ["test"]
    assert health["failing_origins"]["test"] >= 0.2

    origin.fail_head_next = 0  # it answers again: the next stat clears the state
    deadline = time.monotonic() + 10
    while (await (await client.get(service.url + "healthz")).json())["status"] != "ok":
        await fetch(client, service.url + "images/img")
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)


async def test_process_size_limit_build_info_and_size_classes(
    origin: OriginServer, make_service: MakeService, client: aiohttp.ClientSession
) -> None:
    origin.add_file("img.iso", generate_image(40 * CHUNK, seed=181))
    service = await make_service(origin.url, images={"img": "img.iso"}, size_limit="32MiB")
    await fetch(client, service.url + "images/img", {"Range": "bytes=0-4095"})
    await fetch(client, service.url + "images/img", {"Range": "bytes=0-2359295"})  # qemu's
    await fetch(client, service.url + "images/img")  # the whole image: 2.5 MiB
    async with client.head(service.url + "images/img") as resp:
        assert resp.status == 200
    _, _, body = await fetch(client, service.url + "metrics")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }
    assert samples[("isocache_cache_size_limit_bytes", ())] == 32 * 1024 * 1024
    build = [labels for name, labels in samples if name == "isocache_build_info"]
    assert dict(build[0])["version"] == __version__
    assert samples[("process_resident_memory_bytes", ())] > 0
    assert samples[("process_open_fds", ())] > 0

    def count(method: str, size: str) -> float:
        return samples[("isocache_request_seconds_count", (("method", method), ("size", size)))]

    assert count("GET", "64KiB") == 1 and count("HEAD", "64KiB") == 1
    assert count("GET", "8MiB") == 2 and count("GET", "1MiB") == 0
    assert count("GET", "larger") == 0


async def test_access_log_switch_and_journald_lines(tmp_path: Path, origin: OriginServer) -> None:
    origin.add_file("img.iso", generate_image(2 * CHUNK, seed=182))
    path = tmp_path / "isocache.toml"
    path.write_text(config_text(origin.url, tmp_path / "cache", images={"img": "img.iso"}))
    log_path = tmp_path / "journal.log"
    with open(log_path, "wb") as log:
        stat = os.fstat(log.fileno())
        proc = subprocess.Popen(
            [sys.executable, "-m", "isocache", "serve", "--config", str(path), "--access-log"],
            stdout=log,
            stderr=log,
            env={**os.environ, "JOURNAL_STREAM": f"{stat.st_dev}:{stat.st_ino}"},
        )
    service = ProcessService(path)
    service.proc, service.log_path = proc, log_path
    try:
        deadline = time.monotonic() + 20
        while "listening on " not in log_path.read_text():
            assert proc.poll() is None and time.monotonic() < deadline
            await asyncio.sleep(0.05)
        text = log_path.read_text()
        url = text.split("listening on ", 1)[1].split()[0]
        async with aiohttp.ClientSession() as client:
            await fetch(client, url + "images/img")
        deadline = time.monotonic() + 10
        while "GET /images/img" not in log_path.read_text():
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        lines = log_path.read_text().splitlines()
        assert lines[0].startswith("<6>INFO isocache.store store-open ")  # no timestamp
        (access,) = [line for line in lines if "GET /images/img" in line]
        assert access.startswith("<6>INFO isocache.access GET /images/img range=- status=200")
        assert await service.stop() == 0
    finally:
        service.kill()
