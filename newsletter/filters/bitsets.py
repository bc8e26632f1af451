"""Sets of papers as Python ints: bit i stands for the i-th paper of an index. AND, OR
and NOT over a whole day are then single integer operations."""

from __future__ import annotations

from collections.abc import Iterator


def bits_of(indexes: list[int]) -> int:
    """A bitset from increasing indexes, built in one pass over bytes (no big-int churn)."""
    if len(indexes) == 1:
        return 1 << indexes[0]
    data = bytearray(indexes[-1] // 8 + 1)
    for i in indexes:
        data[i >> 3] |= 1 << (i & 7)
    return int.from_bytes(data, "little")


def iter_bits(bits: int) -> Iterator[int]:
    """Indexes of the set bits, lowest first."""
    while bits:
        low = bits & -bits
        yield low.bit_length() - 1
        bits ^= low
