"""docs/qemu-libvirt.md's qemu examples work as written: every -drive names format=raw, the
json: example doubles its commas inside -drive, and qemu reads the image through each form."""

from __future__ import annotations

import asyncio
import re
import shutil
from pathlib import Path

import pytest

from bench.origin import OriginServer, generate_image
from tests.conftest import CHUNK, MakeService

ROOT = Path(__file__).resolve().parent.parent
DOC = (ROOT / "docs" / "qemu-libvirt.md").read_text()
DOC_URL = "http://127.0.0.1:8080/images/alpine"


def drive_values() -> list[str]:
    """The value of every -drive in the page, unquoted."""
    values = re.findall(r"-drive '([^']+)'|-drive (\S+)", DOC)
    return [quoted or bare for quoted, bare in values]


def test_every_drive_names_the_format_and_doubles_json_commas() -> None:
    drives = drive_values()
    assert len(drives) == 3
    for value in drives:
        assert "format=raw" in value.replace(",,", "\0").split(","), value
    (json_drive,) = [value for value in drives if "json:" in value]
    body = json_drive.split("file=json:", 1)[1]
    assert "," not in body.replace(",,", ""), "a single comma inside json: ends the option"


@pytest.mark.skipif(shutil.which("qemu-io") is None, reason="needs qemu-utils")
async def test_qemu_reads_through_the_documented_option_strings(
    origin: OriginServer, make_service: MakeService
) -> None:
    data = generate_image(4 * CHUNK, seed=195)
    origin.add_file("alpine.iso", data)
    service = await make_service(origin.url, images={"alpine": "alpine.iso"})
    url = service.url + "images/alpine"
    for value in drive_values():
        # -drive's keys about the guest (if, id, media, readonly) go; the rest is the same
        # QemuOpts syntax (commas, ",," for a comma in a value) that qemu-io parses, except
        # that -drive's file=STRING is a filename, which qemu-io takes as its argument.
        parts = [
            part.replace(",,", ",")
            for part in re.split(r"(?<!,),(?!,)", value.replace(DOC_URL, url))
            if part.split("=", 1)[0] not in ("if", "id", "media", "readonly")
        ]
        filename = [part[len("file=") :] for part in parts if part.startswith("file=")]
        if filename:
            assert parts == ["format=raw", f"file={filename[0]}"], parts
            target = ["-f", "raw", filename[0]]
        else:
            target = ["--image-opts", ",".join(parts).replace("format=raw", "driver=raw")]
        proc = await asyncio.create_subprocess_exec(
            *["qemu-io", "-r", *target, "-c", f"read -P 0x{data[0]:02x} 0 1"],
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await proc.communicate()
        assert proc.returncode == 0 and b"read 1/1 bytes" in out, (target, out, err)
