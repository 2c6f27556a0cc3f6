"""The config module: defaults, every key, and a table of bad configs naming the dotted key."""

from __future__ import annotations

from pathlib import Path

import pytest

from isocache.config import ConfigError, load_config, parse_config_text, redact_url
from isocache.units import GiB, KiB, MiB

ROOT = Path(__file__).resolve().parent.parent


def test_example_config_loads() -> None:
    config = load_config(ROOT / "config.example.toml")
    assert config.server.port == 8080 and config.server.host == "127.0.0.1"
    assert config.cache.size_limit == 20 * GiB and config.cache.chunk_size == MiB
    assert config.origins["alpine"].url == "https://dl-cdn.alpinelinux.org/alpine/"
    assert config.images["alpine"].sha256 is not None
    assert config.origins["local"].scheme == "file"
    # The commented-out kinds (ftpmirror, bucket, glance): tests/test_out_of_box.py


def test_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    config = parse_config_text("")
    assert (config.server.host, config.server.port, config.server.keepalive) == (
        "127.0.0.1",
        8080,
        "auto",
    )
    assert config.cache.dir == tmp_path / "isocache"
    assert (config.cache.size_limit, config.cache.chunk_size, config.cache.revalidate) == (
        20 * GiB,
        MiB,
        60.0,
    )
    assert config.admin.token is None
    assert config.fetch.readahead == 8 * MiB
    assert config.origins == {} and config.images == {}


def test_every_key(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("s3cret\n")
    text = f"""
[server]
listen = "[::1]:9000"
keepalive = "never"
log_level = "debug"
sendfile = false
[cache]
dir = "rel/cache"
size_limit = "1GiB"
chunk_size = "64KiB"
revalidate = "1500ms"
[admin]
token_file = "token"
[fetch]
connect_timeout = "1s"
read_timeout = "2m"
retries = 0
max_connections = 4
max_connections_per_image = 2
readahead = "0B"
[origins.m]
url = "http://127.0.0.1:1/a"
[images.x]
url = "http://127.0.0.1:1/a/x.iso"
sha256 = "{"AB" * 32}"
pin = true
"""
    path = tmp_path / "c.toml"
    path.write_text(text)
    config = load_config(path)
    assert (config.server.host, config.server.port) == ("::1", 9000)
    assert (config.server.keepalive, config.server.log_level, config.server.sendfile) == (
        "never",
        "debug",
        False,
    )
    assert config.cache.dir == tmp_path / "rel/cache"
    assert (config.cache.size_limit, config.cache.chunk_size) == (GiB, 64 * KiB)
    assert config.cache.revalidate == 1.5
    assert config.admin.token == "s3cret"
    assert (config.fetch.read_timeout, config.fetch.retries, config.fetch.readahead) == (120, 0, 0)
    assert config.origins["m"].url == "http://127.0.0.1:1/a/"  # normalised to a directory
    assert config.images["x"].sha256 == "ab" * 32 and config.images["x"].pin


BAD = [
    ("[nonsense]\n", "nonsense"),
    ('[server]\ncolour = "x"\n', "server.colour"),
    ('[cache]\nchunk_sise = "1MiB"\n', "cache.chunk_sise"),
    ('[admin]\nuser = "x"\n', "admin.user"),
    ("[fetch]\nspeed = 1\n", "fetch.speed"),
    ('[origins.o]\nurl = "http://h/"\nuser = "x"\n', "origins.o.user"),
    ('[images.i]\nurl = "http://h/x"\nsha265 = "x"\n', "images.i.sha265"),
    ("[cache]\nsize_limit = 20\n", "cache.size_limit"),
    ("[cache]\nsize_limit = true\n", "cache.size_limit"),
    ('[cache]\nsize_limit = "20GB"\n', "cache.size_limit"),
    ('[cache]\nsize_limit = "1.5MiB"\n', "cache.size_limit"),
    ('[cache]\nsize_limit = "-1MiB"\n', "cache.size_limit"),
    ('[cache]\nsize_limit = "１MiB"\n', "cache.size_limit"),
    ('[cache]\nsize_limit = "1MiB"\n', "cache.size_limit"),  # below 8 chunks
    ('[cache]\nchunk_size = "3MiB"\n', "cache.chunk_size"),
    ('[cache]\nchunk_size = "32KiB"\n', "cache.chunk_size"),
    ('[cache]\nchunk_size = "32MiB"\n', "cache.chunk_size"),
    ('[cache]\nrevalidate = "60"\n', "cache.revalidate"),
    ('[cache]\nrevalidate = "1d"\n', "cache.revalidate"),
    ("[cache]\ndir = 5\n", "cache.dir"),
    ('[server]\nlisten = "127.0.0.1"\n', "server.listen"),
    ('[server]\nlisten = "127.0.0.1:70000"\n', "server.listen"),
    ('[server]\nkeepalive = "sometimes"\n', "server.keepalive"),
    ("[server]\nsendfile = 1\n", "server.sendfile"),
    ("[fetch]\nretries = true\n", "fetch.retries"),
    ("[fetch]\nretries = 11\n", "fetch.retries"),
    ('[fetch]\nmax_connections = "4"\n', "fetch.max_connections"),
    ("[origins.o]\n", "origins.o.url"),
    ('[origins.o]\nurl = "gopher://h/"\n', "origins.o.url"),
    ('[origins.o]\nurl = "http:///x/"\n', "origins.o.url"),
    ('[origins.o]\nurl = "http://h/x/?q=1"\n', "origins.o.url"),
    ('[images.i]\nurl = "http://h/dir/"\n', "images.i.url"),
    ('[images.i]\nurl = "http://h/x"\nsha256 = "abc"\n', "images.i.sha256"),
    ('[images.i]\nurl = "http://h/x"\npin = "yes"\n', "images.i.pin"),
    ('[images."bad name"]\nurl = "http://h/x"\n', "images.bad name"),
    ('[admin]\ntoken = "a"\ntoken_file = "/nonexistent"\n', "admin.token_file"),
    ('[admin]\ntoken_file = "/nonexistent/token"\n', "admin.token_file"),
    ('origins = "x"\n', "origins"),
    ('[origins.o]\nurl = "https://h/"\nca_file = "/nonexistent/ca.pem"\n', "origins.o.ca_file"),
    ('[origins.o]\nurl = "https://h/"\nca_file = "bad.toml"\n', "origins.o.ca_file"),  # no PEM
    ("[cache\n", "(toml)"),
]


@pytest.mark.parametrize(("text", "key"), BAD, ids=[key for _, key in BAD])
def test_bad_config_names_file_and_key(tmp_path: Path, text: str, key: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.key == key
    message = str(caught.value)
    assert message.startswith(f"{path}: {key}: ")
    assert "\n" not in message


def test_password_never_in_errors() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config_text('[images.i]\nurl = "http://user:hunter2@h/dir/"\n')
    assert "hunter2" not in str(caught.value)
    assert "user:***@h" in str(caught.value)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://h/x", "http://h/x"),
        ("http://user@h/x", "http://user@h/x"),
        ("http://user:pw@h:8080/x?y", "http://user:***@h:8080/x?<redacted>"),
        ("ftp://u:p%40ss@h/", "ftp://u:***@h/"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown
