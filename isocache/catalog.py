"""The catalog: which images and origin trees exist, and which backend reads each URL.

Turns a configured image name, or an origin name plus a path under it, into an ImageRef.
Also the allowlist: a URL may be fetched (or redirected to) only when it lies under a
configured origin or is a configured image's URL. "Under" is urls.is_under, per path
segment on the URL as it is sent, with dot segments refused however they are encoded.
"""

from __future__ import annotations

from urllib.parse import quote, unquote

from isocache.config import Config
from isocache.errors import BadPath, Conflict, Forbidden, ImageNotFound
from isocache.image import ImageRef
from isocache.origins.base import Origin
from isocache.origins.registry import Backends
from isocache.urls import is_under, path_problem, redact_url, same_place

# Characters left unescaped when a decoded path segment is put back into an origin URL
# (RFC 3986 pchar minus "%"): everything else is percent-encoded again.
_SEGMENT_SAFE = "!$&'()*+,;=:@~-._"
IMAGES_LABEL = "images"


class Catalog:
    """Images and origin trees. Origins are set by the config (and a reload); images may be
    added, removed and (un)pinned at run time through the admin API. Use on the event loop."""

    def __init__(self, config: Config, backends: Backends) -> None:
        self._backends = backends
        self.generation = 0  # counts reloads: refs built from an older one may be stale
        self._origins = {name: o.url for name, o in config.origins.items()}
        self._images: dict[str, ImageRef] = {}
        self.configured = frozenset(config.images)
        for name, image in config.images.items():
            self._images[name] = self._ref(name, image.url, image.sha256, image.pin)
        self._image_urls = frozenset(
            same_place(ref.url) for ref in self._images.values() if path_problem(ref.url) is None
        )

    def reload(self, config: Config, backends: Backends) -> list[str]:
        """Take a reloaded config's origins and images in place (everything holding this
        catalog sees them at once). Run-time images are kept while they still lie under an
        origin and their name is not now configured; the names of the others are returned."""
        runtime = {n: r for n, r in self._images.items() if n not in self.configured}
        self.generation += 1  # refs made before point at the old backends
        self._backends = backends
        self._origins = {name: o.url for name, o in config.origins.items()}
        images = {
            name: self._ref(name, image.url, image.sha256, image.pin)
            for name, image in config.images.items()
        }
        dropped = []
        for name, ref in runtime.items():
            if name in images or self._origin_of(ref.url) is None:
                dropped.append(name)
            else:
                images[name] = self._ref(name, ref.url, ref.sha256, ref.pinned)
        self._image_urls = frozenset(
            same_place(ref.url)
            for name, ref in images.items()
            if name in config.images and path_problem(ref.url) is None
        )
        self._images, self.configured = images, frozenset(config.images)
        return dropped

    def _ref(self, name: str, url: str, sha256: str | None, pinned: bool) -> ImageRef:
        origin_name = self._origin_of(url)
        return ImageRef(
            url=url,
            origin=self._backends.for_origin(origin_name),
            origin_label=origin_name or IMAGES_LABEL,
            name=name,
            sha256=sha256,
            pinned=pinned,
        )

    def register(self, name: str, url: str, sha256: str | None, pinned: bool) -> ImageRef:
        """Add (or replace) a run-time image. Only URLs under a configured origin: anything
        else is Forbidden and never contacted. Configured images cannot be replaced."""
        if name in self.configured:
            raise Conflict(f"image {name!r} is defined in the config file")
        problem = path_problem(url)
        if problem is not None:
            raise Forbidden(f"{redact_url(url)} is refused: {problem}")
        if self._origin_of(url) is None:
            raise Forbidden(f"{redact_url(url)} is outside the configured origins")
        ref = self._ref(name, url, sha256, pinned)
        self._images[name] = ref
        return ref

    def unregister(self, name: str) -> ImageRef:
        if name in self.configured:
            raise Conflict(f"image {name!r} is defined in the config file")
        ref = self._images.pop(name, None)
        if ref is None:
            raise ImageNotFound(f"no image named {name!r}")
        return ref

    def _origin_of(self, url: str) -> str | None:
        for name, prefix in self._origins.items():
            if is_under(url, prefix):
                return name
        return None

    def ref_for_url(self, url: str) -> ImageRef | None:
        """A ref that reads `url` from its configured origin; None when it may no longer be
        fetched (its origin left the config)."""
        if not self.is_allowed(url):
            return None
        origin_name = self._origin_of(url)
        return ImageRef(
            url=url,
            origin=self._backends.for_origin(origin_name),
            origin_label=origin_name or IMAGES_LABEL,
        )

    def is_allowed(self, url: str) -> bool:
        """True when `url` lies under a configured origin or is a configured image URL."""
        if path_problem(url) is not None:
            return False
        return same_place(url) in self._image_urls or self._origin_of(url) is not None

    def images(self) -> dict[str, ImageRef]:
        return dict(self._images)

    def image(self, name: str) -> ImageRef:
        """The catalog image `name`. Raises ImageNotFound without contacting any origin."""
        ref = self._images.get(name)
        if ref is None:
            raise ImageNotFound(f"no image named {name!r} in the catalog")
        return ref

    def origin_file(self, origin: str, raw_path: str) -> ImageRef:
        """The file at `raw_path` (still percent-encoded, no leading slash) under `origin`.

        Each segment is decoded once and checked: empty, ".", "..", and segments holding
        "/", "\\", NUL or other control characters are refused (BadPath), so a request can
        never name anything outside the origin's prefix, however it is encoded.
        """
        url = self._under(origin, raw_path)
        return ImageRef(url=url, origin=self._backends.for_origin(origin), origin_label=origin)

    def origin_dir(self, origin: str, raw_path: str) -> tuple[str, Origin]:
        """The URL (ending in "/") and backend of a directory under `origin`; "" is its root."""
        url = (
            self._under(origin, raw_path.rstrip("/")) if raw_path.strip("/") else self._base(origin)
        )
        return (url if url.endswith("/") else url + "/"), self._backends.for_origin(origin)

    def _base(self, origin: str) -> str:
        base = self._origins.get(origin)
        if base is None:
            raise ImageNotFound(f"no origin named {origin!r}")
        return base

    def _under(self, origin: str, raw_path: str) -> str:
        base = self._base(origin)
        segments = []
        for raw in raw_path.split("/"):
            if "\\" in raw:
                raise BadPath("backslashes are not allowed in paths")
            try:
                segment = unquote(raw, errors="strict")
            except UnicodeDecodeError as exc:
                raise BadPath("path is not valid percent-encoded UTF-8") from exc
            if segment in ("", ".", ".."):
                raise BadPath("empty, '.' and '..' path segments are not allowed")
            if any(c in "/\\" or ord(c) < 0x20 or ord(c) == 0x7F for c in segment):
                raise BadPath("path segment holds '/', '\\' or a control character")
            segments.append(quote(segment, safe=_SEGMENT_SAFE))
        url = base + "/".join(segments)
        # The same check as every other URL: catches what the segment rules above let
        # through, such as "..;" (a ".." to Tomcat) or a doubly encoded "%252e%252e".
        if not is_under(url, base):
            raise BadPath(f"path refused: {path_problem(url) or 'outside the origin'}")
        return url
