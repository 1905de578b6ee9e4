"""The MMU: guest 4-level walk with the C-bit, then the nested page table, then a memory domain.

It runs inside Unicorn's virtual-TLB fill hook, so it decides for every guest-virtual page which
Unicorn physical address backs it:

  DRAM at 0                         host physical memory as stored (ciphertext of private pages)
  VIEW_BASE * (slot + 1) + spa      the plaintext view of key slot `slot` (see memctl)
  FENCE_READ, FENCE_WRITE           what a guest gets for a fenced page (the SEV-ES TMR)

For an encrypted guest, instruction fetches and page-table reads are always private (the guest's
ASID); data accesses follow the C-bit of the leaf entry. Everything else is raw DRAM, or the host
key's view under transparent SME. Write permission into a view is granted only on a write fill,
which is the controller's page-granular dirty tracking.

The memory controller fences the TMR from every agent but the PSP, and a guest is one even when
the hypervisor's nested page table leads it there. A fenced access does not fault: on the part
the fabric refuses it, loads (and fetches, and page-table reads) return all ones and stores are
dropped. So a fill that ends on a fenced page maps a page of all ones for reading and fetching,
and a write-only sink for stores, never DRAM or a view: the TMR's bytes never reach a guest, and
a guest's stores never reach the TMR. Under SEV-SNP the RMP check comes first (TMR pages are
Firmware pages: a nested page fault), as on the part.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hv.hw.memctl import DIRTY, HOST_SLOT, PAGE, MemoryController
from hv.hw.npt import NPT_W, NPT_X, NestedPageTable

__all__ = ["ACCESS_FETCH", "ACCESS_READ", "ACCESS_WRITE", "FENCE_BASE", "FENCE_READ",
           "FENCE_WRITE", "GuestPageFault", "Mmu", "NestedFault", "Translation", "VIEW_BASE",
           "view_base"]

ACCESS_READ, ACCESS_WRITE, ACCESS_FETCH = 16, 17, 18  # Unicorn's UC_MEM_READ/WRITE/FETCH
VIEW_BASE = 1 << 40
# MemoryController.fence_pages, mapped just below the first view (far above any DRAM size).
FENCE_BASE = VIEW_BASE - 2 * PAGE
FENCE_READ, FENCE_WRITE = FENCE_BASE, FENCE_BASE + PAGE
_ONES64 = (1 << 64) - 1
PROT_R, PROT_W, PROT_X = 1, 2, 4

_P, _RW, _US, _PS = 0x1, 0x2, 0x4, 0x80
_NX = 1 << 63
_PHYS = (1 << 52) - 1


def view_base(slot: int) -> int:
    return VIEW_BASE * (slot + 1)


class GuestPageFault(Exception):
    """#PF for the guest: CR2 = address, error code as the architecture defines it."""

    def __init__(self, address: int, error_code: int):
        super().__init__(f"#PF at {address:#x} (error code {error_code:#x})")
        self.address = address
        self.error_code = error_code


class NestedFault(Exception):
    """#NPF for the hypervisor."""

    def __init__(self, gpa: int, error_code: int):
        super().__init__(f"#NPF at GPA {gpa:#x} (info {error_code:#x})")
        self.gpa = gpa
        self.error_code = error_code


@dataclass(frozen=True)
class Translation:
    gva: int
    gpa: int
    spa: int
    slot: int | None  # key slot of the domain, None = raw DRAM
    c_bit: bool
    writable: bool
    executable: bool

    @property
    def paddr(self) -> int:
        """Where Unicorn finds the byte."""
        return self.spa if self.slot is None else view_base(self.slot) + self.spa


