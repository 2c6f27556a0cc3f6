"""The TOML config: frozen dataclasses per table, validated on load.

Rejects unknown keys, wrong types and bad units with a ConfigError that names the file and
the dotted key. Never echoes a password or a query found in a URL (urls.redact_url).
"""

from __future__ import annotations

import dataclasses
import os
import re
import ssl
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from isocache.units import MiB, parse_duration, parse_size
from isocache.urls import is_under, path_problem
from isocache.urls import redact_url as redact_url  # its old home: imported from here too

SUPPORTED_SCHEMES = frozenset({"http", "https", "ftp", "ftps", "s3", "file", "sftp", "swift"})
_ADDRESSING = ("path", "virtual")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
_LISTEN = re.compile(r"(?:\[([0-9A-Fa-f:.]+)\]|([A-Za-z0-9.-]+)):([0-9]{1,5})")
_KEEPALIVE = ("auto", "always", "never")
_LOG_LEVELS = ("debug", "info", "warning", "error")
_VALIDATE = ("auto", "content")
# Characters a Swift prefix keeps unescaped in its swift:// URL (as Catalog does for paths).
_PREFIX_SAFE = "/!$&'()*+,;=:@~-._"


class ConfigError(Exception):
    """A bad config: str() is "FILE: dotted.key: message", one line."""

    def __init__(self, file: str, key: str, message: str) -> None:
        super().__init__(f"{file}: {key}: {message}")
        self.file = file
        self.key = key
        self.message = message


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    keepalive: str = "auto"
    log_level: str = "info"
    sendfile: bool = True
    access_log: str = "debug"  # level of the per-request log lines: "debug", "info" or "off"


@dataclass(frozen=True)
class CacheConfig:
    dir: Path
    size_limit: int = 20 * 1024 * MiB
    chunk_size: int = MiB
    revalidate: float = 60.0


@dataclass(frozen=True)
class AdminConfig:
    token: str | None = None


@dataclass(frozen=True)
class ClusterConfig:
    """The hosts of a site that share fills: every member's config lists the same members."""

    members: tuple[str, ...] = ()  # base URLs, e.g. "http://10.0.0.11:8080"
    advertise: str | None = None  # which member this host is
    token: str | None = None  # peer requests carry it as a bearer token when set

    @property
    def enabled(self) -> bool:
        return len(self.members) > 1


@dataclass(frozen=True)
class FetchConfig:
    connect_timeout: float = 3.0
    read_timeout: float = 4.0
    retries: int = 3
    max_connections: int = 16
    max_connections_per_image: int = 4
    readahead: int = 8 * MiB


@dataclass(frozen=True)
class OriginConfig:
    """One origin tree. Credentials are kept here only; never log or list this object."""

    name: str
    url: str
    # FTP(S): the user (else the one in the URL, else anonymous) and its password.
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    # S3: endpoint (None: AWS), region, credentials (else profile, else the AWS chain).
    endpoint_url: str | None = None
    region: str | None = None
    aws_access_key_id: str | None = None
    aws_secret_access_key: str | None = field(default=None, repr=False)
    profile: str | None = None
    addressing: str = "path"
    # Most FTP servers limit sessions per user; S3 and HTTP use fetch.max_connections.
    max_sessions: int = 4
    # FTP: a pooled session idle this long is closed instead of reused. Servers end idle
    # sessions (vsftpd and pyftpdlib after 300 s, IIS after 120 s), and middleboxes may
    # forget them without a word.
    idle_timeout: float = 60.0
    # "http" for plain trees (http, https, ftp, ftps, s3 by scheme), "glance" for OpenStack
    # Glance v2 at `url`, with Keystone v3 auth.
    kind: str = "http"
    auth_url: str | None = None
    project_name: str | None = None
    user_domain_name: str = "Default"
    project_domain_name: str = "Default"
    application_credential_id: str | None = None
    application_credential_secret: str | None = field(default=None, repr=False)
    # TLS (https, ftps, an https S3 endpoint, Glance and Keystone): a PEM bundle of the CAs
    # to trust instead of the system's; None: the system's.
    ca_file: str | None = None
    # What tells versions apart besides the size: "auto", the origin's ETag or Last-Modified
    # (nothing when it sends neither); "content", also a digest of the file's first 64 KiB.
    validate: str = "auto"
    # file: false serves straight from the file (sendfile), nothing stored in the cache;
    # `threads` bounds the blocking calls in flight; `create_dir` is set for a tree under the
    # state directory ("file:NAME/"), which is made at start if missing.
    cache: bool = True
    threads: int = 8
    create_dir: bool = False
    # SFTP: a private key (else the password) and the known_hosts file the server's host key
    # must be in (required: an unknown or changed key is refused, never learned).
    private_key_file: str | None = None
    known_hosts: str | None = None
    # Swift (url is then swift://NAME/PREFIX/): the container, and the storage URL that
    # overrides the one TempAuth or Keystone's catalog gives.
    container: str | None = None
    storage_url: str | None = None

    @property
    def scheme(self) -> str:
        return urlsplit(self.url).scheme.lower()


