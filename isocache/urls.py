"""URL containment and redaction: pure functions, no I/O.

Containment decides whether a URL lies under an origin's URL. It works on the URL exactly
as it will be sent, compares path segments (not string prefixes: /isos-evil/ is not under
/isos/), and refuses outright any path an origin could resolve to somewhere else: dot
segments however they are encoded (nginx and Apache resolve "..", Tomcat reads "..;", some
servers and proxies decode twice or take "\\" for "/"), encoded slashes and backslashes,
control characters. Refusing is safe: no legitimate image URL needs any of these.

Redaction turns a URL into something fit for a log line, an error body or the admin API:
the userinfo password, the query and the fragment are masked (signed URLs carry their
secrets in the query: X-Amz-Signature, token=...).

Leaf module: imports nothing from isocache.
"""

from __future__ import annotations

import re
from urllib.parse import SplitResult, unquote, unquote_to_bytes, urlsplit, urlunsplit

from yarl import URL

REDACTED = "<redacted>"
_DEFAULT_PORTS = {"http": 80, "https": 443, "ftp": 21, "ftps": 990}
# Decoding this many times must reach a fixed point; deeper nesting is refused outright.
_MAX_DECODES = 4
# Overlong UTF-8 forms of ".", "/" and "\" that lax decoders accept.
_OVERLONG = (b"\xc0\xae", b"\xe0\x80\xae", b"\xc0\xaf", b"\xe0\x80\xaf", b"\xc1\x9c")
# Up to whitespace or a quote; "<" and ">" are taken in so that an already redacted URL
# ("...?<redacted>") comes out the same.
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"]+")


def _segment_problem(raw: str) -> str | None:
    """Why one raw (percent-encoded) path segment is refused, or None."""
    text = raw
    for _ in range(_MAX_DECODES):
        if "/" in text or "\\" in text:
            return "an encoded '/' or '\\' in a path segment"
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
            return "a control character in the path"
        # A path parameter (";...") does not make ".." anything else to Tomcat and friends.
        if text.split(";", 1)[0] in (".", ".."):
            return "a '.' or '..' path segment"
        if any(form in unquote_to_bytes(text) for form in _OVERLONG):
            return "an overlong UTF-8 '.', '/' or '\\' in the path"
        decoded = unquote(text, errors="replace")
        if decoded == text:
            return None
        text = decoded
    return "a path percent-encoded too many times"


def _split(url: str) -> tuple[SplitResult | None, str | None]:
    """The parts of `url`, or None and why it is refused."""
    if any(c <= " " or c == "\x7f" for c in url):
        return None, "a space or control character in the URL"
    if "\\" in url:
        return None, "a backslash in the URL"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return None, "an unparsable URL"
    # file:///path is the one kind without a host (and must have none).
    hostless = parts.scheme.lower() == "file" and not parts.netloc
    if not parts.scheme or not (parts.hostname or hostless):
        return None, "a URL without a scheme or host"
    # The client library must read the same host and path as this check does.
    try:
        sent = URL(url, encoded=True)
    except ValueError:
        return None, "an unparsable URL"
    host = parts.hostname or ""
    if (sent.raw_host or "").lower() != host or sent.raw_path not in (parts.path, "/"):
        return None, "an ambiguous URL"
    if sent.raw_path == "/" and parts.path not in ("", "/"):
        return None, "an ambiguous URL"
    return parts, None


def path_problem(url: str) -> str | None:
    """Why `url` could name something other than what it seems to, or None when it is safe."""
    parts, problem = _split(url)
    if parts is None:
        return problem
    for raw in parts.path.split("/"):
        problem = _segment_problem(raw)
        if problem is not None:
            return problem
    return None


def _place(parts: SplitResult) -> tuple[str, str, int | None]:
    """(scheme, host, port) with case and default ports normalised. Userinfo is left out:
    it is a credential for the place, not part of where the place is."""
    scheme = parts.scheme.lower()
    return scheme, parts.hostname or "", parts.port or _DEFAULT_PORTS.get(scheme)


def _segments(path: str) -> list[str]:
    # Decoded once, so "%69sos" and "isos" are the same segment.
    return [unquote(raw, errors="replace") for raw in path.split("/")]


def is_under(url: str, base: str) -> bool:
    """True when `url` lies under the directory URL `base` (which ends in "/"): same scheme,
    host and port, and `base`'s path segments are the first segments of `url`'s path.
    False for any URL (or base) that `path_problem` refuses."""
    if path_problem(url) is not None or path_problem(base) is not None:
        return False
    parts, base_parts = urlsplit(url), urlsplit(base)
    if _place(parts) != _place(base_parts):
        return False
    prefix = _segments(base_parts.path or "/")
    if prefix[-1] == "":  # "/isos/" is the directory "/isos"
        prefix.pop()
    return _segments(parts.path or "/")[: len(prefix)] == prefix


def same_place(url: str) -> str:
    """`url` with scheme and host lower-cased and a default port dropped, for comparing two
    URLs for equality; `url` itself when it cannot be parsed."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return url
    scheme = parts.scheme.lower()
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if port is not None and port != _DEFAULT_PORTS.get(scheme):
        host = f"{host}:{port}"
    userinfo, at, _ = parts.netloc.rpartition("@")
    return urlunsplit(parts._replace(scheme=scheme, netloc=userinfo + at + host))


def redact_url(url: str) -> str:
    """`url` for logs, errors and listings: the userinfo password becomes "***", a query
    "?<redacted>" and a fragment "#<redacted>"."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return "<unparsable url>"
    if parts.password is not None:
        userinfo, _, hostport = parts.netloc.rpartition("@")
        user = userinfo.split(":", 1)[0]
        parts = parts._replace(netloc=f"{user}:***@{hostport}")
    if parts.query:
        parts = parts._replace(query=REDACTED)
    if parts.fragment:
        parts = parts._replace(fragment=REDACTED)
    return urlunsplit(parts)


def redact_text(text: str) -> str:
    """`text` with every URL in it redacted (a last guard for messages built elsewhere)."""

    def one(match: re.Match[str]) -> str:
        # Punctuation after a URL is most likely the sentence's, as linkifiers assume.
        url = match.group(0)
        core = url.rstrip(".,:;!)]")
        return redact_url(core) + url[len(core) :]

    return _URL_IN_TEXT.sub(one, text)
