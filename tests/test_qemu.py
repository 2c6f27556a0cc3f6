"""Real qemu reading through the proxy: qemu-img info, convert and qemu-io at odd offsets.

Every qemu command runs under `timeout -k`: qemu 7.2's curl driver can hang for ever when
several keep-alive transfers finish together (see docs/ARCHITECTURE.md); convert uses -m 1.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from bench.origin import OriginServer, generate_image
from tests.conftest import MakeService, MiB

pytestmark = pytest.mark.skipif(
    shutil.which("qemu-img") is None or shutil.which("qemu-io") is None,
    reason="qemu-utils is not installed (.ci/run installs it)",
)

SIZE = 24 * MiB + 4096 * 3  # a whole number of 4 KiB sectors, not of chunks
QEMU_ENV = {k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy")}


async def run(*args: str, timeout: int = 60) -> tuple[int, bytes, bytes]:
    proc = await asyncio.create_subprocess_exec(
        "timeout",
        "-k",
        "5",
        str(timeout),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=QEMU_ENV,
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out, err


@pytest.fixture
async def image_url(origin: OriginServer, make_service: MakeService) -> str:
    origin.add_file("disk.raw", generate_image(SIZE, seed=50))
    service = await make_service(origin.url, images={"disk": "disk.raw"}, chunk_size="1MiB")
    return service.url + "images/disk"


async def test_qemu_img_info(image_url: str) -> None:
    code, out, err = await run("qemu-img", "info", "--output=json", "-f", "raw", image_url)
    assert code == 0, err.decode()
    assert json.loads(out)["virtual-size"] == SIZE


@pytest.mark.parametrize("warm", [False, True], ids=["cold", "warm"])
async def test_qemu_img_convert_is_exact(
    image_url: str, origin: OriginServer, tmp_path: Path, warm: bool
) -> None:
    expected = hashlib.sha256(generate_image(SIZE, seed=50)).hexdigest()
    if warm:
        code, _, err = await run(
            "qemu-img",
            "convert",
            "-m",
            "1",
            "-f",
            "raw",
            "-O",
            "raw",
            image_url,
            str(tmp_path / "first.raw"),
        )
        assert code == 0, err.decode()
        origin.reset_log()
    out = tmp_path / "out.raw"
    code, _, err = await run(
        "qemu-img", "convert", "-m", "1", "-f", "raw", "-O", "raw", image_url, str(out)
    )
    assert code == 0, err.decode()
    assert hashlib.sha256(out.read_bytes()).hexdigest() == expected
    if warm:
        assert origin.body_bytes() == 0
    else:
        assert origin.body_bytes() <= 1.1 * SIZE


async def test_qemu_io_reads_at_odd_offsets(image_url: str) -> None:
    data = generate_image(SIZE, seed=50)
    offsets = [
        (0, 512),
        (511, 1025),
        (MiB - 7, 4099),
        (3 * MiB + 333, 2 * MiB + 1),
        (SIZE - 1000, 1000),
    ]
    for offset, length in offsets:
        for _ in range(2):  # cold, then warm
            code, out, err = await run(
                "qemu-io", "-r", "-f", "raw", "-c", f"read -v {offset} {length}", image_url
            )
            assert code == 0, err.decode()
            assert parse_dump(out) == data[offset : offset + length], (offset, length)


def parse_dump(output: bytes) -> bytes:
    """The bytes of `qemu-io read -v`'s hex dump ("00000000:  xx xx ... ascii")."""
    result = bytearray()
    for line in output.decode().splitlines():
        head, sep, rest = line.partition(":  ")
        if not sep or not all(c in "0123456789abcdef" for c in head):
            continue
        # "xx xx ... xx" then two spaces and the ASCII rendering (which may look like hex).
        result += bytes(int(token, 16) for token in rest.split("  ", 1)[0].split())
    return bytes(result)


async def test_qemu_img_convert_through_ftp_and_s3_origins(
    make_service: MakeService, tmp_path: Path
) -> None:
    from tests.ftp_server import FtpServer
    from tests.s3_server import S3Server

    data = generate_image(8 * MiB + 4096, seed=51)
    expected = hashlib.sha256(data).hexdigest()
    root = tmp_path / "ftproot"
    root.mkdir()
    (root / "disk.raw").write_bytes(data)
    ftp = FtpServer(root)
    ftp.start()
    s3 = S3Server()
    await asyncio.to_thread(s3.start)
    try:
        s3c = s3.client()
        await asyncio.to_thread(s3c.create_bucket, Bucket="vm-images")
        await asyncio.to_thread(s3c.put_object, Bucket="vm-images", Key="disk.raw", Body=data)
        extra = (
            f'[origins.ftp]\nurl = "{ftp.url()}"\npassword = "{ftp.password}"\n'
            f'[origins.s3]\nurl = "s3://vm-images/"\nendpoint_url = "{s3.endpoint}"\n'
            f'aws_access_key_id = "{s3.key_id}"\naws_secret_access_key = "{s3.secret}"\n'
        )
        service = await make_service("http://127.0.0.1:9/", extra=extra, chunk_size="1MiB")
        for origin in ("ftp", "s3"):
            out = tmp_path / f"{origin}.raw"
            code, _, err = await run(
                "qemu-img",
                "convert",
                "-m",
                "1",
                "-f",
                "raw",
                "-O",
                "raw",
                f"{service.url}origins/{origin}/disk.raw",
                str(out),
            )
            assert code == 0, err.decode()
            assert hashlib.sha256(out.read_bytes()).hexdigest() == expected, origin
    finally:
        ftp.stop()
        await asyncio.to_thread(s3.stop)