@dataclass(frozen=True)
class ImageConfig:
    name: str
    url: str
    sha256: str | None = None
    pin: bool = False


@dataclass(frozen=True)
class Config:
    """The whole config. The dicts must not be mutated."""

    source: str
    server: ServerConfig
    cache: CacheConfig
    admin: AdminConfig = field(default_factory=AdminConfig)
    fetch: FetchConfig = field(default_factory=FetchConfig)
    origins: dict[str, OriginConfig] = field(default_factory=dict)
    images: dict[str, ImageConfig] = field(default_factory=dict)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    # Said once at start (and at a reload): problems that do not stop the service, such as
    # a world-readable file holding secrets.
    warnings: tuple[str, ...] = ()


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "isocache"


def default_state_dir() -> Path:
    """Where relative file origins ("file:NAME/") live: systemd's StateDirectory=, else
    $XDG_STATE_HOME/isocache, else ~/.local/state/isocache. Never under the cache
    directory: diskcache deletes files there that it does not know."""
    systemd = os.environ.get("STATE_DIRECTORY")
    if systemd:
        return Path(systemd.split(":")[0])
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    return Path(base) / "isocache"


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate the TOML file at `path`. Raises ConfigError."""
    source = os.fspath(path)
    try:
        with open(source, "rb") as file:
            data = tomllib.load(file)
    except OSError as exc:
        raise ConfigError(source, "(file)", exc.strerror or str(exc)) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, "(toml)", str(exc)) from exc
    config = parse_config(data, source, Path(source).resolve().parent)
    secrets = _inline_secrets(data)
    if secrets and _world_readable(source):
        warning = (
            f"config-world-readable file={source} keys={','.join(secrets)}: any local user can "
            "read these secrets; chmod o-r the file, or move them to token_file/password_file "
            "(under systemd: LoadCredential=, see docs/install.md)"
        )
        config = dataclasses.replace(config, warnings=(*config.warnings, warning))
    return config


_SECRET_KEYS = ("password", "aws_secret_access_key", "application_credential_secret")


def _inline_secrets(data: dict[str, Any]) -> list[str]:
    """Dotted keys of the secrets written in the config itself (not in a *_file)."""
    found = []
    admin = data.get("admin")
    if isinstance(admin, dict) and "token" in admin:
        found.append("admin.token")
    origins = data.get("origins")
    for name, table in origins.items() if isinstance(origins, dict) else ():
        if isinstance(table, dict):
            found += [f"origins.{name}.{key}" for key in _SECRET_KEYS if key in table]
            if urlsplit(str(table.get("url", ""))).password:
                found.append(f"origins.{name}.url")
    return found


def _world_readable(path: str) -> bool:
    try:
        return bool(os.stat(path).st_mode & 0o004)
    except OSError:
        return False


def parse_config_text(text: str, source: str = "<string>", base_dir: Path | None = None) -> Config:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, "(toml)", str(exc)) from exc
    return parse_config(data, source, base_dir)


class _Table:
    """Typed access to one TOML table that remembers which keys were read."""

    def __init__(self, source: str, prefix: str, data: Any) -> None:
        self.source = source
        self.prefix = prefix
        if not isinstance(data, dict):
            raise ConfigError(source, prefix, "expected a table")
        self.data: dict[str, Any] = data
        self.used: set[str] = set()

    def error(self, key: str, message: str) -> ConfigError:
        return ConfigError(self.source, f"{self.prefix}.{key}" if key else self.prefix, message)

    def get(self, key: str, kind: type, expected: str, default: Any = None) -> Any:
        self.used.add(key)
        if key not in self.data:
            return default
        value = self.data[key]
        # bool is a subclass of int: a TOML true must not pass as a number, nor 1 as a bool.
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self.error(key, f"expected {expected}, got {type(value).__name__}")
        return value

    def size(self, key: str, default: int) -> int:
        text = self.get(key, str, 'a string like "20GiB"')
        if text is None:
            return default
        try:
            return parse_size(text)
        except ValueError as exc:
            raise self.error(key, str(exc)) from None

    def duration(self, key: str, default: float) -> float:
        text = self.get(key, str, 'a string like "60s"')
        if text is None:
            return default
        try:
            return parse_duration(text)
        except ValueError as exc:
            raise self.error(key, str(exc)) from None

    def integer(self, key: str, default: int, low: int, high: int) -> int:
        value: int = self.get(key, int, "an integer", default)
        if not low <= value <= high:
            raise self.error(key, f"must be between {low} and {high}")
        return value

    def choice(self, key: str, default: str, choices: tuple[str, ...]) -> str:
        value: str = self.get(key, str, "a string", default)
        if value not in choices:
            raise self.error(key, f"must be one of {', '.join(choices)}")
        return value

    def finish(self) -> None:
        for key in self.data:
            if key not in self.used:
                raise self.error(key, "unknown key")


def parse_config(data: dict[str, Any], source: str, base_dir: Path | None = None) -> Config:
    """Validate parsed TOML. A relative cache.dir is taken relative to `base_dir`."""
    root = _Table(source, "", data)
    root.prefix = ""
    for key in data:
        if key not in ("server", "cache", "admin", "fetch", "origins", "images", "cluster"):
            raise ConfigError(source, key, "unknown table")
    server = _server(_Table(source, "server", data.get("server", {})))
    cache = _cache(_Table(source, "cache", data.get("cache", {})), base_dir)
    admin = _admin(_Table(source, "admin", data.get("admin", {})), base_dir)
    fetch = _fetch(_Table(source, "fetch", data.get("fetch", {})))
    cluster = _cluster(_Table(source, "cluster", data.get("cluster", {})), base_dir)
    origins = {
        name: _origin(name, table, base_dir)
        for name, table in _named_tables(source, "origins", data.get("origins", {}))
    }
    images = {
        name: _image(name, table)
        for name, table in _named_tables(source, "images", data.get("images", {}))
    }
    for name, origin in origins.items():
        problem = path_problem(origin.url)
        if problem is not None:
            raise ConfigError(source, f"origins.{name}.url", f"URL refused: {problem}")
    for name, image in images.items():
        # Any image URL, under an origin or not: an origin may resolve what it names to
        # somewhere else (dot segments, encoded slashes).
        problem = path_problem(image.url)
        if problem is not None:
            raise ConfigError(source, f"images.{name}.url", f"URL refused: {problem}")
        scheme = urlsplit(image.url).scheme.lower()
        if scheme not in ("http", "https") and not any(
            is_under(image.url, origin.url) for origin in origins.values()
        ):
            raise ConfigError(
                source,
                f"images.{name}.url",
                f"{scheme} images must lie under a configured origin, which holds the credentials",
            )
    return Config(source, server, cache, admin, fetch, origins, images, cluster)


def _server(table: _Table) -> ServerConfig:
    listen = table.get("listen", str, 'a string like "127.0.0.1:8080"', "127.0.0.1:8080")
    match = _LISTEN.fullmatch(listen)
    if not match or int(match.group(3)) > 65535:
        raise table.error("listen", f"bad address {listen!r}: expected HOST:PORT or [IPv6]:PORT")
    config = ServerConfig(
        host=match.group(1) or match.group(2),
        port=int(match.group(3)),
        keepalive=table.choice("keepalive", "auto", _KEEPALIVE),
        log_level=table.choice("log_level", "info", _LOG_LEVELS),
        sendfile=table.get("sendfile", bool, "true or false", True),
        access_log=table.choice("access_log", "debug", ("debug", "info", "off")),
    )
    table.finish()
    return config


def _cache(table: _Table, base_dir: Path | None) -> CacheConfig:
    directory_text = table.get("dir", str, "a path")
    if directory_text is None:
        directory = default_cache_dir()
    else:
        directory = Path(directory_text).expanduser()
        if not directory.is_absolute() and base_dir is not None:
            directory = base_dir / directory
    chunk_size = table.size("chunk_size", MiB)
    if chunk_size & (chunk_size - 1) or not 64 * 1024 <= chunk_size <= 16 * MiB:
        raise table.error("chunk_size", "must be a power of two from 64KiB to 16MiB")
    size_limit = table.size("size_limit", 20 * 1024 * MiB)
    if size_limit < 8 * chunk_size:
        raise table.error("size_limit", "must hold at least 8 chunks")
    revalidate = table.duration("revalidate", 60.0)
    table.finish()
    return CacheConfig(directory, size_limit, chunk_size, revalidate)


def _admin(table: _Table, base_dir: Path | None) -> AdminConfig:
    token = _secret(table, "token", base_dir)
    table.finish()
    if token is not None and not token:
        raise table.error("token", "must not be empty")
    return AdminConfig(token)


def _member_url(table: _Table, key: str, text: str) -> str:
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise table.error(key, f"{text!r} is not an http(s) base URL like http://10.0.0.11:8080")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise table.error(key, f"{text!r}: give scheme, host and port only")
    return f"{parts.scheme}://{parts.netloc.lower()}"


def _cluster(table: _Table, base_dir: Path | None) -> ClusterConfig:
    members = table.get("members", list, "a list of member URLs", [])
    advertise = table.get("advertise", str, "this host's member URL")
    token = _secret(table, "token", base_dir)
    table.finish()
    urls = []
    for text in members:
        if not isinstance(text, str):
            raise table.error("members", "every member must be a URL string")
        urls.append(_member_url(table, "members", text))
    if len(set(urls)) != len(urls):
        raise table.error("members", "a member is listed twice")
    if token is not None and not token:
        raise table.error("token", "must not be empty")
    if not urls:
        if advertise is not None:
            raise table.error("advertise", "needs members")
        return ClusterConfig(token=token)
    if advertise is None:
        raise table.error("advertise", "say which of the members this host is")
    me = _member_url(table, "advertise", advertise)
    if me not in urls:
        raise table.error("advertise", f"{advertise!r} is not one of the members")
    return ClusterConfig(tuple(urls), me, token)


def _fetch(table: _Table) -> FetchConfig:
    config = FetchConfig(
        connect_timeout=table.duration("connect_timeout", 3.0),
        read_timeout=table.duration("read_timeout", 4.0),
        retries=table.integer("retries", 3, 0, 10),
        max_connections=table.integer("max_connections", 16, 1, 256),
        max_connections_per_image=table.integer("max_connections_per_image", 4, 1, 64),
        readahead=table.size("readahead", 8 * MiB),
    )
    table.finish()
    return config


def _named_tables(source: str, kind: str, data: Any) -> list[tuple[str, _Table]]:
    if not isinstance(data, dict):
        raise ConfigError(source, kind, "expected a table of named tables")
    result = []
    for name, value in data.items():
        if not _NAME.fullmatch(name):
            raise ConfigError(source, f"{kind}.{name}", "names are letters, digits, '.', '_', '-'")
        result.append((name, _Table(source, f"{kind}.{name}", value)))
    return result


def _url(table: _Table, *, origin: bool) -> str:
    url: str | None = table.get("url", str, "a URL string")
    if url is None:
        raise table.error("url", "missing (required)")
    shown = redact_url(url)
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise table.error("url", f"unparsable URL {shown!r}") from None
    if parts.scheme.lower() not in SUPPORTED_SCHEMES:
        expected = ", ".join(sorted(SUPPORTED_SCHEMES))
        raise table.error(
            "url", f"unsupported scheme {parts.scheme!r} (expected one of {expected})"
        )
    if parts.scheme.lower() == "file":
        if parts.netloc:
            raise table.error("url", f"a file URL has no host: file:///path, not {shown!r}")
    elif not parts.hostname:
        raise table.error("url", f"URL {shown!r} has no host")
    if parts.fragment:
        raise table.error("url", "a URL must not have a fragment")
    if origin:
        if parts.query:
            raise table.error("url", "an origin URL must not have a query")
        return url if url.endswith("/") else url + "/"
    if parts.path.endswith("/") or not parts.path:
        raise table.error("url", f"an image URL must name a file, not a directory: {shown!r}")
    return url


def _origin(name: str, table: _Table, base_dir: Path | None) -> OriginConfig:
    kind = table.choice("kind", "http", ("http", "glance", "swift"))
    # A Swift origin's `url` is its storage URL: the tree is swift://NAME/PREFIX/.
    url = _swift_url(name, table) if kind == "swift" else _url(table, origin=True)
    scheme = urlsplit(url).scheme.lower()
    if scheme == "swift" and kind != "swift":
        raise table.error("url", 'a Swift origin is kind = "swift" with container and auth_url')
    ca_file = _ca_file(table, base_dir)
    validate = table.choice("validate", "auto", _VALIDATE)
    config = OriginConfig(name, url)
    if scheme == "file" and kind == "http":
        config = _file(name, url, table)
    elif kind == "glance":
        config = _glance(name, url, table, base_dir)
    elif kind == "swift":
        config = _swift(name, url, table, base_dir)
    elif scheme == "sftp":
        config = _sftp(name, url, table, base_dir)
    elif scheme in ("ftp", "ftps"):
        password = _secret(table, "password", base_dir)
        config = OriginConfig(
            name,
            url,
            username=table.get("username", str, "a string"),
            password=password,
            max_sessions=table.integer("max_sessions", 4, 1, 64),
            idle_timeout=table.duration("idle_timeout", 60.0),
        )
    elif scheme == "s3":
        endpoint = table.get("endpoint_url", str, "a URL string")
        if endpoint is not None and urlsplit(endpoint).scheme not in ("http", "https"):
            raise table.error("endpoint_url", "expected an http:// or https:// URL")
        key_id = table.get("aws_access_key_id", str, "a string")
        secret = table.get("aws_secret_access_key", str, "a string")
        if (key_id is None) != (secret is None):
            raise table.error("aws_secret_access_key", "set both keys or neither")
        config = OriginConfig(
            name,
            url,
            endpoint_url=endpoint,
            region=table.get("region", str, "a string"),
            aws_access_key_id=key_id,
            aws_secret_access_key=secret,
            profile=table.get("profile", str, "a string"),
            addressing=table.choice("addressing", "path", _ADDRESSING),
        )
    table.finish()
    return dataclasses.replace(config, ca_file=ca_file, validate=validate)


def _file(name: str, url: str, table: _Table) -> OriginConfig:
    path = urlsplit(url).path
    create = not path.startswith("/")
    if create:  # "file:NAME/": a tree under the state directory, made if missing
        state = default_state_dir().resolve()
        url = "file://" + quote(str(state)) + "/" + path
    return OriginConfig(
        name,
        url,
        cache=table.get("cache", bool, "true or false", True),
        threads=table.integer("threads", 8, 1, 256),
        create_dir=create,
    )


def _ca_file(table: _Table, base_dir: Path | None) -> str | None:
    text = table.get("ca_file", str, "a path")
    if text is None:
        return None
    path = _config_path(text, base_dir)
    try:
        ssl.create_default_context(cafile=str(path))
    except OSError as exc:
        raise table.error("ca_file", f"cannot read {path}: {exc.strerror}") from None
    except ssl.SSLError as exc:
        raise table.error("ca_file", f"{path} holds no usable PEM certificate: {exc}") from None
    return str(path)


def _glance(name: str, url: str, table: _Table, base_dir: Path | None) -> OriginConfig:
    if urlsplit(url).scheme.lower() not in ("http", "https"):
        raise table.error("url", "a Glance endpoint is an http:// or https:// URL")
    config = OriginConfig(name, url, kind="glance", **_keystone(table, base_dir))
    with_password = config.username is not None and config.password is not None
    with_app = config.application_credential_id and config.application_credential_secret
    if not (with_password or with_app):
        raise table.error(
            "password",
            "Glance needs username and password, or application_credential_id and _secret",
        )
    return config


def _keystone(table: _Table, base_dir: Path | None) -> dict[str, Any]:
    """The OpenStack credentials (Glance, Swift) as OriginConfig fields: the keys, else the
    `cloud`'s entry in clouds.yaml."""
    cloud = _cloud_auth(table, table.get("cloud", str, "a cloud name from clouds.yaml"))
    auth_url = table.get("auth_url", str, "a URL string") or cloud.get("auth_url")
    if auth_url is None or urlsplit(auth_url).scheme not in ("http", "https"):
        raise table.error(
            "auth_url", "required: the Keystone v3 URL, e.g. https://keystone:5000/v3"
        )
    password = _secret(table, "password", base_dir)

    def pick(key: str, default: str | None = None) -> str | None:
        value = table.get(key, str, "a string")
        found = value if value is not None else cloud.get(key)
        return found if isinstance(found, str) else default

    return {
        "auth_url": auth_url.rstrip("/"),
        "username": pick("username"),
        "password": password if password is not None else pick("password"),
        "project_name": pick("project_name"),
        "user_domain_name": pick("user_domain_name", "Default") or "Default",
        "project_domain_name": pick("project_domain_name", "Default") or "Default",
        "application_credential_id": pick("application_credential_id"),
        "application_credential_secret": pick("application_credential_secret"),
    }