class Mmu:
    def __init__(self, mc: MemoryController, npt: NestedPageTable, asid: int, encrypted: bool,
                 cbitpos: int):
        self._mc = mc
        self.npt = npt
        self.asid = asid
        self.encrypted = encrypted
        self.cmask = (1 << cbitpos) if encrypted else 0
        self._addr_mask = _PHYS & ~0xFFF & ~self.cmask
        self._private_slot = asid if encrypted else None
        self._shared_slot = HOST_SLOT if mc.tsme else None
        self._dram64 = mc.dram.view(np.uint64)
        self._fenced = mc.fenced
        self.fills = 0

    # -- the walk --------------------------------------------------------------------------------
    def _table_entry(self, table_gpa: int, index: int, gva: int, access: int) -> int:
        gpa = table_gpa + index * 8
        hit = self.npt.lookup(gpa)
        if hit is None:
            raise NestedFault(gpa, _npf_info(False, access == ACCESS_WRITE, access == ACCESS_FETCH) | 1 << 33)
        spa = hit[0] | (gpa & 0xFFF)
        slot = self._private_slot if self.encrypted else self._shared_slot
        page = spa >> 12
        if self._fenced[page]:
            return _ONES64  # the walker's read of a fenced page is refused: all ones
        if slot is None:
            if self._mc.views:
                self._mc.fill_raw(page, False)
            return int(self._dram64[spa >> 3])
        self._mc.fill_view(slot, page, False)
        return int(self._mc.views[slot].buf[spa:spa + 8].view(np.uint64)[0])

    def translate(self, gva: int, access: int, cr3: int) -> Translation:
        """Walk for one access; raise GuestPageFault / NestedFault / memctl.NeedsRetry."""
        write = access == ACCESS_WRITE
        fetch = access == ACCESS_FETCH
        top = gva >> 47
        if top not in (0, 0x1FFFF):
            # A non-canonical address is #GP on hardware; delivered as #PF here would mislead, so
            # the caller maps error code -1 to #GP.
            raise GuestPageFault(gva, -1)
        table = cr3 & self._addr_mask
        writable, executable = True, True
        entry = 0
        level = 4
        while True:
            shift = 12 + 9 * (level - 1)
            entry = self._table_entry(table, (gva >> shift) & 0x1FF, gva, access)
            if not entry & _P:
                raise GuestPageFault(gva, _pf_error(False, write, fetch))
            writable &= bool(entry & _RW)
            executable &= not entry & _NX
            if level == 1 or (entry & _PS and level in (2, 3)):
                break
            table = entry & self._addr_mask
            level -= 1
        page_mask = (1 << shift) - 1
        frame = entry & self._addr_mask & ~page_mask
        if write and not writable:
            raise GuestPageFault(gva, _pf_error(True, write, fetch))
        if fetch and not executable:
            raise GuestPageFault(gva, _pf_error(True, write, fetch))
        gpa = frame | (gva & page_mask & ~0xFFF)
        c_bit = bool(entry & self.cmask)
        hit = self.npt.lookup(gpa)
        if hit is None:
            raise NestedFault(gpa | (gva & 0xFFF), _npf_info(False, write, fetch) | 1 << 32)
        spa, nperms = hit
        if (write and not nperms & NPT_W) or (fetch and not nperms & NPT_X) or not nperms & 1:
            raise NestedFault(gpa | (gva & 0xFFF), _npf_info(True, write, fetch) | 1 << 32)
        slot = self._private_slot if (self.encrypted and (fetch or c_bit)) else self._shared_slot
        return Translation(gva & ~0xFFF, gpa, spa, slot, c_bit,
                           writable and bool(nperms & NPT_W), executable and bool(nperms & NPT_X))

    # -- the fill ----------------------------------------------------------------------------------
    def fill(self, gva: int, access: int, cr3: int) -> tuple[int, int, Translation]:
        """Translate and make the memory controller ready; return (paddr, unicorn perms, t)."""
        t = self.translate(gva, access, cr3)
        self.fills += 1
        write = access == ACCESS_WRITE
        page = t.spa >> 12
        if self._fenced[page]:
            if write:
                return FENCE_WRITE, PROT_W, t  # write-only: the guest never reads its stores back
            return FENCE_READ, PROT_R | (PROT_X if t.executable else 0), t
        if access == ACCESS_FETCH:
            self._mc.code_pages[page] = True
        if t.slot is None:
            perms = PROT_R | (PROT_W if t.writable else 0) | (PROT_X if t.executable else 0)
            if self._mc.views:
                self._mc.fill_raw(page, t.writable)
            return t.spa, perms, t
        self._mc.fill_view(t.slot, page, write)
        perms = PROT_R | (PROT_X if t.executable else 0)
        if write or self._mc.views[t.slot].state[page] == DIRTY:
            perms |= PROT_W if t.writable else 0
        if self.encrypted and access == ACCESS_FETCH and not t.c_bit:
            perms = PROT_X  # code on a C=0 page still runs private; its data reads must refill
        return t.paddr, perms, t

    def read_bytes(self, t: Translation, offset: int, length: int) -> bytes:
        """Bytes of a translated page (within the page), from the right domain."""
        if self._fenced[t.spa >> 12]:
            return b"\xff" * length
        a = t.spa + offset
        if t.slot is None:
            return self._mc.dram[a:a + length].tobytes()
        return self._mc.views[t.slot].buf[a:a + length].tobytes()


def _pf_error(present: bool, write: bool, fetch: bool) -> int:
    return (1 if present else 0) | (2 if write else 0) | (16 if fetch else 0)


def _npf_info(present: bool, write: bool, fetch: bool) -> int:
    return (1 if present else 0) | (2 if write else 0) | 4 | (16 if fetch else 0)
