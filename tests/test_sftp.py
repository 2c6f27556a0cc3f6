"""SFTP origins against a real OpenSSH sshd on loopback (tests/sftp_server.py), reached
through a TCP relay that counts the bytes sshd sends and can cut a session."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import random
import shutil
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from yarl import URL

from bench.origin import generate_image
from isocache.service import Service
from tests.conftest import CHUNK, MakeService, MiB, fetch
from tests.sftp_server import Relay, Sshd, sshd_missing
from tests.test_ftp import assert_random_ranges

pytestmark = pytest.mark.skipif(sshd_missing() is not None, reason=str(sshd_missing()))

SIZE = 12 * CHUNK + 321
PASSWORD = "sftp-wrong-pw-77"


@dataclass
class Setup:
    sshd: Sshd
    relay: Relay
    isos: Path

    def origin(self, **keys: str | int) -> str:
        """The [origins.sftp] table through the relay; `keys` override the defaults."""
        values = {
            "url": f"sftp://{self.sshd.user}@127.0.0.1:{self.relay.port}{self.isos}/",
            "private_key_file": str(self.sshd.user_key),
            "known_hosts": str(self.sshd.known_hosts),
            **keys,
        }
        lines = [f"{key} = {json.dumps(value)}" for key, value in values.items() if value != ""]
        return "[origins.sftp]\n" + "\n".join(lines) + "\n"


@pytest.fixture
async def sftp(tmp_path: Path) -> AsyncIterator[Setup]:
    isos = tmp_path / "isos"
    isos.mkdir()
    (isos / "disk.iso").write_bytes(generate_image(SIZE, seed=120))
    sshd = Sshd(tmp_path / "sshd", password_auth=True)
    sshd.root.mkdir()
    await sshd.start()
    relay = Relay(sshd.port)
    await relay.start()
    # isocache connects to the relay: its known_hosts names the relay's port.
    sshd.known_hosts.write_text(sshd.known_hosts_for(relay.port))
    try:
        yield Setup(sshd, relay, isos)
    finally:
        await relay.stop()
        sshd.stop()


async def sftp_service(make_service: MakeService, setup: Setup, **kwargs: object) -> Service:
    origin_keys = kwargs.pop("origin", {})
    assert isinstance(origin_keys, dict)
    extra = setup.origin(**origin_keys)
    return await make_service("http://127.0.0.1:9/", extra=extra, **kwargs)


@pytest.mark.parametrize("warm", [False, True], ids=["miss", "hit"])
async def test_ranges_are_byte_exact(
    sftp: Setup, make_service: MakeService, client: aiohttp.ClientSession, warm: bool
) -> None:
    data = generate_image(SIZE, seed=120)
    service = await sftp_service(make_service, sftp)
    url = service.url + "origins/sftp/disk.iso"
    if warm:
        assert (await fetch(client, url))[2] == data
    await assert_random_ranges(client, url, data, random.Random(121), 40)
    async with client.head(url) as resp:
        assert resp.headers["Content-Length"] == str(SIZE)


async def test_eight_cold_readers_fetch_the_image_once(
    sftp: Setup, make_service: MakeService, client: aiohttp.ClientSession
) -> None:
    size = 8 * MiB + 777
    data = generate_image(size, seed=122)
    (sftp.isos / "big.iso").write_bytes(data)
    service = await sftp_service(make_service, sftp, origin={"max_sessions": 2})
    url = service.url + "origins/sftp/big.iso"
    results = await asyncio.gather(*(fetch(client, url) for _ in range(8)))
    assert [(status, body == data) for status, _, body in results] == [(200, True)] * 8
    fetched = service.metrics.registry.get_sample_value(
        "isocache_origin_bytes_total", {"origin": "sftp"}
    )
    assert fetched is not None and size <= fetched <= 1.05 * size
    # On the wire, SSH framing and logins included, sshd sent the image about once.
    assert size <= sftp.relay.bytes_down <= 1.05 * size
    assert sftp.relay.connections <= 2  # max_sessions bounds the SSH connections


async def test_a_session_dropped_mid_read_resumes(
    sftp: Setup, make_service: MakeService, client: aiohttp.ClientSession
) -> None:
    size = 4 * MiB
    data = generate_image(size, seed=123)
    (sftp.isos / "drop.iso").write_bytes(data)
    # The first session is reset once sshd has sent 1 MiB (the login takes a few KiB).
    sftp.relay.cut_after, sftp.relay.cuts_left = MiB, 1
    service = await sftp_service(
        make_service, sftp, chunk_size="1MiB", fetch={"max_connections_per_image": "1"}
    )
    status, _, body = await fetch(client, service.url + "origins/sftp/drop.iso")
    assert (status, body == data) == (200, True)
    assert sftp.relay.cut == 1 and sftp.relay.connections >= 2
    # Resumed, not restarted: a restart would send the first MiB again (the piece in
    # flight, at most 512 KiB, is sent twice).
    assert sftp.relay.bytes_down <= size + 0.75 * MiB


async def test_listing_filters_by_type_and_hides_links_out_of_the_tree(
    sftp: Setup, make_service: MakeService, client: aiohttp.ClientSession
) -> None:
    for name, size in (("a.iso", 10), ("b.VFD", 20), ("c.img", 30), ("d", 40)):
        (sftp.isos / name).write_bytes(b"x" * size)
    (sftp.isos / "sub").mkdir()
    (sftp.isos / "sub" / "inner.iso").write_bytes(b"y" * 5)
    os.symlink(sftp.isos / "a.iso", sftp.isos / "alias.iso")
    outside = sftp.isos.parent / "secret.iso"
    outside.write_bytes(b"s" * 50)
    os.symlink(outside, sftp.isos / "escape.iso")
    service = await sftp_service(make_service, sftp)
    status, _, body = await fetch(client, service.url + "origins/sftp/?type=iso,vfd")
    assert status == 200
    assert sorted(json.loads(body), key=lambda e: e["name"]) == [
        {"name": "a.iso", "size": 10, "type": "iso"},
        {"name": "alias.iso", "size": 10, "type": "iso"},
        {"name": "b.VFD", "size": 20, "type": "vfd"},
        {"name": "disk.iso", "size": SIZE, "type": "iso"},
        {"name": "sub", "size": None, "type": "dir"},
    ]
    status, _, body = await fetch(client, service.url + "origins/sftp/sub/")
    assert (status, json.loads(body)) == (200, [{"name": "inner.iso", "size": 5, "type": "iso"}])
    status, _, body = await fetch(client, service.url + "origins/sftp/nope/")
    assert status == 404 and json.loads(body)["error"] == "image_not_found"


async def test_escaping_paths_are_refused(
    sftp: Setup, make_service: MakeService, client: aiohttp.ClientSession
) -> None:
    outside = sftp.isos.parent / "secret.iso"
    outside.write_bytes(b"top secret bytes")
    os.symlink(outside, sftp.isos / "escape.iso")
    os.symlink(sftp.isos / "disk.iso", sftp.isos / "alias.iso")
    service = await sftp_service(make_service, sftp)
    base = service.url + "origins/sftp/"
    for path in ("..%2Fsecret.iso", "%2e%2e/secret.iso", "sub/%2E%2E/%2E%2E/secret.iso"):
        # As sent: yarl would otherwise resolve the dot segments before sending.
        async with client.get(URL(base + path, encoded=True)) as resp:
            assert resp.status == 400, path
            assert (await resp.json())["error"] == "bad_path"
    status, _, body = await fetch(client, base + "escape.iso")
    assert status == 403 and b"secret bytes" not in body
    assert "outside the origin" in json.loads(body)["detail"]
    # A link inside the tree to a file inside it works.
    status, _, body = await fetch(client, base + "alias.iso")
    assert (status, body) == (200, generate_image(SIZE, seed=120))


async def test_unknown_file_is_404(
    sftp: Setup, make_service: MakeService, client: aiohttp.ClientSession
) -> None:
    service = await sftp_service(make_service, sftp)
    status, _, body = await fetch(client, service.url + "origins/sftp/nope.iso")
    assert status == 404 and json.loads(body)["error"] == "image_not_found"


async def test_a_replaced_file_is_never_mixed(
    sftp: Setup, make_service: MakeService, client: aiohttp.ClientSession
) -> None:
    """Version = (size, mtime): a read checks the open file first, so a replacement after
    the stat is OriginChanged, and the answer comes from the new version alone."""
    old = generate_image(SIZE, seed=120)
    new = generate_image(SIZE, seed=124)
    service = await sftp_service(make_service, sftp, revalidate="1h")
    url = service.url + "origins/sftp/disk.iso"
    status, _, body = await fetch(client, url, {"Range": "bytes=0-99"})
    assert (status, body) == (206, old[:100])
    (sftp.isos / "disk.iso").write_bytes(new)  # same size, later mtime
    stamp = os.stat(sftp.isos / "disk.iso").st_mtime + 5
    os.utime(sftp.isos / "disk.iso", (stamp, stamp))
    status, _, body = await fetch(client, url, {"Range": f"bytes={5 * CHUNK}-{6 * CHUNK - 1}"})
    assert (status, body) == (206, new[5 * CHUNK : 6 * CHUNK])


async def test_wrong_password_is_502_without_the_password(
    sftp: Setup,
    make_service: MakeService,
    client: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    service = await sftp_service(
        make_service, sftp, origin={"private_key_file": "", "password": PASSWORD}
    )
    status, headers, body = await fetch(client, service.url + "origins/sftp/disk.iso")
    assert status == 502 and headers["Content-Type"].startswith("application/json")
    assert "refused the login" in json.loads(body)["detail"]
    assert PASSWORD.encode() not in body
    assert PASSWORD not in caplog.text


@pytest.mark.parametrize("case", ["unknown", "changed"])
async def test_a_host_key_not_in_known_hosts_is_502(
    sftp: Setup,
    make_service: MakeService,
    client: aiohttp.ClientSession,
    tmp_path: Path,
    case: str,
) -> None:
    other = tmp_path / "other_key"
    await asyncio.to_thread(
        subprocess.run,
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)],
        check=True,
    )
    key = other.with_suffix(".pub").read_text().split()
    known = tmp_path / "known_hosts_test"
    if case == "changed":
        # The relay's address with another key: what a man in the middle looks like.
        known.write_text(f"[127.0.0.1]:{sftp.relay.port} {key[0]} {key[1]}\n")
    else:
        known.write_text(f"[127.0.0.1]:{sftp.sshd.port} {key[0]} {key[1]}\n")
    service = await sftp_service(make_service, sftp, origin={"known_hosts": str(known)})
    status, _, body = await fetch(client, service.url + "origins/sftp/disk.iso")
    answer = json.loads(body)
    assert status == 502 and answer["error"] == "origin_error"
    assert ("CHANGED" if case == "changed" else "is unknown") in answer["detail"]
    assert sftp.relay.bytes_down < 10_000  # refused at the key exchange: no file was read


@pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-utils is not installed")
async def test_qemu_img_convert_is_exact(
    sftp: Setup, make_service: MakeService, tmp_path: Path
) -> None:
    from tests.test_qemu import run

    data = generate_image(8 * MiB + 4096, seed=125)
    (sftp.isos / "x.img").write_bytes(data)
    service = await sftp_service(make_service, sftp, chunk_size="1MiB")
    out = tmp_path / "out.raw"
    code, _, err = await run(
        "qemu-img", "convert", "-m", "1", "-f", "raw", "-O", "raw",
        f"{service.url}origins/sftp/x.img", str(out),
    )  # fmt: skip
    assert code == 0, err.decode()
    assert hashlib.sha256(out.read_bytes()).hexdigest() == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize(
    ("keys", "key", "message"),
    [
        ({"known_hosts": ""}, "known_hosts", "required"),
        ({"private_key_file": ""}, "private_key_file", "set private_key_file, password"),
        ({"url": "sftp://u:pw@127.0.0.1/isos/"}, "url", "password_file, not the URL"),
        ({"url": "sftp://127.0.0.1/isos/"}, "username", "required"),
        ({"known_hosts": "/nonexistent/known_hosts"}, "known_hosts", "cannot read"),
    ],
)
def test_config_errors_name_the_key(
    tmp_path: Path, keys: dict[str, str], key: str, message: str
) -> None:
    from isocache.config import ConfigError, parse_config_text

    (tmp_path / "kh").write_text("")
    (tmp_path / "id").write_text("")
    values = {
        "url": "sftp://u@127.0.0.1:2222/isos/",
        "private_key_file": str(tmp_path / "id"),
        "known_hosts": str(tmp_path / "kh"),
        **keys,
    }
    table = "\n".join(f"{k} = {json.dumps(v)}" for k, v in values.items() if v)
    with pytest.raises(ConfigError) as caught:
        parse_config_text(f"[origins.s]\n{table}\n", source="t.toml")
    assert caught.value.key == f"origins.s.{key}" and message in caught.value.message
    assert "pw" not in str(caught.value).replace("password", "")
