"""Command line: `isocache serve --config FILE`.

A bad config exits with status 2 and one line naming the file and the dotted key.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from isocache import __version__
from isocache.config import ConfigError, load_config

EXIT_CONFIG = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="isocache", description=__doc__)
    parser.add_argument("--version", action="version", version=f"isocache {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the caching proxy")
    serve.add_argument("--config", "-c", required=True, help="path of the TOML config file")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        try:
            config = load_config(args.config)
        except ConfigError as exc:
            print(f"isocache: config error: {exc}", file=sys.stderr)
            return EXIT_CONFIG
        logging.basicConfig(
            level=config.server.log_level.upper(),
            format="%(asctime)s %(levelname)s %(name)s %(message)s",
            stream=sys.stderr,
        )
        from isocache.service import run

        asyncio.run(run(config))
        return 0
    return 1


if __name__ == "__main__":
    sys.exit(main())