def _swift_url(name: str, table: _Table) -> str:
    """swift://NAME/PREFIX/: the origin's tree, under which its images lie."""
    prefix = table.get("prefix", str, "a string", "").strip("/")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in prefix):
        raise table.error("prefix", "must not hold control characters")
    url = f"swift://{name}/" + (quote(prefix, safe=_PREFIX_SAFE) + "/" if prefix else "")
    problem = path_problem(url)
    if problem is not None:
        raise table.error("prefix", f"refused: {problem}")
    return url


def _swift(name: str, url: str, table: _Table, base_dir: Path | None) -> OriginConfig:
    keys = _keystone(table, base_dir)
    auth_path = urlsplit(keys["auth_url"]).path.rstrip("/")
    if not auth_path.endswith(("/v3", "/v1.0")):
        raise table.error(
            "auth_url",
            "expected Keystone v3 (https://keystone:5000/v3) or TempAuth (.../auth/v1.0)",
        )
    container = table.get("container", str, "a string")
    if not container or "/" in container or len(container) > 256:
        raise table.error("container", "required: a container name (no '/')")
    storage_url = table.get("url", str, "a URL string")
    if storage_url is not None and urlsplit(storage_url).scheme not in ("http", "https"):
        raise table.error("url", "the storage URL is an http:// or https:// URL")
    config = OriginConfig(
        name,
        url,
        kind="swift",
        container=container,
        storage_url=storage_url.rstrip("/") if storage_url else None,
        region=table.get("region", str, "a string"),
        **keys,
    )
    if config.password is None and not config.application_credential_secret:
        raise table.error("password", "Swift needs a password or an application credential")
    if auth_path.endswith("/v1.0") and config.username is None:
        raise table.error("username", 'TempAuth needs the user as "account:user"')
    return config


