"""An encrypted operating system's memory: the plaintext it computes on, and what DRAM holds.

The small guests' MMU (mmu.py) sees every TLB fill and keeps a per-page cache state. A kernel
runs on Unicorn's own MMU instead (oscpu.py), where no fill reaches Python, and Unicorn's walk
reads page tables at the addresses the entries give, with or without the C-bit (Linux's early
tables point to the next level without it: on the part, table walks are always private). So the
guest computes on one plaintext buffer, mapped at guest-physical 0 and again at 1 << cbit (the
C-bit of these guests is bit 39: Unicorn's MMU implements 40 physical address bits), and the
C-bit decides what DRAM holds: the ciphertext of a private page, the bytes of a shared one.

DRAM follows the guest's writes at the points where anyone else looks at or changes it (the
memory controller's writeback and invalidate, called before every host, DMA or PSP access and
by a cold-boot dump), as the CPU caches on the part write back: a page the guest changed since
the last look goes to DRAM encrypted with its key if the guest maps it private, as it is if the
guest maps it shared (the C-bit of the guest's own mappings at that moment: any mapping without
it makes the page shared, the way Linux's set_memory_decrypted clears it in the direct map); a
page changed in DRAM comes back decrypted if private (garbage, for anything but ciphertext, as on
the part) or as it is if shared.

Departures from the part, documented in docs/linux.md: the guest reads its own plaintext through
a C=0 mapping of a private page (the part gives it the ciphertext) and a shared page's bytes
through a C=1 mapping (the part gives their decryption); memory the guest never wrote reads as
zeros. Neither is anything a kernel does on purpose, and neither is visible to the hypervisor,
which only ever reads DRAM.
"""

from __future__ import annotations

import ctypes
import mmap
import os
from typing import Callable

import numpy as np

from hv.hw.memctl import PAGE, MemoryController

__all__ = ["PrivateRam"]

_CHUNK_PAGES = 4096  # compare 16 MiB at a time: the temporaries stay small


