"""PVALIDATE (F2 0F 01 FF): an SEV-SNP guest validates or rescinds one of its pages.

RAX = the guest-virtual address, RCX = page size (0 = 4K, 1 = 2M), RDX = 1 validate / 0 rescind.
EAX returns 0, FAIL_INPUT or FAIL_SIZEMISMATCH, zero-extended into RAX like any 32-bit result in
64-bit mode; CF = 1 when the validated bit did not change (the guest's way to notice a page
validated twice, i.e. a page the hypervisor remapped onto one it had validated before).

The CPU translates RAX through the guest's own tables (the hypervisor cannot choose the page),
then checks the RMP entry exactly as for an access: another ASID or GPA is a nested page fault
with the RMP bit for the hypervisor. Only 4K RMP entries exist here, so a 2M request is
FAIL_SIZEMISMATCH and the guest falls back to 4K, as Linux does.
"""

from __future__ import annotations

from typing import Callable

from hv.hw.exits import InternalErrorExit, NpfExit, VmExit
from hv.hw.memctl import NeedsRetry
from hv.hw.mmu import ACCESS_READ, GuestPageFault, NestedFault
from hv.hw.rmp import FAIL_INPUT, FAIL_PERMISSION, FAIL_SIZEMISMATCH, NPF_ENC, RMP_NPF
from hv.hw.snp_mmu import SnpMmu
from unicorn import x86_const as X

__all__ = ["OsValidation", "pvalidate"]

_CF = 1


def pvalidate(mmu: SnpMmu, read: Callable[[int], int], write: Callable[[int, int], None],
              flush: Callable[[], None], addr: int, length: int
              ) -> VmExit | GuestPageFault | None:
    """Execute PVALIDATE at `addr`; None when it completed (RIP moved past it), else the fault
    (for the guest) or the exit (for the hypervisor) it raised, RIP left for the caller."""
    gva = read(X.UC_X86_REG_RAX)
    size = read(X.UC_X86_REG_RCX) & 0xFFFFFFFF
    validate = bool(read(X.UC_X86_REG_RDX) & 1)
    status, changed = FAIL_INPUT, False
    if size == 1:
        status = FAIL_SIZEMISMATCH
    elif size == 0:
        for _ in range(8):
            try:
                t = mmu.walk(gva, ACCESS_READ, read(X.UC_X86_REG_CR3))
                break
            except NeedsRetry:
                flush()
            except GuestPageFault as f:
                return f
            except NestedFault as f:
                return NpfExit(f.gpa, f.error_code)
        else:  # cannot happen: each retry resolves the conflict it found
            return InternalErrorExit(f"PVALIDATE at {addr:#x}: the page walk kept conflicting")
        rmp = mmu.rmp
        entry_ok = rmp.guest_check(t.spa, mmu.asid, t.gpa, True)
        if entry_ok & RMP_NPF:
            return NpfExit(t.gpa, RMP_NPF | NPF_ENC | 1 << 32 | 4 | 1)
        status, changed = rmp.pvalidate(t.spa, mmu.asid, t.gpa, validate)
        if changed and not validate:
            mmu.rescinded()
            flush()  # this core's TLB may map the page: the next access must fault
    rflags = read(X.UC_X86_REG_RFLAGS)
    rflags = (rflags & ~_CF) | (_CF if status == 0 and not changed else 0)
    write(X.UC_X86_REG_RFLAGS, rflags)
    write(X.UC_X86_REG_RAX, status)
    write(X.UC_X86_REG_RIP, addr + length)
    return None


class OsValidation:
    """PVALIDATE and RMPADJUST for an operating system's core (hv.hw.oscpu), whose guest RAM is
    one range of host memory [ram_spa, ram_spa + ram_size) at guest-physical 0: the core
    translates the instruction's address through the guest's tables and asks here with the GPA.

    That core runs on Unicorn's own MMU, so the RMP is consulted at these instructions and at
    the hypervisor's accesses (host writes to guest pages fail), not at each guest access: a
    kernel touching a page it has not validated gets no #VC here (docs/linux.md)."""

    def __init__(self, rmp, ram_spa: int, ram_size: int, asid: int):
        self.rmp, self.ram_spa, self.ram_size, self.asid = rmp, ram_spa, ram_size, asid

    def _matches(self, gpa: int) -> bool:
        """The RMP entry of `gpa`'s page is this guest's at that GPA (else: a nested page fault
        with the RMP bit, the hypervisor's to handle)."""
        gpa &= ~0xFFF
        return (0 <= gpa < self.ram_size
                and not self.rmp.guest_check(self.ram_spa + gpa, self.asid, gpa, True) & RMP_NPF)

    def pvalidate(self, gpa: int, size: int, validate: bool) -> tuple[int, bool] | None:
        """(status, changed) of PVALIDATE of the page at `gpa` (RCX = `size`), None for an RMP
        nested page fault."""
        if size == 1:
            return FAIL_SIZEMISMATCH, False  # 4 KiB RMP entries only: Linux falls back to 4K
        if size != 0:
            return FAIL_INPUT, False
        if not self._matches(gpa):
            return None
        page = gpa & ~0xFFF
        return self.rmp.pvalidate(self.ram_spa + page, self.asid, page, validate)

    def rmpadjust(self, gpa: int, size: int, attrs: int) -> int | None:
        """The status of RMPADJUST of the page at `gpa` with RDX = `attrs` (target VMPL [7:0],
        permissions [15:8], VMSA [16]), None for an RMP nested page fault. The guest runs at
        VMPL0, so VMPL1-3 may be adjusted and VMPL0 may not (FAIL_PERMISSION: what Linux's
        check that it runs at VMPL0 looks for); VMPL permissions are not kept (nothing runs at
        the lower levels), and making a VMSA (for another vCPU) is FAIL_INPUT: one vCPU."""
        target = attrs & 0xFF
        if size == 1:
            return FAIL_SIZEMISMATCH
        if size != 0 or target > 3 or attrs >> 17 or attrs & (1 << 16):
            return FAIL_INPUT
        if not self._matches(gpa):
            return None
        return FAIL_PERMISSION if target == 0 else 0
