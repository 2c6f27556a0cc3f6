"""The admin web page at /ui/: three static files shipped in this package, served from memory.

The page calls the admin API and the origin listings with relative URLs, so it works unchanged
behind a reverse proxy's path prefix. Every response carries a strict Content-Security-Policy:
no inline script or style, nothing from another origin, no framing.
"""

from __future__ import annotations

from importlib.resources import files

from aiohttp import web

# The page's own files (and nothing else) may load; fetch() only to this origin. Chrome asks
# for a favicon on its own, so the page names one of its files rather than cause a 404.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
_FILES = {
    "": ("index.html", "text/html; charset=utf-8"),
    "app.js": ("app.js", "text/javascript; charset=utf-8"),
    "style.css": ("style.css", "text/css; charset=utf-8"),
    "favicon.svg": ("favicon.svg", "image/svg+xml"),
}
_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # The page is small; always revalidating means an upgraded service is never half-stale.
    "Cache-Control": "no-cache",
}


def _load() -> dict[str, tuple[bytes, str]]:
    package = files(__name__)
    return {
        path: (package.joinpath(name).read_bytes(), content_type)
        for path, (name, content_type) in _FILES.items()
    }


class UiPages:
    """Handlers for GET /ui/{file}; the files are read once, at construction."""

    def __init__(self) -> None:
        self._files = _load()

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/ui", self.redirect),
            web.get("/ui/{file:[a-z.]*}", self.page),
        ]

    async def redirect(self, request: web.Request) -> web.StreamResponse:
        # Relative, so a proxy's path prefix is kept: /prefix/ui -> /prefix/ui/.
        raise web.HTTPMovedPermanently("ui/")

    async def page(self, request: web.Request) -> web.Response:
        found = self._files.get(request.match_info["file"])
        if found is None:
            raise web.HTTPNotFound()
        body, content_type = found
        return web.Response(body=body, headers={**_HEADERS, "Content-Type": content_type})