def _sftp(name: str, url: str, table: _Table, base_dir: Path | None) -> OriginConfig:
    parts = urlsplit(url)
    if parts.password is not None:
        raise table.error("url", "put the password in password or password_file, not the URL")
    username = table.get("username", str, "a string") or (
        unquote(parts.username) if parts.username else None
    )
    if not username:
        raise table.error("username", 'required: in the URL (sftp://user@host/) or as "username"')
    password = _secret(table, "password", base_dir)
    key_file = _readable(table, "private_key_file", base_dir)
    if key_file is None and password is None:
        raise table.error("private_key_file", "set private_key_file, password or password_file")
    known_hosts = _readable(table, "known_hosts", base_dir)
    if known_hosts is None:
        raise table.error(
            "known_hosts",
            "required: a known_hosts file holding the server's host key "
            "(ssh-keyscan -p PORT HOST, checked by hand); unknown hosts are refused",
        )
    return OriginConfig(
        name,
        url,
        username=username,
        password=password,
        private_key_file=key_file,
        known_hosts=known_hosts,
        max_sessions=table.integer("max_sessions", 4, 1, 64),
        idle_timeout=table.duration("idle_timeout", 60.0),
    )


def _readable(table: _Table, key: str, base_dir: Path | None) -> str | None:
    """The path at `key` (relative to the config file), checked to be a readable file."""
    text = table.get(key, str, "a path")
    if text is None:
        return None
    path = _config_path(text, base_dir)
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise table.error(key, f"cannot read {path}: {exc.strerror}") from None
    return str(path)


