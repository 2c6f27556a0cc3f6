"""Builds one backend per configured origin (HTTP origins share one pooled client, except
those with a `ca_file` of their own) and finds the backend of a URL. The only place that
knows which class serves which scheme. Each origin's backend is seen through its
`validate` setting (ValidatedOrigin)."""

from __future__ import annotations

from collections.abc import Callable

from isocache.config import Config
from isocache.origins.base import FetchLimits, Origin
from isocache.origins.file import FileOrigin
from isocache.origins.ftp import FtpOrigin
from isocache.origins.glance import GlanceOrigin
from isocache.origins.http import HttpOrigin
from isocache.origins.s3 import S3Origin
from isocache.origins.sftp import SftpOrigin
from isocache.origins.swift import SwiftOrigin
from isocache.origins.validate import ValidatedOrigin


class Backends:
    def __init__(
        self,
        config: Config,
        is_allowed: Callable[[str], bool],
        previous: Backends | None = None,
    ) -> None:
        """`previous`: the backends before a reload, whose shared HTTP pool and whose
        backends of unchanged origins are taken over (pools, sessions and all)."""
        fetch = config.fetch
        limits = FetchLimits(
            fetch.connect_timeout, fetch.read_timeout, fetch.retries, fetch.max_connections
        )
        self.http: HttpOrigin = (
            previous.http if previous else HttpOrigin(is_allowed=is_allowed, limits=limits)
        )
        self._backends: list[Origin] = [self.http]
        self._by_origin: dict[str, Origin] = {}
        self._own: dict[str, Origin] = {}  # origin name -> the backend it alone uses
        self._configs = dict(config.origins)
        for name, origin in config.origins.items():
            if previous is not None and previous._configs.get(name) == origin:
                self._by_origin[name] = previous._by_origin[name]
                if name in previous._own:
                    self._own[name] = previous._own[name]
                    self._backends.append(previous._own[name])
                continue
            backend: Origin
            if origin.kind == "glance":
                backend = GlanceOrigin(origin, limits)
            elif origin.kind == "swift":
                backend = SwiftOrigin(origin, limits)
            elif origin.scheme == "sftp":
                backend = SftpOrigin(origin, limits)
            elif origin.scheme in ("ftp", "ftps"):
                backend = FtpOrigin(origin, limits)
            elif origin.scheme == "s3":
                backend = S3Origin(origin, limits)
            elif origin.scheme == "file":
                backend = FileOrigin(origin, limits)
            elif origin.ca_file:  # its own trust, so its own pool
                backend = HttpOrigin(is_allowed=is_allowed, limits=limits, ca_file=origin.ca_file)
            else:
                backend = self.http
            if backend is not self.http:
                self._backends.append(backend)
                self._own[name] = backend
            self._by_origin[name] = ValidatedOrigin(backend, name, origin.validate)
            if isinstance(backend, FileOrigin) and backend.direct:
                # cache = false: the front sends from the file itself, and must see that.
                self._by_origin[name] = backend
        # Catalog images outside every origin: labelled as in the metrics.
        self._outside = ValidatedOrigin(self.http, "images")

    def for_origin(self, name: str | None) -> Origin:
        """The backend of origin `name`; the shared HTTP backend for URLs outside origins."""
        if name is None:
            return self._outside
        return self._by_origin[name]

    def retired(self, previous: Backends) -> list[Origin]:
        """The backends of `previous` that these no longer use (removed or changed origins)."""
        return [b for b in previous._backends if b not in self._backends]

    async def close(self) -> None:
        for backend in self._backends:
            await backend.close()
