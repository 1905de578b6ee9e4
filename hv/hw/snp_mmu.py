"""The MMU of an SEV-SNP guest: the ordinary walk, then the RMP check of every page it reaches.

On SNP hardware the table walker checks the RMP entry of the host page at the end of the nested
walk (and of every guest page-table page it reads, since those reads are private). hv does the
same in the TLB fill hook, so the check is paid once per page fill, never per instruction; plain,
SEV and SEV-ES guests keep the plain `Mmu` and pay nothing.

Outcomes (hv.hw.rmp.Rmp.guest_check):
- the nested mapping disagrees with the entry: NestedFault with EXITINFO1 bit 31 (RMP), for the
  hypervisor; the guest never sees the page. This is what defeats SEVered-style remapping and
  ciphertext block moves: the page the hypervisor substituted is owned by another GPA.
- a private access to a matching page the guest has not validated: GuestVcFault, #VC in the
  guest with error code VC_UNVALIDATED. RMPUPDATE clears `validated`, so a page that the
  hypervisor took away and gave back (replay, swap) announces itself to the guest.
"""

from __future__ import annotations

from hv.hw.memctl import MemoryController
from hv.hw.mmu import ACCESS_FETCH, ACCESS_WRITE, GuestPageFault, Mmu, NestedFault, Translation
from hv.hw.npt import NestedPageTable
from hv.hw.rmp import VC_UNVALIDATED, Rmp

__all__ = ["GuestVcFault", "SnpMmu"]

_FINAL, _TABLE = 1 << 32, 1 << 33


class GuestVcFault(GuestPageFault):
    """#VC for the guest (vector 29) raised by the RMP check, not by an intercept."""

    vector = 29

    def __init__(self, address: int, error_code: int):
        super().__init__(address, error_code)
        self.args = (f"#VC at {address:#x} (error code {error_code:#x})",)


class SnpMmu(Mmu):
    def __init__(self, mc: MemoryController, npt: NestedPageTable, asid: int, cbitpos: int):
        if mc.rmp is None:
            raise ValueError("an SEV-SNP guest needs the RMP: SNP_INIT has not run")
        super().__init__(mc, npt, asid, True, cbitpos)
        self.rmp: Rmp = mc.rmp

    def _check(self, spa: int, gpa: int, gva: int, private: bool, access: int, where: int) -> None:
        why = self.rmp.guest_check(spa, self.asid, gpa, private)
        if not why:
            return
        if why == VC_UNVALIDATED:
            raise GuestVcFault(gva, VC_UNVALIDATED)
        info = why | where | 1 | (2 if access == ACCESS_WRITE else 0) | 4 | \
            (16 if access == ACCESS_FETCH else 0)
        raise NestedFault(gpa, info)

    def _table_entry(self, table_gpa: int, index: int, gva: int, access: int) -> int:
        gpa = table_gpa + index * 8
        hit = self.npt.lookup(gpa)
        if hit is not None:  # guest page tables are always read private
            self._check(hit[0], gpa, gva, True, access, _TABLE)
        return super()._table_entry(table_gpa, index, gva, access)

    def translate(self, gva: int, access: int, cr3: int) -> Translation:
        t = super().translate(gva, access, cr3)
        self._check(t.spa, t.gpa, gva, t.c_bit or access == ACCESS_FETCH, access, _FINAL)
        return t

    def check_vmsa(self, spa: int | None) -> str | None:
        """VMRUN's RMP check of the save area: it must be this guest's page with the VMSA bit
        (set by SNP_LAUNCH_UPDATE), so a hypervisor cannot run the guest on a page it swapped,
        replayed or made itself. None if it passes, else why VMRUN fails."""
        if spa is None or spa % 0x1000 or not 0 <= spa < self.rmp.pages << 12:
            return "SEV-SNP VMRUN without a VMSA page"
        e = self.rmp.read(spa)
        if not (e.assigned and e.asid == self.asid and e.vmsa):
            return f"SEV-SNP VMRUN: the VMSA page {spa:#x} is not this guest's VMSA in the RMP"
        return None

    def rescinded(self) -> None:
        """A page lost its validated bit: every core's TLB entries must go (INVLPGA by the CPU)."""
        self._mc.bump()

    def walk(self, gva: int, access: int, cr3: int) -> Translation:
        """The translation without the RMP check of the final page (for PVALIDATE, which is
        what makes that page pass the check)."""
        return Mmu.translate(self, gva, access, cr3)
