"""Whole-image verification: once every chunk of an image version is cached, hash it and
compare with the digest it should have (an image's configured sha256, or the digest its
origin vouches for, such as Glance's os_hash_value). A mismatch drops the image's chunks
and makes every later request for that version a 502 naming both digests."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import sqlite3

from isocache.errors import OriginError
from isocache.image import ImageVersion
from isocache.lru import LruDict
from isocache.state import ServiceState
from isocache.store import ChunkStore
from isocache.urls import redact_url

log = logging.getLogger(__name__)

_READ = 4 * 1024 * 1024
RESULTS_KEPT = 4096
_STATE = "verified/"  # + identity: saved when a version matched, so a restart remembers it


def expected_digest(version: ImageVersion) -> tuple[str, str] | None:
    if version.ref.sha256:
        return ("sha256", version.ref.sha256)
    return version.meta.digest


class Verifier:
    """Use on the event loop; hashing runs in a thread."""

    def __init__(self, store: ChunkStore, state: ServiceState) -> None:
        self._store = store
        self._state = state  # where verified versions are remembered across restarts
        # Bounded: a forgotten result is hashed again when the version is complete again.
        self._results: LruDict[str, bool] = LruDict(RESULTS_KEPT)
        self._failures: LruDict[str, str] = LruDict(RESULTS_KEPT)
        self._running: dict[str, asyncio.Task[bool | None]] = {}
        self._recheck: set[str] = set()

    async def close(self) -> None:
        tasks = list(self._running.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def restore(self) -> None:
        """Take back the versions an earlier run verified, for those that still have chunks
        (so `status` says the same before and after a restart); forget the others."""
        for key in await self._state.load_states(_STATE):
            identity = key[len(_STATE) :]
            if self._store.chunk_count(identity):
                self._results[identity] = True
            else:
                await self._state.delete_state(key)

    def result(self, identity: str) -> bool | None:
        """True or False once verified, None when not (yet) verified. A success says nothing
        once none of the version's chunks are cached (None); a failure stands until an evict
        or a verify clears it, since requests for the version fail until then."""
        result = self._results.get(identity)
        if result and not self._store.chunk_count(identity):
            return None
        return result

    def forget(self, identity: str) -> None:
        """Drop what is known of this version (after an evict or an admin's verify), so a
        failure is not for ever: the next complete copy is hashed again."""
        self._results.pop(identity, None)
        self._failures.pop(identity, None)

    def check(self, version: ImageVersion) -> None:
        """Raise the recorded mismatch of this version, if it had one."""
        failure = self._failures.get(version.identity)
        if failure is not None:
            raise OriginError(failure)

    def chunk_stored(self, version: ImageVersion) -> None:
        """Called after each stored chunk: start verifying when the image became complete."""
        identity = version.identity
        if identity in self._results or expected_digest(version) is None:
            return
        if identity in self._running:
            # It may end incomplete (a damaged chunk dropped) while this chunk completed
            # the image again: look once more when it ends.
            self._recheck.add(identity)
            return
        if self._store.chunk_count(identity) < version.chunk_count(self._store.chunk_size):
            return
        task = asyncio.create_task(self._verify(version), name=f"verify-{identity}")
        self._running[identity] = task
        task.add_done_callback(lambda _: self._verified(version))

    def _verified(self, version: ImageVersion) -> None:
        self._running.pop(version.identity, None)
        if version.identity in self._recheck:
            self._recheck.discard(version.identity)
            self.chunk_stored(version)

    async def verify(self, version: ImageVersion, *, again: bool = False) -> bool | None:
        """The verification result of this version, hashing it if that was not done yet
        (or `again`); None when it is not complete or has no expected digest."""
        running = self._running.get(version.identity)
        if running is not None:
            await asyncio.shield(running)
        if not again and version.identity in self._results:
            return self._results[version.identity]
        return await self._verify(version)

    async def _verify(self, version: ImageVersion) -> bool | None:
        expected = expected_digest(version)
        count = version.chunk_count(self._store.chunk_size)
        if expected is None or self._store.chunk_paths(version.identity, count) is None:
            return None
        # Chunks from an earlier run may be torn or damaged on disk: check their crc32 first
        # (a bad one is dropped and fetched again), so a damaged file is a refetch, never a
        # digest mismatch held against the image.
        _, dropped = await self._store.verify_chunks(version.identity, unverified_only=True)
        paths = self._store.chunk_paths(version.identity, count)
        if dropped or paths is None:
            return None
        algo, want = expected
        try:
            got = await asyncio.to_thread(_hash_files, algo, paths)
        except OSError:
            return None  # a chunk was evicted meanwhile: verified when complete again
        ok = got == want
        self._results[version.identity] = ok
        if ok:
            log.info(
                "verify-ok image=%s identity=%s %s=%s", _name(version), version.identity, algo, got
            )
            try:
                await self._state.save_state(_STATE + version.identity, True)
            except (OSError, sqlite3.Error) as exc:  # a full disk: known until a restart only
                log.warning("verify-save-failed image=%s error=%s", _name(version), exc)
            return True
        message = (
            f"image failed verification: {algo} of the data is {got}, "
            f"but {want} was expected; its cached chunks were dropped"
        )
        self._failures[version.identity] = message
        log.error(
            "verify-failed image=%s identity=%s %s", _name(version), version.identity, message
        )
        await self._store.drop_image(version.identity)
        return False


def _name(version: ImageVersion) -> str:
    """What an operator calls the image: its name, else its (redacted) URL."""
    return version.ref.name or redact_url(version.ref.url)


def _hash_files(algo: str, paths: list[str]) -> str:
    digest = hashlib.new(algo)
    for path in paths:
        with open(path, "rb") as file:
            while data := file.read(_READ):
                digest.update(data)
    return digest.hexdigest()
