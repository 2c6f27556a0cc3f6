"""The admin commands of the CLI: a small synchronous client of the admin API.

Every failure becomes AdminClientError with one line for the user; nothing here imports
the service."""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any, TextIO
from urllib.parse import urlsplit


class AdminClientError(Exception):
    """One line for the user; the CLI exits non-zero with it."""


class AdminClient:
    def __init__(self, server: str, token: str | None, timeout: float = 10.0) -> None:
        self.server = server.rstrip("/") + "/"
        self._token = token
        self._timeout = timeout

    def call(self, method: str, path: str, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.server + path, data=data, method=method)
        request.add_header("User-Agent", "isocache-cli")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if self._token:
            request.add_header("Authorization", f"Bearer {self._token}")
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as resp:
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            try:
                detail = json.loads(exc.read()).get("detail", exc.reason)
            except (ValueError, AttributeError):
                detail = exc.reason
            hint = {401: " (give --token or set ISOCACHE_TOKEN)", 403: " (check the token)"}
            raise AdminClientError(f"{detail}{hint.get(exc.code, '')}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise AdminClientError(f"cannot reach isocache at {self.server}: {reason}") from None


def _size(value: float | None) -> str:
    if value is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    return "-"


def print_status(images: list[dict[str, Any]], out: TextIO = sys.stdout) -> None:
    rows = [("NAME", "SIZE", "CACHED", "PINNED", "VERIFIED", "LAST ACCESS")]
    for image in images:
        size, cached = image["size"], image["cached_bytes"]
        percent = f"{100 * cached / size:.0f}%" if size else "-"
        verified = {None: "-", True: "yes", False: "FAILED"}[image["verified"]]
        rows.append(
            (
                image["name"],
                _size(size),
                percent,
                "yes" if image["pinned"] else "no",
                verified,
                image["last_access"] or "-",
            )
        )
    _print_table(rows, out)


def print_attachments(attachments: list[dict[str, Any]], out: TextIO = sys.stdout) -> None:
    rows = [("ATTACHMENT", "IMAGE", "STATE", "SIZE", "CACHED", "URL")]
    for attachment in attachments:
        size, cached = attachment["size"], attachment["cached_bytes"]
        rows.append(
            (
                attachment["id"],
                attachment.get("image") or attachment.get("path") or "-",
                attachment["state"],
                _size(size),
                f"{100 * cached / size:.0f}%" if size else "-",
                attachment["url"],
            )
        )
    _print_table(rows, out)


def _print_table(rows: Sequence[tuple[str, ...]], out: TextIO) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip(),
            file=out,
        )


def libvirt_disk(url: str) -> str:
    """The libvirt <disk> element that attaches `url` (an attachment URL) as a CD-ROM."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    return (
        "<disk type='network' device='cdrom'>\n"
        "  <driver name='qemu' type='raw'/>\n"
        f"  <source protocol='{parts.scheme}' name='{parts.path}'>\n"
        f"    <host name='{host}' port='{port}'/>\n"
        "  </source>\n"
        "  <target dev='sdc' bus='sata'/>\n"
        "  <readonly/>\n"
        "</disk>"
    )


def wait_for_job(
    client: AdminClient, job_id: str, out: TextIO = sys.stderr, interval: float = 0.5
) -> dict[str, Any]:
    """Follow a prewarm job to its end: a progress bar on a terminal, lines otherwise."""
    job: dict[str, Any] = client.call("GET", f"api/prewarm/{job_id}")
    if out.isatty():
        from tqdm import tqdm

        with tqdm(
            total=job["bytes_total"] or 0, unit="B", unit_scale=True, unit_divisor=1024, file=out
        ) as bar:
            while job["state"] in ("queued", "running"):
                time.sleep(interval)
                job = client.call("GET", f"api/prewarm/{job_id}")
                bar.total = job["bytes_total"] or bar.total
                bar.update(job["bytes_done"] - bar.n)
        return job
    last = None
    while True:
        line = f"{job['state']} {job['bytes_done']}/{job['bytes_total'] or '?'} bytes"
        if job.get("rate"):
            line += f" {_size(job['rate'])}/s"
        if job.get("eta") is not None:
            line += f" eta {job['eta']:.0f}s"
        if line != last:
            print(line, file=out, flush=True)
            last = line
        if job["state"] not in ("queued", "running"):
            return job
        time.sleep(interval)
        job = client.call("GET", f"api/prewarm/{job_id}")
