"""The admin commands of the CLI: a small synchronous client of the admin API.

Every failure becomes AdminClientError with one line for the user; nothing here imports
the service."""

from __future__ import annotations

import http.client
import json
import secrets
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

    def _request(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, str, bytes, dict[str, str]]:
        """(status, reason, body, headers) of any answer; AdminClientError when none came."""
        data = json.dumps(body).encode() if body is not None else None
        try:
            request = urllib.request.Request(self.server + path, data=data, method=method)
        except ValueError as exc:
            raise AdminClientError(f"bad server address {self.server!r}: {exc}") from None
        request.add_header("User-Agent", "isocache-cli")
        for key, value in (headers or {}).items():
            request.add_header(key, value)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if self._token:
            request.add_header("Authorization", f"Bearer {self._token}")
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as resp:
                return resp.status, resp.reason, resp.read(), dict(resp.headers)
        except urllib.error.HTTPError as exc:
            return exc.code, exc.reason, exc.read(), dict(exc.headers)
        except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise AdminClientError(f"cannot reach isocache at {self.server}: {reason}") from None

    def _not_isocache(self, status: int, reason: str, headers: dict[str, str]) -> str:
        kind = headers.get("Content-Type", "no content type").split(";")[0]
        return (
            f"{self.server} does not look like isocache: it answered {status} {reason} ({kind}) "
            "where the admin API answers JSON; check --server or the config's listen address"
        )

    def call(self, method: str, path: str, body: Any = None) -> Any:
        status, reason, raw, headers = self._request(method, path, body)
        try:
            answer = json.loads(raw or b"null")
        except ValueError:
            raise AdminClientError(self._not_isocache(status, reason, headers)) from None
        if status < 400:
            return answer
        if not (isinstance(answer, dict) and "error" in answer and "detail" in answer):
            raise AdminClientError(self._not_isocache(status, reason, headers))
        detail = str(answer["detail"])
        hint = ""
        if status == 401 and not self._token:
            hint = " (give --token, set ISOCACHE_TOKEN, or --config with [admin] token_file)"
        elif status == 403 and self._token and "token" in detail:
            hint = " (check the token)"
        raise AdminClientError(f"{detail}{hint}")

    def probe(self, path: str) -> tuple[int, str, int | None]:
        """(status, what isocache said, Content-Length) of HEAD `path`; the error's JSON
        detail comes from a 1-byte GET, since a HEAD answer has no body."""
        status, _, _, headers = self._request("HEAD", path)
        length = headers.get("Content-Length")
        if status < 400:
            return status, "", int(length) if length and length.isdigit() else None
        status, reason, raw, _ = self._request("GET", path, headers={"Range": "bytes=0-0"})
        try:
            detail = str(json.loads(raw)["detail"])
        except (ValueError, KeyError, TypeError):
            detail = reason
        return status, detail, None


def register_checked(
    client: AdminClient,
    name: str,
    url: str,
    sha256: str | None,
    pin: bool,
    no_check: bool = False,
) -> str:
    """Register `name` -> `url`, having first checked that the origin serves it: the URL is
    registered under a scratch name and read with HEAD through isocache (with the origin's
    credentials, from the service's network), so a wrong URL never replaces an image."""
    body = {"url": url, "pin": pin, **({"sha256": sha256} if sha256 else {})}
    size = None
    if not no_check:
        scratch = f"check-{secrets.token_hex(6)}"
        client.call("PUT", f"api/images/{scratch}", {"url": url})
        try:
            status, detail, size = client.probe(f"images/{scratch}")
        finally:
            client.call("DELETE", f"api/images/{scratch}")
        if status >= 400:
            raise AdminClientError(
                f"not registered: the origin does not serve {url}: {status} {detail}"
            )
    image = client.call("PUT", f"api/images/{name}", body)
    shown = f"{size} bytes" if size is not None else "not checked"
    return f"registered {name} -> {image['url']} ({shown})" + (", pinned" if pin else "")


def verify_sentence(result: dict[str, Any]) -> str:
    """The answer of POST /api/images/NAME/verify, as a sentence."""
    name, good, dropped = result["name"], result["chunks_ok"], result["chunks_dropped"]
    chunks = f"{good} cached chunks matched their checksums"
    if dropped:
        chunks += f", {dropped} did not and were dropped (they are fetched again when read)"
    verdict = {
        True: "the whole image matches its expected digest",
        False: "the image does NOT match its expected digest; its chunks were dropped",
        None: "the digest was not checked (the image is not fully cached, or has no sha256)",
    }[result["verified"]]
    return f"{name}: {chunks}; {verdict}."


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