class PrivateRam:
    """The plaintext of guest RAM [spa, spa + size) under `asid`'s key, for one OS vCPU.

    `shared_pages()` (set by the vCPU) gives, per page, True where the guest maps it without the
    C-bit, False where only with it, and is asked again only after the guest ran (guest_ran())."""

    def __init__(self, mc: MemoryController, spa: int, size: int, asid: int):
        mc.check_range(spa, size)
        if spa % PAGE or size % PAGE:
            raise ValueError("private RAM must be whole pages")
        self._mc, self.spa, self.size, self.asid = mc, spa, size, asid
        # What the guest computes on: one shared memory object mapped twice, so that the two
        # guest-physical aliases have host addresses of their own (QEMU finds the RAM block of
        # a translated page from its host address: one address range for both aliases would
        # leave code written through one alias translated from the other, stale).
        fd = os.memfd_create("hv-guest-ram")
        try:
            os.ftruncate(fd, size)
            self._maps = [mmap.mmap(fd, size, mmap.MAP_SHARED) for _ in range(2)]
        finally:
            os.close(fd)
        self.buf = np.frombuffer(self._maps[0], dtype=np.uint8)
        self.alias_ptrs = [ctypes.addressof(ctypes.c_char.from_buffer(m)) for m in self._maps]
        self._buf_ref = np.zeros(size, dtype=np.uint8)  # both as of the last look
        self._dram_ref = np.zeros(size, dtype=np.uint8)
        self._dram = mc.dram[spa:spa + size]
        self._p0 = spa // PAGE
        self._npages = size // PAGE
        self.shared = np.zeros(self._npages, dtype=bool)  # the last classification
        # Pages the guest has told the hypervisor are shared (an SEV-ES GHCB): no walk needed.
        self._declared = np.zeros(self._npages, dtype=bool)
        self.shared_pages: Callable[[np.ndarray], None] | None = None
        self._classified = False
        self._stale: list[tuple[int, int]] = [(0, self._npages)]  # DRAM may have changed here
        self.stats = {"pages_encrypted": 0, "pages_decrypted": 0, "syncs": 0}
        mc.os_caches.append(self)

    def close(self) -> None:
        """The guest is done: DRAM is made current, then the memory controller forgets this."""
        if self in self._mc.os_caches:
            self._sync(0, self._npages)
            self._mc.os_caches.remove(self)

    # -- the memory controller's calls (host page numbers) ---------------------------------------------
    def writeback(self, p0: int, p1: int) -> bool:
        """Before someone else reads DRAM pages [p0, p1): make them current."""
        lo, hi = max(p0 - self._p0, 0), min(p1 - self._p0, self._npages)
        if lo < hi:
            self._sync(lo, hi)
        return False  # no TLB entry of the small guests' cores ever maps these pages

    def invalidate(self, p0: int, p1: int) -> None:
        """Before someone else writes DRAM pages [p0, p1): make them current now, and take in
        what was written before the guest runs next (refresh())."""
        lo, hi = max(p0 - self._p0, 0), min(p1 - self._p0, self._npages)
        if lo < hi:
            self._sync(lo, hi)
            self._stale.append((lo, hi))

    # -- the vCPU's calls --------------------------------------------------------------------------------
    def guest_ran(self) -> None:
        self._classified = False

    def pending(self) -> bool:
        return bool(self._stale)

    def refresh(self) -> bool:
        """Before the guest runs: take in what changed in DRAM. True if the plaintext of a page
        that may hold code changed (the caller drops translated code, which may have come from
        it); a page the guest declared shared (its GHCB) holds none."""
        stale, self._stale = self._stale, []
        changed = False
        for lo, hi in stale:
            if self._sync(lo, hi) and not self._declared[lo:hi].all():
                changed = True
        return changed

    def read(self, gpa: int, length: int) -> bytes:
        """DRAM as stored at guest-physical [gpa, gpa + length), made current first."""
        self.writeback(self._p0 + gpa // PAGE, self._p0 + (gpa + length + PAGE - 1) // PAGE)
        return self._dram[gpa:gpa + length].tobytes()

    def declare_shared(self, gpa: int) -> None:
        """The guest named the page at `gpa` as one it shares (its GHCB)."""
        if 0 <= gpa < self.size:
            self._declared[gpa // PAGE] = True
            self.shared[gpa // PAGE] = True

    # -- coherence ----------------------------------------------------------------------------------------
    def _classify(self) -> None:
        if not self._classified and self.shared_pages is not None:
            self.shared_pages(self.shared)
            self.shared |= self._declared
        self._classified = True

    def _sync(self, lo: int, hi: int) -> bool:
        """Make pages [lo, hi) coherent; True if the plaintext of any changed."""
        self.stats["syncs"] += 1
        if hi - lo == 1:
            return self._sync_page(lo)
        taken_in = False
        for c0 in range(lo, hi, _CHUNK_PAGES):
            c1 = min(c0 + _CHUNK_PAGES, hi)
            a, b = c0 * PAGE, c1 * PAGE
            written = _changed(self._dram[a:b], self._dram_ref[a:b])  # by someone else: theirs
            computed = _changed(self.buf[a:b], self._buf_ref[a:b]) & ~written
            if not (written.any() or computed.any()):
                continue
            if ((written | computed) & ~self._declared[c0:c1]).any():
                self._classify()
            shared = self.shared[c0:c1]
            for mask, encrypt in ((computed & ~shared, True), (written & ~shared, False)):
                for first, last in _runs(mask):
                    self._crypt(c0 + first, c0 + last, encrypt)
            for first, last in _runs(computed & shared):
                s = slice((c0 + first) * PAGE, (c0 + last) * PAGE)
                self._dram[s] = self.buf[s]
            for first, last in _runs(written & shared):
                s = slice((c0 + first) * PAGE, (c0 + last) * PAGE)
                self.buf[s] = self._dram[s]
            for first, last in _runs(written | computed):
                s = slice((c0 + first) * PAGE, (c0 + last) * PAGE)
                self._buf_ref[s] = self.buf[s]
                self._dram_ref[s] = self._dram[s]
            taken_in |= bool(written.any())
        return taken_in

    def _sync_page(self, p: int) -> bool:
        """_sync for one page (an SEV-ES guest's GHCB at every VMGEXIT): the same rules."""
        s = slice(p * PAGE, (p + 1) * PAGE)
        written = self._dram[s].tobytes() != self._dram_ref[s].tobytes()
        if not written and self.buf[s].tobytes() == self._buf_ref[s].tobytes():
            return False
        if not self._declared[p]:
            self._classify()
        if self.shared[p]:
            if written:
                self.buf[s] = self._dram[s]
            else:
                self._dram[s] = self.buf[s]
        else:
            self._crypt(p, p + 1, encrypt=not written)
        self._buf_ref[s] = self.buf[s]
        self._dram_ref[s] = self._dram[s]
        return written

    def _crypt(self, first: int, last: int, encrypt: bool) -> None:
        s = slice(first * PAGE, last * PAGE)
        spa = self.spa + first * PAGE
        if encrypt:
            self._mc.engine.encrypt_into(self.asid, spa, self.buf[s], self._dram[s])
            self.stats["pages_encrypted"] += last - first
        else:
            self._mc.engine.decrypt_into(self.asid, spa, self._dram[s], self.buf[s])
            self.stats["pages_decrypted"] += last - first


def _changed(now: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Per page: does `now` differ from `ref`?"""
    return (now.view(np.uint64).reshape(-1, PAGE // 8)
            != ref.view(np.uint64).reshape(-1, PAGE // 8)).any(axis=1)


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[first, last) of each run of True in `mask`."""
    if not mask.any():
        return []
    edges = np.flatnonzero(np.diff(np.concatenate(([False], mask, [False])).astype(np.int8)))
    return list(zip(edges[0::2].tolist(), edges[1::2].tolist()))
