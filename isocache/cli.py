"""Command line: `isocache serve [--config FILE]`, and admin commands that talk to a running
service: prewarm, status, evict, pin, unpin, verify, register.

A bad config exits with status 2 and one line naming the file and the dotted key; an admin
command that fails exits 1 with one line.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import sys

from isocache import __version__
from isocache.config import Config, ConfigError, load_config, parse_config

EXIT_CONFIG = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="isocache", description=__doc__)
    parser.add_argument("--version", action="version", version=f"isocache {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the caching proxy")
    serve.add_argument(
        "--config", "-c", help="path of the TOML config file (default: no origins, loopback)"
    )
    serve.add_argument("--listen", help="HOST:PORT to listen on, overriding [server] listen")

    def admin(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument(
            "--server", help="admin API base URL (default: the config's listen address)"
        )
        sub.add_argument("--config", "-c", help="read the default --server from this config")
        sub.add_argument("--token", help="admin token (default: $ISOCACHE_TOKEN)")
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
        ("verify", "re-check an image's chunks and sha256"),
    ]:
        admin(name, text).add_argument("name")
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
    return parser


def _server(args: argparse.Namespace) -> str:
    if args.server:
        return str(args.server)
    if args.config:
        server = load_config(args.config).server
        host = f"[{server.host}]" if ":" in server.host else server.host
        return f"http://{host}:{server.port}/"
    return "http://127.0.0.1:8080/"


def _admin(args: argparse.Namespace) -> int:
    from isocache.client import (
        AdminClient,
        AdminClientError,
        libvirt_disk,
        print_attachments,
        print_status,
        wait_for_job,
    )

    try:
        client = AdminClient(_server(args), args.token or os.environ.get("ISOCACHE_TOKEN"))
        name = getattr(args, "name", "")
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
        elif args.command in ("pin", "unpin"):
            client.call("PUT" if args.command == "pin" else "DELETE", f"api/images/{name}/pin")
        elif args.command == "verify":
            result = client.call("POST", f"api/images/{name}/verify")
            print(json.dumps(result))
            if result["verified"] is False or result["chunks_dropped"]:
                return 1
        elif args.command == "register":
            body = {
                "url": args.url,
                "pin": args.pin,
                **({"sha256": args.sha256} if args.sha256 else {}),
            }
            client.call("PUT", f"api/images/{name}", body)
    except AdminClientError as exc:
        print(f"isocache: {exc}", file=sys.stderr)
        return 1
    except ConfigError as exc:
        print(f"isocache: config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    return 0


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
    return config


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        try:
            config = _serve_config(args)
        except ConfigError as exc:
            print(f"isocache: config error: {exc}", file=sys.stderr)
            return EXIT_CONFIG
        logging.basicConfig(
            level=config.server.log_level.upper(),
            format="%(asctime)s %(levelname)s %(name)s %(message)s",
            stream=sys.stderr,
        )
        if args.config is None:
            logging.getLogger("isocache").warning(
                "no-config: serving no origins, cache in %s. To add an origin, start from "
                'config.example.toml: [origins.NAME] url = "https://host/isos/" or '
                '"file:///srv/isos/", then isocache serve --config FILE',
                config.cache.dir,
            )
        from isocache.service import run

        try:
            asyncio.run(run(config))
        except ConfigError as exc:  # found at start-up: the cache directory
            print(f"isocache: config error: {exc}", file=sys.stderr)
            return EXIT_CONFIG
        return 0
    return _admin(args)


if __name__ == "__main__":
    sys.exit(main())
