"""Byte and time units, and the parsers for the human forms used in the config.

Leaf module: imports nothing from isocache.
"""

from __future__ import annotations

import re

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
TiB = 1024 * GiB

_SIZE_UNITS = {"B": 1, "KiB": KiB, "MiB": MiB, "GiB": GiB, "TiB": TiB}
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}

# Only ASCII digits: str.isdigit() and int() also accept other scripts' digits.
_SIZE_RE = re.compile(r"([0-9]+)[ ]?([A-Za-z]+)")
_DURATION_RE = re.compile(r"([0-9]+(?:\.[0-9]+)?)[ ]?([a-z]+)")


def parse_size(text: str) -> int:
    """Parse "20GiB", "1MiB", "512 KiB", "4096B" into bytes.

    Raises ValueError naming the accepted units when the text is not one of them.
    """
    match = _SIZE_RE.fullmatch(text.strip())
    if not match or match.group(2) not in _SIZE_UNITS:
        raise ValueError(
            f"bad size {text!r}: expected a whole number and one of B, KiB, MiB, GiB, TiB"
        )
    return int(match.group(1)) * _SIZE_UNITS[match.group(2)]


def parse_duration(text: str) -> float:
    """Parse "60s", "500ms", "5m", "1h", "1.5s" into seconds.

    Raises ValueError naming the accepted units when the text is not one of them.
    """
    match = _DURATION_RE.fullmatch(text.strip())
    if not match or match.group(2) not in _DURATION_UNITS:
        raise ValueError(f"bad duration {text!r}: expected a number and one of ms, s, m, h")
    return float(match.group(1)) * _DURATION_UNITS[match.group(2)]


def format_size(size: int) -> str:
    """Render a byte count with the largest unit that divides it, e.g. 1048576 -> "1MiB"."""
    for unit in ("TiB", "GiB", "MiB", "KiB"):
        factor = _SIZE_UNITS[unit]
        if size and size % factor == 0:
            return f"{size // factor}{unit}"
    return f"{size}B"
