"""The chunk store's in-memory index: which chunks of which image versions are stored, with
their length, crc32, value file, last access and eviction state.

Sized for a million chunks (a 1 TB cache of 1 MiB chunks): no object per chunk, but parallel
arrays per image version, sorted by chunk index, 56 bytes a chunk; a lookup bisects. A chunk
that leaves becomes a tombstone, reused if the chunk comes back, so eviction never moves
the arrays; an image's arrays are compacted once half of them are tombstones. Plain data;
use on one thread (the store's event loop), except while the store builds it.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left
from itertools import compress

VERIFIED = 1  # checked against its crc32 by this process (or written by it)
TOUCHED = 2  # read since its access time was last written to disk
_DEAD = 4  # a tombstone: flags are exactly this, never combined with the others
_INDEX_BITS = 32  # a key is (image number << 32 | chunk index)
_INDEX_MASK = (1 << _INDEX_BITS) - 1
_COMPACT_MIN = 64  # tombstones an image keeps before compacting at all


# diskcache's value files are "xx/yy/<28 hex>.val" (Disk.filename), kept as their ASCII: a
# hit opens one after a slice and a decode (building it from 16 bytes of hex cost twice as
# long, 0.5 µs of a 6 µs open_chunk, for 22 bytes a chunk less).
FILE_BYTES = 38


def file_bytes(filenames: str) -> bytes:
    """Value-file names, concatenated, as FILE_BYTES each; ValueError if one is not of
    diskcache's shape (so that none can name a file outside the store)."""
    count, rest = divmod(len(filenames), FILE_BYTES)
    digits = filenames.replace("/", "").replace(".val", "")
    if (
        rest
        or filenames[2::FILE_BYTES] != "/" * count
        or filenames[5::FILE_BYTES] != "/" * count
        or filenames[34::FILE_BYTES] != "." * count
        or len(digits) != 32 * count
        or len(bytes.fromhex(digits)) != 16 * count  # hex digits only (it skips spaces)
    ):
        raise ValueError(filenames[:FILE_BYTES])
    return filenames.encode("ascii")


class ImageChunks:
    """The chunks of one image version: parallel arrays in chunk-index order."""

    __slots__ = (
        "access",
        "bytes",
        "count",
        "crcs",
        "files",
        "flags",
        "identity",
        "indexes",
        "lengths",
        "number",
        "states",
    )

    def __init__(self, identity: str, number: int) -> None:
        self.identity = identity
        self.number = number  # keys of this image's chunks are number << 32 | index
        self.clear()

    def clear(self) -> None:
        self.indexes = array("I")
        self.lengths = array("I")
        self.crcs = array("I")
        self.access = array("I")  # Unix seconds
        self.flags = bytearray()  # VERIFIED | TOUCHED, or _DEAD
        self.states = bytearray()  # the eviction policy's state of each chunk
        self.files = bytearray()  # FILE_BYTES a chunk: its value file's name
        self.count = 0  # live chunks
        self.bytes = 0

    def find(self, index: int) -> int:
        """The position of stored chunk `index`, or -1."""
        indexes = self.indexes
        if index < len(indexes) and indexes[index] == index:
            pos = index  # no gap below it: the common case, a hit without a bisect
        else:
            pos = bisect_left(indexes, index)
            if pos == len(indexes) or indexes[pos] != index:
                return -1
        return -1 if self.flags[pos] == _DEAD else pos

    def file(self, pos: int) -> str:
        """The chunk's value file, relative to the store's directory."""
        return self.files[pos * FILE_BYTES : (pos + 1) * FILE_BYTES].decode("ascii")

    def key(self, pos: int) -> int:
        return self.number << _INDEX_BITS | self.indexes[pos]

    def positions(self) -> list[int]:
        """Positions of the live chunks, in index order."""
        return [pos for pos, flags in enumerate(self.flags) if flags != _DEAD]

    def prefix_complete(self, count: int) -> bool:
        """Whether chunks 0..count-1 are all stored (then they sit at positions 0..count-1)."""
        if count == 0:
            return True
        return (
            len(self.indexes) >= count
            and self.indexes[count - 1] == count - 1
            and _DEAD not in self.flags[:count]
        )

    def _compact(self) -> None:
        live = [flags != _DEAD for flags in self.flags]
        for name in ("indexes", "lengths", "crcs", "access"):
            column = getattr(self, name)
            setattr(self, name, array(column.typecode, compress(column, live)))
        files, kept = self.files, compress(range(len(live)), live)
        self.files = bytearray().join(
            files[pos * FILE_BYTES : (pos + 1) * FILE_BYTES] for pos in kept
        )
        self.flags = bytearray(compress(self.flags, live))
        self.states = bytearray(compress(self.states, live))


