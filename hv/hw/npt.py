"""The nested page table: GPA -> host physical, owned by the hypervisor, walked by the hardware.

Real NPTs are 4-level radix trees in host memory; what matters for hv is their meaning (which
guest frame is backed by which host frame, with which permissions) and who may change them (the
hypervisor, at any time: that is what SEVered, replay and page-fault side channels use). A dict
from guest frame to entry keeps that meaning with O(1) walks. Every change invalidates the TLBs
(the hypervisor's INVLPGA), through `on_change`, and counts in `generation`.

An operating system's core (hv.hw.oscpu) walks no table per access: its memory (hv.hw.osmem)
follows this one at its coherence points, where it compares `generation`, and posts the nested
page faults it finds there to `faults` (EXITINFO2 and EXITINFO1, as a #VMEXIT would carry them),
since it has no exit to raise them with; the hypervisor takes them from there (hv.kvm's
Vm.memory_faults).
"""

from __future__ import annotations

from typing import Callable

from hv.hw.addr import GPA, SPA
from hv.hw.errors import AddressError

__all__ = ["NPT_R", "NPT_W", "NPT_X", "NPT_RWX", "NestedPageTable"]

NPT_R, NPT_W, NPT_X = 1, 2, 4
NPT_RWX = NPT_R | NPT_W | NPT_X
_PAGE = 0x1000


class NestedPageTable:
    def __init__(self, dram_size: int, on_change: Callable[[], None] = lambda: None):
        self._dram_size = dram_size
        self._on_change = on_change
        self.entries: dict[int, int] = {}  # gfn -> spfn << 3 | perms
        self.generation = 0  # changes so far: a walker that caches the table compares it
        self.faults: list[tuple[int, int]] = []  # (GPA, error code) posted by an OS core

    def _check(self, gpa: int, size: int, spa: int | None = None) -> None:
        if gpa % _PAGE or size % _PAGE or size <= 0:
            raise AddressError(f"nested mappings are page-granular: gpa={gpa:#x} size={size:#x}")
        if gpa < 0 or gpa + size > 1 << 52:
            raise AddressError(f"GPA range {gpa:#x}+{size:#x} is not a guest physical range")
        if spa is not None:
            if spa % _PAGE:
                raise AddressError(f"host physical address {spa:#x} is not page-aligned")
            if spa < 0 or spa + size > self._dram_size:
                raise AddressError(
                    f"host range {spa:#x}+{size:#x} is outside DRAM (0..{self._dram_size:#x})")

    def map(self, gpa: GPA, spa: SPA, size: int, perms: int = NPT_RWX) -> None:
        self._check(gpa, size, spa)
        g0, s0 = gpa >> 12, spa >> 12
        for i in range(size >> 12):
            self.entries[g0 + i] = (s0 + i) << 3 | (perms & 7)
        self._changed()

    def unmap(self, gpa: GPA, size: int) -> None:
        self._check(gpa, size)
        g0 = gpa >> 12
        for i in range(size >> 12):
            self.entries.pop(g0 + i, None)
        self._changed()

    def protect(self, gpa: GPA, size: int, perms: int) -> None:
        """Change permissions of mapped pages (unmapped ones stay unmapped)."""
        self._check(gpa, size)
        g0 = gpa >> 12
        for i in range(size >> 12):
            e = self.entries.get(g0 + i)
            if e is not None:
                self.entries[g0 + i] = (e & ~7) | (perms & 7)
        self._changed()

    def _changed(self) -> None:
        self.generation += 1
        self._on_change()

    def post_fault(self, gpa: int, error_code: int) -> None:
        """A nested page fault an OS core found through this table at a coherence point."""
        self.faults.append((gpa, error_code))

    def lookup(self, gpa: int) -> tuple[int, int] | None:
        """(host physical address of the page, perms), or None when unmapped. Plain ints: the
        MMU calls this on every TLB fill; the hypervisor's typed view is Vm.npt_lookup."""
        e = self.entries.get(gpa >> 12)
        if e is None:
            return None
        return (e >> 3) << 12, e & 7