def _cloud_auth(table: _Table, cloud: str | None) -> dict[str, Any]:
    """The `auth` section of a cloud in clouds.yaml (openstacksdk's search order)."""
    if cloud is None:
        return {}
    import yaml  # only needed for this key

    candidates = [
        os.environ.get("OS_CLIENT_CONFIG_FILE"),
        "clouds.yaml",
        os.path.expanduser("~/.config/openstack/clouds.yaml"),
        "/etc/openstack/clouds.yaml",
    ]
    for candidate in filter(None, candidates):
        try:
            with open(candidate) as file:
                data = yaml.safe_load(file)
        except FileNotFoundError:
            continue
        except (OSError, yaml.YAMLError) as exc:
            raise table.error("cloud", f"cannot read {candidate}: {type(exc).__name__}") from None
        clouds = data.get("clouds") if isinstance(data, dict) else None
        entry = clouds.get(cloud) if isinstance(clouds, dict) else None
        if isinstance(entry, dict):
            auth = entry.get("auth")
            return auth if isinstance(auth, dict) else {}
    raise table.error("cloud", f"no cloud named {cloud!r} in any clouds.yaml")


def _config_path(text: str, base_dir: Path | None) -> Path:
    """A path from the config: relative ones are relative to the config file's directory."""
    path = Path(text).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    return path


