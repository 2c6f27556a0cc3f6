"""Parsers for HTTP directory listings: nginx and Apache HTML autoindex pages and nginx's
`autoindex_format json`. Pure functions over text; untrusted input, so names that would
leave the directory are dropped."""

from __future__ import annotations

import json
from collections.abc import Iterator
from html.parser import HTMLParser
from urllib.parse import unquote, urlsplit

from isocache.origins.base import ListEntry, plain_name


class AutoindexParser(HTMLParser):
    """Feed HTML, then take `entries()`: one entry per relative link to a child.

    The size is the last token of the text between a link and the next one when it is all
    ASCII digits (nginx's exact sizes, Apache's byte counts); Apache's "1.2M" gives None.
    """

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self._done: list[ListEntry] = []
        self._href: str | None = None
        self._text: list[str] = []
        self._seen: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag != "a":
            return
        self._finish()
        href = dict(attrs).get("href")
        self._href = href
        self._text = []

    def handle_data(self, data: str) -> None:
        if self._href is not None:
            self._text.append(data)

    def close(self) -> None:
        super().close()
        self._finish()

    def _finish(self) -> None:
        href, self._href = self._href, None
        if not href:
            return
        parts = urlsplit(href)
        if parts.scheme or parts.netloc or parts.query or parts.fragment or href.startswith("/"):
            return  # sorting links, parent links, links elsewhere
        is_dir = href.endswith("/")
        name = unquote(href.rstrip("/"), errors="replace")
        if not plain_name(name) or name in self._seen:
            return
        self._seen.add(name)
        tokens = "".join(self._text).split()
        size = None
        if (
            not is_dir
            and tokens
            and tokens[-1].isascii()
            and tokens[-1].isdigit()
            and len(tokens[-1]) < 20
        ):
            size = int(tokens[-1])
        self._done.append(ListEntry(name, size, is_dir))

    def entries(self) -> Iterator[ListEntry]:
        """Entries completed so far (each returned once)."""
        done, self._done = self._done, []
        yield from done


def parse_json_autoindex(text: str) -> Iterator[ListEntry]:
    """nginx `autoindex_format json`: [{"name", "type": "file"|"directory", "size"}, ...]."""
    items = json.loads(text)
    if not isinstance(items, list):
        raise ValueError("not a JSON array")
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            continue
        name = item["name"]
        if not plain_name(name):
            continue
        is_dir = item.get("type") == "directory"
        size = item.get("size")
        exact = isinstance(size, int) and not isinstance(size, bool) and size >= 0
        yield ListEntry(name, size if exact and not is_dir else None, is_dir)
