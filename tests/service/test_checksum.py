"""The log's and checkpoints' crc32 (ISA-L) is zlib's CRC-32: files written by either
read back with the other, chained or not, at every length and alignment."""

from __future__ import annotations

import os
import zlib

from rankboard.service.state.checksum import crc32


def test_isal_crc32_is_zlib_crc32() -> None:
    data = os.urandom(1 << 20)
    for size in (0, 1, 7, 8, 15, 63, 64, 65, 4095, 4096, 100_003, 1 << 20):
        for start in (0, 1, 3):
            chunk = memoryview(data)[start : start + size]
            assert crc32(chunk) == zlib.crc32(chunk)
            assert crc32(chunk, 0xDEADBEEF) == zlib.crc32(chunk, 0xDEADBEEF)
    head, tail = data[:12345], data[12345:]
    assert crc32(tail, crc32(head)) == zlib.crc32(data)