def _secret(table: _Table, key: str, base_dir: Path | None) -> str | None:
    """`key` given inline, or read from the file `key`_file names; not both."""
    inline: str | None = table.get(key, str, "a string")
    file_key = key + "_file"
    file = table.get(file_key, str, "a path")
    if file is None:
        return inline
    if inline is not None:
        raise table.error(file_key, f"set {key} or {file_key}, not both")
    return _read_secret(table, file_key, file, base_dir)


def _read_secret(table: _Table, key: str, text: str, base_dir: Path | None) -> str:
    """A secret from a file. A relative path is looked up first in systemd's
    $CREDENTIALS_DIRECTORY (LoadCredential=NAME:PATH makes NAME readable there by the
    service's user alone, even under DynamicUser=), then next to the config file."""
    path = _config_path(text, base_dir)
    credentials = os.environ.get("CREDENTIALS_DIRECTORY")
    if credentials and not Path(text).expanduser().is_absolute():
        candidate = Path(credentials) / text
        if candidate.exists():
            path = candidate
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise table.error(key, f"cannot read {path}: {exc.strerror}") from None


def _image(name: str, table: _Table) -> ImageConfig:
    url = _url(table, origin=False)
    sha256 = table.get("sha256", str, "a hex string")
    if sha256 is not None and not _SHA256.fullmatch(sha256):
        raise table.error("sha256", "expected 64 hexadecimal digits")
    pin = table.get("pin", bool, "true or false", False)
    table.finish()
    return ImageConfig(name, url, sha256.lower() if sha256 else None, pin)
