"""A mapping that keeps at most a fixed number of entries, dropping the least recently used.

For state keyed by something a client names (a URL, an image version): any client can name
new ones, so such maps must not grow without bound. Plain data; use on one thread.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from typing import Generic, TypeVar, overload

K = TypeVar("K")
V = TypeVar("V")
D = TypeVar("D")


class LruDict(Generic[K, V]):
    """At most `limit` entries; setting or reading an entry makes it the most recent.

    >>> seen = LruDict[str, int](2)
    >>> seen["a"], seen["b"], seen["c"] = 1, 2, 3
    >>> list(seen)
    ['b', 'c']
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.limit = limit
        self._data: OrderedDict[K, V] = OrderedDict()

    def __repr__(self) -> str:
        return f"<LruDict {len(self._data)}/{self.limit}>"

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def __iter__(self) -> Iterator[K]:
        return iter(self._data)

    def __getitem__(self, key: K) -> V:
        value = self._data[key]
        self._data.move_to_end(key)
        return value

    def __setitem__(self, key: K, value: V) -> None:
        self._data[key] = value
        self._data.move_to_end(key)
        while len(self._data) > self.limit:
            self._data.popitem(last=False)

    @overload
    def get(self, key: K) -> V | None: ...
    @overload
    def get(self, key: K, default: D) -> V | D: ...
    def get(self, key: K, default: object = None) -> object:
        if key not in self._data:
            return default
        return self[key]

    @overload
    def pop(self, key: K) -> V | None: ...
    @overload
    def pop(self, key: K, default: D) -> V | D: ...
    def pop(self, key: K, default: object = None) -> object:
        return self._data.pop(key, default)

    def setdefault(self, key: K, value: V) -> V:
        if key in self._data:
            return self[key]
        self[key] = value
        return value
