"""The Reverse Map Table (RMP): who owns each host page, at which GPA, and whether it is validated.

SEV-SNP adds integrity to SEV's confidentiality by giving the memory controller one entry per
4 KiB host page. The entry says whether the page is *assigned* (to a guest, or with ASID 0 to the
firmware), the owner's ASID, the one GPA the owner may reach it at, the page size, whether the
guest has *validated* it (PVALIDATE), whether it is a VMSA and whether it is *immutable* (only the
PSP may change it). Three checks follow from it:

- host and device writes to an assigned page fail (on hardware: #PF with error bit 31); reads
  still return what DRAM stores, i.e. ciphertext. This stops replay and direct corruption.
- a guest access whose nested mapping disagrees with the entry (another ASID, another GPA, a
  shared access to a private page, a private access to a hypervisor page) is a nested page fault
  with bit 31 (RMP) for the hypervisor. This stops SEVered-style remapping.
- a private access to an assigned, matching page the guest has not validated is #VC in the guest.
  RMPUPDATE always clears `validated`, so a page the hypervisor took away and gave back (moved,
  swapped, replayed) can no longer be used silently: the guest sees it.

The table is numpy arrays indexed by host page frame: checks are page-granular and happen in the
TLB fill hook and at RMPUPDATE / PVALIDATE, never per instruction. Only SNP guests consult it;
host-port checks cost one vectorised test per request once SNP is enabled, nothing before.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hv.hw.errors import HwError

__all__ = ["FAIL_INPUT", "FAIL_PERMISSION", "FAIL_SIZEMISMATCH", "PVALIDATE_OK", "RMP_NPF",
           "RMPUPDATE_OK", "Rmp", "RmpEntry", "RmpViolation", "VC_UNVALIDATED"]

PVALIDATE_OK = RMPUPDATE_OK = 0
FAIL_INPUT, FAIL_PERMISSION, FAIL_SIZEMISMATCH = 1, 2, 6
RMP_NPF = 1 << 31  # EXITINFO1 bit of a nested page fault caused by an RMP check
NPF_ENC = 1 << 34  # ... made by a private (C=1) access
VC_UNVALIDATED = 0x404  # #VC error code of a private access to a page the guest did not validate
_PAGE_2M = 1


class RmpViolation(HwError):
    """A host or device write to a page the RMP assigns to a guest or to the firmware.

    The hardware raises #PF with error bit 31 in the host; nothing is written."""


@dataclass(frozen=True)
class RmpEntry:
    """One entry as RMPREAD reports it (plus the validated and VMSA bits the CPU keeps)."""

    assigned: bool = False
    asid: int = 0
    gpa: int = 0
    page_size: int = 0  # 0 = 4K, 1 = 2M
    immutable: bool = False
    validated: bool = False
    vmsa: bool = False