class ChunkIndex:
    """Every stored chunk, by image version. Also the eviction policy's `Entries` table:
    its keys are `number << 32 | index`, and image numbers are never reused, so the key of a
    chunk that left never names another."""

    def __init__(self) -> None:
        self.images: dict[str, ImageChunks] = {}
        self._numbered: dict[int, ImageChunks] = {}
        self._next_number = 0
        self.count = 0
        self.bytes = 0

    def __len__(self) -> int:
        return self.count

    def _image(self, identity: str) -> ImageChunks:
        image = self.images.get(identity)
        if image is None:
            image = ImageChunks(identity, self._next_number)
            self._next_number += 1
            self.images[identity] = image
            self._numbered[image.number] = image
        return image

    def locate(self, key: int) -> tuple[ImageChunks, int] | None:
        image = self._numbered.get(key >> _INDEX_BITS)
        if image is None:
            return None
        pos = image.find(key & _INDEX_MASK)
        return None if pos < 0 else (image, pos)

    def put(
        self,
        identity: str,
        index: int,
        length: int,
        crc: int,
        file: bytes,
        access: int,
        flags: int,
    ) -> int:
        """Add a chunk that is not stored; returns its key. Its policy state starts at 0."""
        image = self._image(identity)
        pos = bisect_left(image.indexes, index)
        if pos < len(image.indexes) and image.indexes[pos] == index:  # a tombstone: reuse it
            assert image.flags[pos] == _DEAD
            image.lengths[pos] = length
            image.crcs[pos] = crc
            image.access[pos] = access
            image.flags[pos] = flags
            image.states[pos] = 0
            image.files[pos * FILE_BYTES : (pos + 1) * FILE_BYTES] = file
        else:
            image.indexes.insert(pos, index)
            image.lengths.insert(pos, length)
            image.crcs.insert(pos, crc)
            image.access.insert(pos, access)
            image.flags.insert(pos, flags)
            image.states.insert(pos, 0)
            image.files[pos * FILE_BYTES : pos * FILE_BYTES] = file
        image.count += 1
        image.bytes += length
        self.count += 1
        self.bytes += length
        return image.key(pos)

    def load(
        self,
        identity: str,
        columns: tuple[array[int], array[int], array[int], array[int]],
        files: bytes,
        state: int,
    ) -> None:
        """Add a new image version's chunks in bulk (start-up), not verified: the columns are
        (indexes, lengths, crcs, access), sorted by index, and `files` their value files."""
        image = self._image(identity)
        assert not image.indexes and len(files) == FILE_BYTES * len(columns[0])
        indexes, lengths, crcs, access = columns
        image.indexes, image.lengths, image.crcs, image.access = indexes, lengths, crcs, access
        image.files = bytearray(files)
        image.flags = bytearray(len(indexes))
        image.states = bytearray([state]) * len(indexes)
        image.count = len(indexes)
        image.bytes = sum(lengths)
        self.count += image.count
        self.bytes += image.bytes

    def remove(self, image: ImageChunks, pos: int) -> int:
        """Drop a chunk (it becomes a tombstone); returns its length."""
        if self.images.get(image.identity) is not image:
            return 0  # dropped meanwhile
        length = image.lengths[pos]
        image.flags[pos] = _DEAD
        image.states[pos] = 0
        image.access[pos] = 0
        image.count -= 1
        image.bytes -= length
        self.count -= 1
        self.bytes -= length
        if not image.count:
            self.drop(image)
        elif len(image.indexes) - image.count > max(_COMPACT_MIN, image.count):
            image._compact()
        return length

    def drop(self, image: ImageChunks) -> None:
        """Forget an image version and all its chunks."""
        if self.images.get(image.identity) is image:
            del self.images[image.identity]
            del self._numbered[image.number]
            self.count -= image.count
            self.bytes -= image.bytes
            image.clear()  # positions held across an await find nothing

    # -- eviction.Entries -----------------------------------------------------------------

    def state(self, key: int) -> int:
        found = self.locate(key)
        return 0 if found is None else found[0].states[found[1]]

    def set_state(self, key: int, state: int) -> None:
        found = self.locate(key)
        if found is not None:
            found[0].states[found[1]] = state

    def size(self, key: int) -> int:
        found = self.locate(key)
        return 0 if found is None else found[0].lengths[found[1]]

    def add(self, key: int, size: int, state: int) -> None:
        self.set_state(key, state)
