"""Per-request counters that lower layers fill in and the access log reads: a context
variable, so the reader needs no reference to the HTTP front. Leaf module."""

from __future__ import annotations

import contextvars
from dataclasses import dataclass


@dataclass(slots=True)
class RequestStats:
    hits: int = 0
    misses: int = 0
    body_bytes: int | None = None  # set by responses that stream image bytes

    @property
    def served(self) -> str:
        if self.hits and self.misses:
            return "mixed"
        return "hit" if self.hits else "miss" if self.misses else "-"


current_stats: contextvars.ContextVar[RequestStats | None] = contextvars.ContextVar(
    "isocache_request_stats", default=None
)
