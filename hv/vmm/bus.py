"""Device buses: port I/O and MMIO ranges mapped to devices, which only ever see offsets."""

from __future__ import annotations

import bisect
from typing import Protocol

__all__ = ["Bus", "BusError", "Device"]


class Device(Protocol):
    def read(self, offset: int, size: int) -> int: ...
    def write(self, offset: int, size: int, value: int) -> None: ...


class BusError(ValueError):
    pass


class Bus:
    """Non-overlapping [base, base+length) ranges. Unclaimed reads are all ones, writes vanish."""

    def __init__(self, name: str):
        self.name = name
        self._bases: list[int] = []
        self._ranges: list[tuple[int, int, Device]] = []

    def register(self, base: int, length: int, device: Device) -> None:
        if length <= 0:
            raise BusError(f"{self.name}: empty range at {base:#x}")
        for b, n, _d in self._ranges:
            if base < b + n and b < base + length:
                raise BusError(f"{self.name}: {base:#x}+{length:#x} overlaps {b:#x}+{n:#x}")
        i = bisect.bisect(self._bases, base)
        self._bases.insert(i, base)
        self._ranges.insert(i, (base, length, device))

    def _find(self, addr: int) -> tuple[int, Device] | None:
        i = bisect.bisect(self._bases, addr) - 1
        if i >= 0:
            b, n, d = self._ranges[i]
            if addr < b + n:
                return addr - b, d
        return None

    def read(self, addr: int, size: int) -> int:
        hit = self._find(addr)
        if hit is None:
            return (1 << (8 * size)) - 1
        return hit[1].read(hit[0], size) & ((1 << (8 * size)) - 1)

    def write(self, addr: int, size: int, value: int) -> None:
        hit = self._find(addr)
        if hit is not None:
            hit[1].write(hit[0], size, value)
