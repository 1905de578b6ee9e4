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

The nested page table (`npt`, the VM's: hv.hw.npt) is followed at the same points, since no
walk of it reaches Python either: before the guest runs again, a guest page the hypervisor has
pointed at another host page is first made current under its old mapping (what it computed goes
to its old host page), then takes in the new host page's DRAM, decrypted with the tweak of that
host address (what SEVered relies on); from then on its write-backs go there, and the guest pages
backed by one host page follow each other at every coherence point (when both changed between
two, the one made current first is overwritten by the other: the part's caches, tagged by host
address, would merge them line by line). Under SEV-SNP (the RMP assigns this guest's pages to
its ASID) the CPU's RMP check of the new host page decides first (hv.hw.rmp.guest_check): a host
page whose entry names another GPA, ASID or owner is a nested page fault with the RMP bit, posted
to the table (NestedPageTable.post_fault) since this core has no exit to raise it with, and the
guest page keeps its old host page. So does a page the table no longer maps (a plain nested page
fault) or maps onto the PSP's fenced memory: this core checks no access against the table, so
neither trapping (T) nor permissions are modelled.

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
from hv.hw.npt import NestedPageTable
from hv.hw.rmp import RMP_NPF

__all__ = ["NPF_FINAL", "PrivateRam"]

_CHUNK_PAGES = 4096  # compare 16 MiB at a time: the temporaries stay small
NPF_FINAL = 1 << 32  # EXITINFO1: the fault is in the final (guest-physical) translation
_NPF_PRESENT = 1     # ... of a page the table maps


class PrivateRam:
    """The plaintext of guest RAM [spa, spa + size) under `asid`'s key, for one OS vCPU.

    `shared_pages()` (set by the vCPU) gives, per page, True where the guest maps it without the
    C-bit, False where only with it, and is asked again only after the guest ran (guest_ran()).
    `npt`: the VM's nested page table, followed before the guest runs (see the module's
    docstring); without one, guest page g is host page spa // PAGE + g for good."""

    def __init__(self, mc: MemoryController, spa: int, size: int, asid: int,
                 npt: NestedPageTable | None = None):
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
        # The nested page table as last followed: its generation then (-1: never looked), the
        # host page it gave each guest page (-1: none), and the guest pages now backed by
        # another host page than their own (the rest are spa // PAGE + g).
        self._npt = npt
        self._npt_generation = -1
        self._npt_view = np.arange(self._p0, self._p0 + self._npages, dtype=np.int64)
        self._remapped: dict[int, int] = {}
        self._snp = False  # the RMP assigns this guest's pages to its ASID (found on first need)
        self.stats = {"pages_encrypted": 0, "pages_decrypted": 0, "syncs": 0, "pages_remapped": 0}
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
        for g in self._remapped_onto(p0, p1):
            self._sync_page(g)
        return False  # no TLB entry of the small guests' cores ever maps these pages

    def invalidate(self, p0: int, p1: int) -> None:
        """Before someone else writes DRAM pages [p0, p1): make them current now, and take in
        what was written before the guest runs next (refresh())."""
        lo, hi = max(p0 - self._p0, 0), min(p1 - self._p0, self._npages)
        if lo < hi:
            self._sync(lo, hi)
            self._stale.append((lo, hi))
        for g in self._remapped_onto(p0, p1):
            self._sync_page(g)
            self._stale.append((g, g + 1))

    # -- the vCPU's calls --------------------------------------------------------------------------------
    def guest_ran(self) -> None:
        self._classified = False

    def pending(self) -> bool:
        return bool(self._stale) or (self._npt is not None
                                     and self._npt.generation != self._npt_generation)

    def refresh(self) -> bool:
        """Before the guest runs: follow the nested page table and take in what changed in
        DRAM. True if the plaintext of a page that may hold code changed (the caller drops
        translated code, which may have come from it); a page the guest declared shared (its
        GHCB) holds none."""
        changed = self._follow_npt()
        while self._stale:  # making one page current can make its aliases stale
            stale, self._stale = self._stale, []
            for lo, hi in stale:
                if self._sync(lo, hi) and not self._declared[lo:hi].all():
                    changed = True
        return changed

    def read(self, gpa: int, length: int) -> bytes:
        """DRAM as stored at guest-physical [gpa, gpa + length) (through the nested page
        table as last followed), made current first."""
        out = []
        while length > 0:
            n = min(length, PAGE - gpa % PAGE)
            h = self._backing(gpa // PAGE)
            self._mc.writeback(h, h + 1)
            a = h * PAGE + gpa % PAGE
            out.append(self._mc.dram[a:a + n].tobytes())
            gpa, length = gpa + n, length - n
        return b"".join(out)

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
        moved = [g for g in self._remapped if lo <= g < hi]  # backed elsewhere: one by one
        for g in moved:
            taken_in |= self._sync_page(g)
        for c0 in range(lo, hi, _CHUNK_PAGES):
            c1 = min(c0 + _CHUNK_PAGES, hi)
            a, b = c0 * PAGE, c1 * PAGE
            written = _changed(self._dram[a:b], self._dram_ref[a:b])  # by someone else: theirs
            computed = _changed(self.buf[a:b], self._buf_ref[a:b]) & ~written
            for g in moved:
                if c0 <= g < c1:
                    written[g - c0] = computed[g - c0] = False
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
        if self._remapped:
            self._note_aliases()
        return taken_in

    def _sync_page(self, p: int) -> bool:
        """_sync for one page (an SEV-ES guest's GHCB at every VMGEXIT, a remapped page): the
        same rules, with the host page that backs it."""
        s = slice(p * PAGE, (p + 1) * PAGE)
        h = self._backing(p)
        dram = self._mc.dram[h * PAGE:(h + 1) * PAGE]
        written = dram.tobytes() != self._dram_ref[s].tobytes()
        if not written and self.buf[s].tobytes() == self._buf_ref[s].tobytes():
            return False
        if not self._declared[p]:
            self._classify()
        if self.shared[p]:
            if written:
                self.buf[s] = dram
            else:
                dram[:] = self.buf[s]
        else:
            self._crypt(p, p + 1, encrypt=not written, host=h)
        self._buf_ref[s] = self.buf[s]
        self._dram_ref[s] = dram
        if self._remapped and not written:
            self._note_aliases()
        return written

    def _crypt(self, first: int, last: int, encrypt: bool, host: int | None = None) -> None:
        """Guest pages [first, last) to or from DRAM at host page `host` (default: their own),
        the tweak that host address's."""
        s = slice(first * PAGE, last * PAGE)
        spa = (self._p0 + first if host is None else host) * PAGE
        dram = self._mc.dram[spa:spa + (last - first) * PAGE]
        if encrypt:
            self._mc.engine.encrypt_into(self.asid, spa, self.buf[s], dram)
            self.stats["pages_encrypted"] += last - first
        else:
            self._mc.engine.decrypt_into(self.asid, spa, dram, self.buf[s])
            self.stats["pages_decrypted"] += last - first

    # -- the nested page table ------------------------------------------------------------------------------
    def _backing(self, g: int) -> int:
        """The host page number guest page `g` is backed by now."""
        return self._remapped.get(g, self._p0 + g)

    def _remapped_onto(self, p0: int, p1: int) -> list[int]:
        """Guest pages remapped onto host pages [p0, p1)."""
        return [g for g, h in self._remapped.items() if p0 <= h < p1] if self._remapped else []

    def _note_aliases(self) -> None:
        """After a write-back: every guest page backed by a host page that now holds another's
        write takes it in before the guest runs again."""
        for g, h in list(self._remapped.items()):
            for a in (g, h - self._p0):
                if 0 <= a < self._npages and self._backing(a) == h:
                    s = slice(a * PAGE, (a + 1) * PAGE)
                    if self._mc.dram[h * PAGE:(h + 1) * PAGE].tobytes() != self._dram_ref[s].tobytes():
                        self._stale.append((a, a + 1))

    def _follow_npt(self) -> bool:
        """Take in the hypervisor's changes to the nested page table since the last look: True
        if the plaintext of a guest page changed with them."""
        npt = self._npt
        if npt is None or npt.generation == self._npt_generation:
            return False
        self._npt_generation = npt.generation
        entries = npt.entries
        want = np.fromiter((entries.get(g, -8) >> 3 for g in range(self._npages)), np.int64,
                           self._npages)
        changed = [g for g in np.flatnonzero(want != self._npt_view).tolist()
                   if int(want[g]) != self._backing(g)]
        self._npt_view = want
        if changed:
            self._classify()
        moved = False
        for g in changed:
            target = int(want[g])
            fault = self._refusal(g, target)
            if fault:
                npt.post_fault(g * PAGE, fault)
            elif fault == 0:
                self._move(g, target)
                moved = True
        return moved

    def _refusal(self, g: int, target: int) -> int | None:
        """Why the core cannot reach guest page `g` at host page `target`: 0 if it can, the
        error code of the nested page fault it takes if not, None for a page it would take #VC
        on (the RMP entry matches but the guest has not validated it: this core raises no #VC
        at a coherence point, so the page simply stays)."""
        if target < 0:
            return NPF_FINAL                      # not present
        if self._mc.fenced[target]:
            return NPF_FINAL | _NPF_PRESENT        # the PSP's: no guest reaches it
        rmp = self._mc.rmp
        if rmp is None or not self._is_snp(rmp):
            return 0
        code = rmp.guest_check(target * PAGE, self.asid, g * PAGE, not self.shared[g])
        if code & RMP_NPF:
            return code | NPF_FINAL | _NPF_PRESENT
        return None if code else 0

    def _is_snp(self, rmp) -> bool:
        """An SEV-SNP guest: the RMP assigns pages of its RAM to its ASID (its launch pages, from
        SNP_LAUNCH_UPDATE on). The RMP's guest checks apply to those guests only."""
        if not self._snp:
            r = slice(self._p0, self._p0 + self._npages)
            self._snp = bool((rmp.assigned[r] & (rmp.asid[r] == self.asid)).any())
        return self._snp

    def _move(self, g: int, target: int) -> None:
        """Back guest page `g` by host page `target` from now on."""
        self._sync_page(g)  # what the guest computed goes to its old host page first
        for a in [a for a, h in self._remapped.items() if h == target] + [target - self._p0]:
            if a != g and 0 <= a < self._npages and self._backing(a) == target:
                self._sync_page(a)  # DRAM at the target is current
        if target == self._p0 + g:
            del self._remapped[g]
        else:
            self._remapped[g] = target
        s = slice(g * PAGE, (g + 1) * PAGE)
        dram = self._mc.dram[target * PAGE:(target + 1) * PAGE]
        if self.shared[g]:
            self.buf[s] = dram
        else:
            self._crypt(g, g + 1, encrypt=False, host=target)
        self._buf_ref[s] = self.buf[s]
        self._dram_ref[s] = dram
        self.stats["pages_remapped"] += 1


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
