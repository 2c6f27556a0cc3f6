"""How a fill cuts the origin's pieces into chunks: exact bytes, whatever the piece sizes."""

from __future__ import annotations

import random

from bench.origin import generate_image
from isocache.fill import _Pieces


def test_chunks_are_exact_for_any_piece_sizes() -> None:
    rng = random.Random(7)
    for _ in range(200):
        chunk = rng.choice([1, 7, 4096, 65536])
        data = generate_image(rng.randrange(1, 5 * chunk + 100), seed=rng.randrange(1000))
        pieces, position, taken, got = _Pieces(), 0, 0, []
        while position < len(data):
            step = rng.choice([1, 3, chunk - 1 or 1, chunk, chunk + 1, 3 * chunk, 256 * 1024])
            pieces.add(data[position : position + step])
            position += step
            # Take whole chunks (the last one short) as soon as they are complete.
            while taken < len(data) and pieces.held >= min(chunk, len(data) - taken):
                got.append(pieces.take(min(chunk, len(data) - taken)))
                taken += len(got[-1])
        assert b"".join(got) == data
        assert pieces.held == 0
        assert all(type(c) is bytes for c in got)


def test_a_piece_that_is_a_whole_chunk_is_not_copied() -> None:
    pieces = _Pieces()
    piece = generate_image(4096, seed=1)
    pieces.add(piece)
    assert pieces.take(4096) is piece
