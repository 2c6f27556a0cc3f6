"""Command line: `isocache serve [--config FILE]`, and admin commands that talk to a running
service: prewarm, status, evict, pin, unpin, verify, register, unregister, attach, detach.

A bad config exits with status 2 and one line naming the file and the dotted key; a service
that cannot start (its port in use) exits 1 with one line; so does an admin command that
fails. kill -HUP reloads origins, images and the admin token from the config file.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import re
import sys

from isocache import __version__
from isocache.config import Config, ConfigError, load_config, parse_config

EXIT_CONFIG = 2
EXIT_USAGE = 2
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="isocache", description=__doc__)
    parser.add_argument("--version", action="version", version=f"isocache {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the caching proxy")
    serve.add_argument(
        "--config", "-c", help="path of the TOML config file (default: no origins, loopback)"
    )
    serve.add_argument("--listen", help="HOST:PORT to listen on, overriding [server] listen")
    serve.add_argument(
        "--access-log",
        action="store_true",
        help='log one line per request (same as [server] access_log = "info")',
    )

    def admin(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument(
            "--server",
            help="isocache's address, HOST:PORT or a URL (default: the config's listen address, "
            "else 127.0.0.1:8080)",
        )
        sub.add_argument(
            "--config", "-c", help="take the address and [admin] token/token_file from this config"
        )
        sub.add_argument(
            "--token", help="admin token (default: $ISOCACHE_TOKEN, else the --config's)"
        )
        return sub

    prewarm = admin("prewarm", "fetch a whole image into the cache")
    prewarm.add_argument("name")
    prewarm.add_argument("--wait", action="store_true", help="follow it; exit 0 only when cached")
    status = admin("status", "list images and how much of each is cached")
    status.add_argument("--json", action="store_true")
    for name, text in [
        ("evict", "drop an image's chunks"),
        ("pin", "never evict an image"),
        ("unpin", "let an image be evicted again"),
        ("unregister", "remove an image added with register (its chunks age out)"),
    ]:
        admin(name, text).add_argument("name")
    verify = admin("verify", "re-check an image's chunks and its sha256")
    verify.add_argument("name")
    verify.add_argument("--json", action="store_true", help="print the API's answer as JSON")
    attach = admin("attach", "attach an image's current version for a VM; print its URL")
    attach.add_argument("name", help="an image name, or /origins/NAME/<path>")
    attach.add_argument("--wait", action="store_true", help="exit 0 only once it is cached")
    attach.add_argument("--libvirt", action="store_true", help="also print a libvirt <disk>")
    admin("detach", "release an attachment (its URL serves what stays cached)").add_argument("id")
    register = admin("register", "add an image at run time (under a configured origin)")
    register.add_argument("name")
    register.add_argument("url")
    register.add_argument("--sha256")
    register.add_argument("--pin", action="store_true")
    register.add_argument(
        "--no-check", action="store_true", help="do not check that the origin serves the URL"
    )
    return parser


def _server(args: argparse.Namespace, config: Config | None) -> str:
    if args.server:
        server = str(args.server)
        # HOST:PORT (as in [server] listen) or a URL.
        return server if "://" in server else f"http://{server}/"
    if config is not None:
        host = f"[{config.server.host}]" if ":" in config.server.host else config.server.host
        if host in ("0.0.0.0", "[::]"):  # a wildcard listen address is reached on loopback
            host = "127.0.0.1" if host == "0.0.0.0" else "[::1]"
        return f"http://{host}:{config.server.port}/"
    return "http://127.0.0.1:8080/"


def _token(args: argparse.Namespace, config: Config | None) -> str | None:
    token = args.token or os.environ.get("ISOCACHE_TOKEN")
    if token:
        return str(token)
    return config.admin.token if config is not None else None


def _admin(args: argparse.Namespace) -> int:
    from isocache.client import (
        AdminClient,
        AdminClientError,
        libvirt_disk,
        print_attachments,
        print_status,
        register_checked,
        verify_sentence,
        wait_for_job,
    )

    name = getattr(args, "name", "")
    path_target = args.command == "attach" and name.startswith("/origins/")
    if name and not path_target and not _NAME.fullmatch(name):
        print(
            f"isocache: bad image name {name!r}: names are letters, digits, '.', '_' and "
            "'-', starting with a letter or digit (at most 128)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    try:
        config = load_config(args.config) if args.config else None
        client = AdminClient(_server(args, config), _token(args, config))
        if args.command == "status":
            images = client.call("GET", "api/images")
            attachments = client.call("GET", "api/attachments")
            if args.json:
                print(json.dumps({"images": images, "attachments": attachments}, indent=2))
            else:
                print_status(images)
                if attachments:
                    print()
                    print_attachments(attachments)
        elif args.command == "attach":
            target = {"path": name} if name.startswith("/origins/") else {"image": name}
            attachment = client.call("POST", "api/attachments", target)
            if args.wait and attachment["state"] != "ready" and attachment["prewarm_job"]:
                wait_for_job(client, attachment["prewarm_job"])
                attachment = client.call("GET", f"api/attachments/{attachment['id']}")
            print(attachment["url"])
            if args.libvirt:
                print(libvirt_disk(attachment["url"]))
            if args.wait and attachment["state"] != "ready":
                raise AdminClientError(
                    f"attachment {attachment['id']} is {attachment['state']}: "
                    f"{attachment.get('error') or 'not every chunk is cached'}"
                )
            print(f"attachment {attachment['id']} ({attachment['state']})", file=sys.stderr)
        elif args.command == "detach":
            detached = client.call("DELETE", f"api/attachments/{args.id}")
            print(f"detached {detached['id']}; its URL serves what stays cached, then 410")
        elif args.command == "prewarm":
            job = client.call("POST", "api/prewarm", {"image": name})
            if not args.wait:
                print(job["id"])
                return 0
            final = wait_for_job(client, job["id"])
            if final["state"] != "done":
                raise AdminClientError(
                    f"prewarm {final['state']}: {final.get('error') or ''}".strip()
                )
        elif args.command == "evict":
            evicted = client.call("DELETE", f"api/images/{name}/cache")["evicted_chunks"]
            print(f"evicted {evicted} chunks")
        elif args.command == "pin":
            image = client.call("PUT", f"api/images/{name}/pin")
            print(f"pinned {name}: its cached version ({_size_text(image)}) is never evicted")
        elif args.command == "unpin":
            client.call("DELETE", f"api/images/{name}/pin")
            print(f"unpinned {name}: its chunks may be evicted again")
        elif args.command == "unregister":
            client.call("DELETE", f"api/images/{name}")
            print(f"unregistered {name}: its cached chunks are evicted as space is needed")
        elif args.command == "verify":
            result = client.call("POST", f"api/images/{name}/verify")
            print(json.dumps(result) if args.json else verify_sentence(result))
            if result["verified"] is False or result["chunks_dropped"]:
                return 1
        elif args.command == "register":
            print(register_checked(client, name, args.url, args.sha256, args.pin, args.no_check))
    except AdminClientError as exc:
        print(f"isocache: {exc}", file=sys.stderr)
        return 1
    except ConfigError as exc:
        print(f"isocache: config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    return 0


def _size_text(image: dict[str, object]) -> str:
    size = image.get("size")
    return f"{size} bytes" if isinstance(size, int) else "size not known yet"


def _serve_config(args: argparse.Namespace) -> Config:
    """The config file's, or safe defaults without one (loopback, cache under XDG), with
    --listen applied."""
    if args.config is not None:
        config = load_config(args.config)
    else:
        config = parse_config({}, "(no --config)")
    if args.listen is not None:
        listen = parse_config({"server": {"listen": args.listen}}, "--listen").server
        server = dataclasses.replace(config.server, host=listen.host, port=listen.port)
        config = dataclasses.replace(config, server=server)
    if args.access_log:
        config = dataclasses.replace(
            config, server=dataclasses.replace(config.server, access_log="info")
        )
    return config


def _under_journald() -> bool:
    """True when stderr is systemd's journal stream ($JOURNAL_STREAM is "DEV:INODE" of it)."""
    expected = os.environ.get("JOURNAL_STREAM", "")
    try:
        stat = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return expected == f"{stat.st_dev}:{stat.st_ino}"


