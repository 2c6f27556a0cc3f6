"""A real OpenStack Swift all-in-one on loopback for the test suite (Debian's swift-proxy,
swift-account, swift-container, swift-object and memcached, which TempAuth keeps its tokens
in): one-replica rings built with swift-ring-builder, one device directory, every server on
127.0.0.1, all under one temporary directory. Also a Keystone v3 stand-in whose catalog
points at that Swift (there is no Keystone here): it checks the password and hands out a
TempAuth token of the real Swift as its own.

The Swift servers read /etc/swift/swift.conf (the hash path prefix and the storage
policies; Swift has no option for another path), which the swift package installs.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import pwd
import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

ACCOUNT, USER, KEY = "test", "tester", "swift-key-123"
TEMPAUTH_USER = f"{ACCOUNT}:{USER}"
KEYSTONE_USER, KEYSTONE_PASSWORD, KEYSTONE_PROJECT = "isocache", "keystone-pw-456", "images"
_PIPELINE = (
    "catch_errors gatekeeper proxy-logging cache listing_formats tempauth copy slo dlo "
    "proxy-logging proxy-server"
)
_BINARIES = ("swift-proxy-server", "swift-account-server", "swift-container-server")


def swift_missing() -> str | None:
    """Why a real Swift cannot run here (for pytest.skip), or None."""
    for binary in (*_BINARIES, "swift-object-server", "swift-ring-builder", "memcached"):
        if shutil.which(binary) is None:
            return f"{binary} is not installed (.ci/run installs it)"
    if not Path("/etc/swift/swift.conf").is_file():
        return "/etc/swift/swift.conf is missing (the swift package installs it)"
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


_SERVER_CONF = """\
[DEFAULT]
devices = {devices}
mount_check = false
bind_ip = 127.0.0.1
bind_port = {port}
workers = 0
user = {user}
swift_dir = {swift_dir}
log_name = {name}
log_level = WARNING
disable_fallocate = true
log_address = /nonexistent

[pipeline:main]
pipeline = {name}

[app:{name}]
use = egg:swift#{name}
{app_extra}
"""

_PROXY_CONF = """\
[DEFAULT]
bind_ip = 127.0.0.1
bind_port = {port}
workers = 0
user = {user}
swift_dir = {swift_dir}
log_name = proxy-server
log_level = WARNING
log_address = /nonexistent

[pipeline:main]
pipeline = {pipeline}

[app:proxy-server]
use = egg:swift#proxy
account_autocreate = true
allow_account_management = true

[filter:tempauth]
use = egg:swift#tempauth
user_{account}_{user_name} = {key} .admin
token_life = 86400

[filter:cache]
use = egg:swift#memcache
memcache_servers = 127.0.0.1:{memcached}

[filter:catch_errors]
use = egg:swift#catch_errors

[filter:gatekeeper]
use = egg:swift#gatekeeper

[filter:proxy-logging]
use = egg:swift#proxy_logging

[filter:listing_formats]
use = egg:swift#listing_formats

[filter:copy]
use = egg:swift#copy

[filter:slo]
use = egg:swift#slo

[filter:dlo]
use = egg:swift#dlo
"""


class SwiftAllInOne:
    """Start with `await start()`, stop with `stop()`. `auth_url` is TempAuth's."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = 0
        self.memcached_port = 0
        self.storage_url = ""
        self._procs: list[subprocess.Popen[bytes]] = []
        self._token = ""

    @property
    def auth_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/auth/v1.0"

    def _spawn(self, args: list[str], name: str) -> None:
        log = open(self.root / f"{name}.log", "ab")  # noqa: SIM115 - handed to the child
        self._procs.append(
            subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        )
        log.close()

    def _rings(self, ports: dict[str, int]) -> None:
        for kind in ("account", "container", "object"):
            builder = str(self.root / f"{kind}.builder")
            for args in (
                ["create", "4", "1", "1"],
                ["add", f"r1z1-127.0.0.1:{ports[kind]}/d1", "100"],
                ["rebalance"],
            ):
                done = subprocess.run(
                    ["swift-ring-builder", builder, *args], capture_output=True, check=False
                )
                # rebalance exits 1 for "warnings" on a one-device ring.
                if done.returncode > 1:
                    raise RuntimeError(f"swift-ring-builder {args[0]}: {done.stdout!r}")

    async def start(self, timeout: float = 60.0) -> None:
        devices = self.root / "srv"
        (devices / "d1").mkdir(parents=True)
        user = pwd.getpwuid(os.getuid()).pw_name
        ports = {kind: free_port() for kind in ("account", "container", "object")}
        self.port, self.memcached_port = free_port(), free_port()
        self._rings(ports)
        for kind, port in ports.items():
            extra = "allow_versions = true" if kind == "container" else ""
            conf = self.root / f"{kind}-server.conf"
            conf.write_text(
                _SERVER_CONF.format(
                    devices=devices,
                    port=port,
                    user=user,
                    swift_dir=self.root,
                    name=f"{kind}-server",
                    app_extra=extra,
                ).replace(f"egg:swift#{kind}-server", f"egg:swift#{kind}")
            )
        proxy = self.root / "proxy-server.conf"
        proxy.write_text(
            _PROXY_CONF.format(
                port=self.port,
                user=user,
                swift_dir=self.root,
                account=ACCOUNT,
                user_name=USER,
                key=KEY,
                memcached=self.memcached_port,
                pipeline=_PIPELINE,
            )
        )
        self._spawn(
            ["memcached", "-l", "127.0.0.1", "-p", str(self.memcached_port), "-U", "0", "-u", user],
            "memcached",
        )
        for kind in ("account", "container", "object"):
            self._spawn([f"swift-{kind}-server", str(self.root / f"{kind}-server.conf")], kind)
        self._spawn(["swift-proxy-server", str(proxy)], "proxy")
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as session:
            while True:
                for proc in self._procs:
                    if proc.poll() is not None:
                        raise RuntimeError(f"a Swift process exited:\n{self.logs()}")
                try:
                    await self._login(session)
                    # The account and container servers answer too: create the test container.
                    await self.request(session, "PUT", "isos", expect=(201, 202))
                    return
                except (aiohttp.ClientError, OSError, AssertionError):
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"Swift did not start:\n{self.logs()}") from None
                    await asyncio.sleep(0.2)

    def logs(self) -> str:
        return "\n".join(
            f"== {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in self.root.glob("*.log")
        )

    async def _login(self, session: aiohttp.ClientSession) -> None:
        headers = {"X-Auth-User": TEMPAUTH_USER, "X-Auth-Key": KEY}
        async with session.get(self.auth_url, headers=headers) as resp:
            assert resp.status == 200, resp.status
            self._token = resp.headers["X-Auth-Token"]
            self.storage_url = resp.headers["X-Storage-Url"]

    async def token(self) -> str:
        async with aiohttp.ClientSession() as session:
            await self._login(session)
        return self._token

    async def request(
        self,
        session: aiohttp.ClientSession,
        method: str,
        path: str,
        data: bytes | None = None,
        headers: dict[str, str] | None = None,
        expect: tuple[int, ...] = (200, 201, 202, 204),
    ) -> bytes:
        url = f"{self.storage_url}/{path}"
        for _ in range(2):
            body_io = io.BytesIO(data) if data is not None else None
            async with session.request(
                method, url, data=body_io, headers={"X-Auth-Token": self._token, **(headers or {})}
            ) as resp:
                body = await resp.read()
                if resp.status == 401:  # after flush_tokens()
                    await self._login(session)
                    continue
                assert resp.status in expect, (method, path, resp.status, body[:200])
                return body
        raise AssertionError(f"Swift refused a fresh token for {method} {path}")

    async def put(self, path: str, data: bytes, headers: dict[str, str] | None = None) -> None:
        async with aiohttp.ClientSession() as session:
            await self.request(session, "PUT", path, data, headers)

    async def delete(self, path: str) -> None:
        async with aiohttp.ClientSession() as session:
            await self.request(session, "DELETE", path, expect=(204, 404))

    async def put_many(self, names: list[str], concurrency: int = 16) -> None:
        """Many small objects quickly (for listings that page)."""
        semaphore = asyncio.Semaphore(concurrency)
        async with aiohttp.ClientSession() as session:

            async def one(name: str) -> None:
                async with semaphore:
                    await self.request(session, "PUT", name, b"x")

            await asyncio.gather(*(one(name) for name in names))

    def flush_tokens(self) -> None:
        """Forget every TempAuth token (memcached `flush_all`): the next request is a 401."""
        with socket.create_connection(("127.0.0.1", self.memcached_port), timeout=5) as sock:
            sock.sendall(b"flush_all\r\n")
            assert sock.recv(100).startswith(b"OK")

    def stop(self) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self._procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


class KeystoneForSwift:
    """Keystone v3's POST /v3/auth/tokens, answering with a TempAuth token of the real Swift
    and a service catalog whose object-store endpoint is its storage URL."""

    def __init__(self, swift: SwiftAllInOne) -> None:
        self.swift = swift
        self.auth_requests = 0
        self.port = 0
        self._runner: web.AppRunner | None = None

    @property
    def auth_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v3"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v3/auth/tokens", self._auth)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _auth(self, request: web.Request) -> web.Response:
        self.auth_requests += 1
        body = await request.json()
        user = body["auth"]["identity"]["password"]["user"]
        if (user["name"], user["password"]) != (KEYSTONE_USER, KEYSTONE_PASSWORD):
            return web.json_response({"error": {"code": 401}}, status=401)
        token = await self.swift.token()
        endpoints: list[dict[str, Any]] = [
            {"interface": "internal", "region": "RegionOne", "url": "http://127.0.0.1:9/v1/x"},
            {"interface": "public", "region": "RegionOne", "url": self.swift.storage_url},
        ]
        catalog = [
            {"type": "image", "id": uuid.uuid4().hex, "endpoints": []},
            {"type": "object-store", "id": uuid.uuid4().hex, "endpoints": endpoints},
        ]
        payload = {"token": {"expires_at": "2099-01-01T00:00:00.000000Z", "catalog": catalog}}
        return web.Response(
            text=json.dumps(payload),
            status=201,
            content_type="application/json",
            headers={"X-Subject-Token": token},
        )
