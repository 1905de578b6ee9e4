"""The VMSA (SEV-ES save area): the 4 KiB page that holds an SEV-ES or SEV-SNP guest's registers.

Its layout is the hardware's, not hv's: the CPU saves registers there at every #VMEXIT and loads
them at VMRUN, the PSP measures and edits the first one (LAUNCH_UPDATE_VMSA, SNP_LAUNCH_UPDATE),
and the guest owner predicts that first page byte for byte. So the offsets live here, once, for
the machine (hv.hw.vmsa), the firmware, the hypervisor and the boot protocol (hv.boot).

The offsets are AMD's save-area layout (es-snp-reference section 1; Linux `struct sev_es_save_area`).
"""

from __future__ import annotations

import hashlib

__all__ = [
    "EFER_SVME",
    "VMSA_CPL",
    "VMSA_INTEGRITY_END",
    "VMSA_QWORDS",
    "VMSA_SEGMENTS",
    "VMSA_SIZE",
    "VMSA_TMR_RESERVED",
    "VMSA_TMR_SLOT",
    "vmsa_integrity",
]

VMSA_SIZE = 0x1000

# Segment registers: 16 bytes each from 0x000 (selector u16, attrib u16, limit u32, base u64).
VMSA_SEGMENTS = {"es": 0x000, "cs": 0x010, "ss": 0x020, "ds": 0x030, "fs": 0x040, "gs": 0x050,
                 "gdtr": 0x060, "ldtr": 0x070, "idtr": 0x080, "tr": 0x090}
VMSA_CPL = 0x0CB  # u8

# Every 64-bit field hv keeps in the save area, by the name KVM's register interfaces use.
VMSA_QWORDS = {
    "efer": 0x0D0, "cr4": 0x148, "cr3": 0x150, "cr0": 0x158, "dr7": 0x160, "dr6": 0x168,
    "rflags": 0x170, "rip": 0x178, "rsp": 0x1D8, "rax": 0x1F8, "kernel_gs_base": 0x220,
    "cr2": 0x240, "g_pat": 0x268,
    "rcx": 0x308, "rdx": 0x310, "rbx": 0x318, "rbp": 0x328, "rsi": 0x330, "rdi": 0x338,
    "r8": 0x340, "r9": 0x348, "r10": 0x350, "r11": 0x358, "r12": 0x360, "r13": 0x368,
    "r14": 0x370, "r15": 0x378,
    "sev_features": 0x3B0, "xcr0": 0x3E8,
}

# What the PSP writes into the VMSA after measuring it (AMD's SEV-ES firmware does the same):
# 0 at 0x380 and, at 0x388, the system-physical address of the slot in its trusted memory region
# (TMR) that holds the page's integrity value. Both sit inside the encrypted page, so the
# hypervisor can neither read nor redirect them. The integrity value covers bytes [0, 0xFC0).
VMSA_TMR_RESERVED = 0x380
VMSA_TMR_SLOT = 0x388
VMSA_INTEGRITY_END = 0xFC0

EFER_SVME = 0x1000
"""EFER bit 12. KVM runs every guest with it set in the VMCB save area, so the VMSA it launches
holds it (`svm_set_efer`; sev-snp-measure's VMSA: "KVM enables EFER_SVME"), and VMRUN refuses a
guest state without it (hv.hw.vmsa)."""


def vmsa_integrity(page) -> bytes:
    """The integrity value of a VMSA page's plaintext bytes [0, 0xFC0), kept in the TMR (`page`:
    any buffer of at least that many bytes, a numpy page included).

    AMD's firmware keeps a CRC64 there; any 64-bit check does here, because the hypervisor can
    reach neither the value (in the TMR) nor the plaintext. The firmware writes the first value
    (LAUNCH_UPDATE_VMSA), the CPU renews it at every #VMEXIT and checks it at every VMRUN."""
    return hashlib.blake2b(bytes(page[:VMSA_INTEGRITY_END]), digest_size=8, person=b"hv-vmsa").digest()
