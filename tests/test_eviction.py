"""S3-FIFO as the store uses it: one-off scans pass through the small FIFO; chunks read again
stay; pinned chunks are never chosen; victims free what was asked."""

from __future__ import annotations

from isocache.eviction import S3Fifo

CHUNK = 1


def _keys(prefix: str, count: int) -> list[str]:
    return [f"{prefix}:{n}" for n in range(count)]


def _evict_for(policy: S3Fifo, stored: set[str], key: str, pinned: set[str] = frozenset()) -> None:  # type: ignore[assignment]
    """Store `key` in a cache of policy.capacity chunks, evicting first when full."""
    if len(stored) + 1 > policy.capacity:
        victims = policy.victims(len(stored) + 1 - policy.capacity, keep=lambda k: k in pinned)
        stored.difference_update(victims)
    policy.insert(key, CHUNK)
    stored.add(key)


def test_a_hot_image_survives_a_scan_larger_than_the_cache() -> None:
    policy, stored = S3Fifo(24), set[str]()
    hot = _keys("hot", 8)
    for key in hot:  # fetched once, then read by three VMs
        _evict_for(policy, stored, key)
        for _ in range(3):
            policy.access(key)
    for key in _keys("scan", 64):  # one sequential read, each chunk read once
        _evict_for(policy, stored, key)
    assert set(hot) <= stored
    assert len(stored) <= 24


def test_plain_fifo_order_without_second_reads_and_ghosts_return_to_main() -> None:
    policy, stored = S3Fifo(10), set[str]()
    first = _keys("a", 10)
    for key in first:
        _evict_for(policy, stored, key)
    _evict_for(policy, stored, "b:0")
    assert "a:0" not in stored  # the oldest one-off chunk went first
    # Fetched again soon after: remembered in the ghost FIFO, so it goes to main.
    _evict_for(policy, stored, "a:0")
    for key in _keys("c", 9):
        _evict_for(policy, stored, key)
    assert "a:0" in stored


def test_pinned_chunks_are_never_victims_and_victims_stop_when_nothing_may_go() -> None:
    policy = S3Fifo(4)
    pinned = set(_keys("p", 4))
    for key in pinned:
        policy.insert(key, CHUNK)
    assert policy.victims(2, keep=lambda key: key in pinned) == []
    policy.insert("x:0", CHUNK)
    assert policy.victims(2, keep=lambda key: key in pinned) == ["x:0"]
    assert len(policy) == 4


def test_remove_and_demote() -> None:
    policy = S3Fifo(100)
    for key in _keys("a", 3):
        policy.insert(key, 10)
        policy.access(key)
        policy.access(key)
    policy.remove("a:1")
    assert "a:1" not in policy and len(policy) == 2
    policy.demote("a:2")  # outdated version: the next to go, whatever it was read
    assert policy.victims(10, keep=lambda key: False) == ["a:2"]


def test_fifos_stay_bounded_when_chunks_leave_without_eviction() -> None:
    """A cache that never fills never pops its FIFOs: chunks dropped and fetched again
    leave entries behind, which are compacted away (a key kept once, at its newest place)."""
    policy = S3Fifo(10**9)
    for _ in range(100):
        for key in _keys("a", 100):
            policy.insert(key, CHUNK)
        for key in _keys("a", 100):
            policy.remove(key)
    for key in _keys("a", 100):
        policy.insert(key, CHUNK)
    entries = len(policy._small) + len(policy._main) + len(policy._demoted)
    assert len(policy) == 100 and entries <= 2 * 100 + 4096
    assert policy.victims(100, keep=lambda key: False) == _keys("a", 100)