class Rmp:
    """One RMP entry per host page of DRAM."""

    def __init__(self, dram_size: int):
        n = dram_size >> 12
        self.assigned = np.zeros(n, dtype=bool)
        self.asid = np.zeros(n, dtype=np.uint16)
        self.gfn = np.zeros(n, dtype=np.uint64)
        self.size = np.zeros(n, dtype=np.uint8)
        self.immutable = np.zeros(n, dtype=bool)
        self.validated = np.zeros(n, dtype=bool)
        self.vmsa = np.zeros(n, dtype=bool)
        self.pages = n

    def _pfn(self, spa: int) -> int:
        if not isinstance(spa, int) or spa % 0x1000 or not 0 <= spa >> 12 < self.pages:
            raise ValueError(f"{spa!r} is not a page-aligned host physical address in DRAM")
        return spa >> 12

    def read(self, spa: int) -> RmpEntry:
        """RMPREAD."""
        p = self._pfn(spa)
        return RmpEntry(bool(self.assigned[p]), int(self.asid[p]), int(self.gfn[p]) << 12,
                        int(self.size[p]), bool(self.immutable[p]), bool(self.validated[p]),
                        bool(self.vmsa[p]))

    # -- the hypervisor's instruction ----------------------------------------------------------------
    def rmpupdate(self, spa: int, entry: RmpEntry) -> int:
        """RMPUPDATE: set ownership of one page; `validated` and `vmsa` are always cleared.

        An immutable page (firmware pages, pages the launch is measuring) cannot be changed by the
        hypervisor: FAIL_PERMISSION. Only 4K entries are modelled: a 2M request is
        FAIL_SIZEMISMATCH (no PSMASH needed)."""
        p = self._pfn(spa)
        if self.immutable[p]:
            return FAIL_PERMISSION
        if entry.page_size == _PAGE_2M:
            return FAIL_SIZEMISMATCH
        if entry.assigned and (entry.gpa % 0x1000 or not 0 <= entry.gpa < 1 << 52):
            return FAIL_INPUT
        self._set(p, entry.assigned, entry.asid if entry.assigned else 0,
                  entry.gpa if entry.assigned else 0, entry.immutable, False, False)
        return RMPUPDATE_OK

    def _set(self, p: int, assigned: bool, asid: int, gpa: int, immutable: bool, validated: bool,
             vmsa: bool) -> None:
        self.assigned[p] = assigned
        self.asid[p] = asid
        self.gfn[p] = gpa >> 12
        self.size[p] = 0
        self.immutable[p] = immutable
        self.validated[p] = validated
        self.vmsa[p] = vmsa

    # -- the firmware's transitions (the PSP writes the RMP directly) ----------------------------------
    def firmware_set(self, spa: int, entry: RmpEntry) -> None:
        """What the PSP does to an entry (SNP_LAUNCH_UPDATE, page reclaim): any state, any bits."""
        p = self._pfn(spa)
        self._set(p, entry.assigned, entry.asid, entry.gpa, entry.immutable, entry.validated,
                  entry.vmsa)

    # -- the guest's instruction --------------------------------------------------------------------
    def pvalidate(self, spa: int, asid: int, gpa: int, validate: bool) -> tuple[int, bool]:
        """PVALIDATE a page the guest's tables map at `gpa`: (status, changed).

        The caller has already checked that the entry matches (see `guest_check`): a mismatch is a
        nested page fault, not a status."""
        p = self._pfn(spa)
        if self.size[p] != 0:
            return FAIL_SIZEMISMATCH, False
        if bool(self.validated[p]) == validate:
            return PVALIDATE_OK, False
        self.validated[p] = validate
        return PVALIDATE_OK, True

    # -- checks -------------------------------------------------------------------------------------
    def check_host_write(self, spa: int, length: int) -> None:
        """RmpViolation if [spa, spa+length) touches an assigned page (guest's or firmware's)."""
        if length <= 0:
            return
        p0, p1 = spa >> 12, (spa + length + 0xFFF) >> 12
        hit = np.flatnonzero(self.assigned[p0:p1])
        if hit.size:
            p = p0 + int(hit[0])
            owner = f"ASID {int(self.asid[p])}" if self.asid[p] else "the firmware"
            raise RmpViolation(f"RMP: host write to page {p << 12:#x}, which is assigned to {owner}")

    def guest_check(self, spa: int, asid: int, gpa: int, private: bool) -> int:
        """The CPU's RMP check of one guest access (page granular): 0 if allowed, else why not.

        Returns RMP_NPF (| NPF_ENC for a private access) when the nested mapping and the entry
        disagree, VC_UNVALIDATED when a matching private page has not been validated."""
        p = spa >> 12
        if not private:
            return RMP_NPF if self.assigned[p] else 0
        if (not self.assigned[p] or int(self.asid[p]) != asid or int(self.gfn[p]) != gpa >> 12):
            return RMP_NPF | NPF_ENC
        if not self.validated[p]:
            return VC_UNVALIDATED
        return 0