class _JournalFormatter(logging.Formatter):
    """journald stamps each line itself: no time here, and the level as a syslog prefix
    ("<4>"), which it reads as the priority (SyslogLevelPrefix=yes, its default)."""

    _PRIORITY = {"DEBUG": 7, "INFO": 6, "WARNING": 4, "ERROR": 3, "CRITICAL": 2}

    def format(self, record: logging.LogRecord) -> str:
        return f"<{self._PRIORITY.get(record.levelname, 6)}>{super().format(record)}"


def _setup_logging(config: Config) -> None:
    level = config.server.log_level.upper()
    if config.server.access_log == "info" and level in ("WARNING", "ERROR"):
        logging.getLogger("isocache.access").setLevel(logging.INFO)
    handler = logging.StreamHandler(sys.stderr)
    if _under_journald():
        handler.setFormatter(_JournalFormatter("%(levelname)s %(name)s %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        try:
            config = _serve_config(args)
        except ConfigError as exc:
            print(f"isocache: config error: {exc}", file=sys.stderr)
            return EXIT_CONFIG
        _setup_logging(config)
        if args.config is None:
            logging.getLogger("isocache").warning(
                "no-config: serving no origins, cache in %s. To add an origin, start from "
                'config.example.toml: [origins.NAME] url = "https://host/isos/" or '
                '"file:///srv/isos/", then isocache serve --config FILE',
                config.cache.dir,
            )
        from isocache.service import StartupError, run

        reload = (lambda: _serve_config(args)) if args.config is not None else None
        try:
            asyncio.run(run(config, reload))
        except ConfigError as exc:  # found at start-up: the cache directory
            print(f"isocache: config error: {exc}", file=sys.stderr)
            return EXIT_CONFIG
        except StartupError as exc:
            print(f"isocache: {exc}", file=sys.stderr)
            return 1
        return 0
    return _admin(args)


if __name__ == "__main__":
    sys.exit(main())
