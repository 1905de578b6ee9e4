"""What the emulated processor itself reports through CPUID: an EPYC-like part with SME, SEV,
SEV-ES and SEV-SNP.

These are the host's values (as `cpuid` on the bare-metal host would show them). What a guest
sees is the hypervisor's business: KVM filters this table and a malicious hypervisor may lie,
which is why SEV guests must not trust CPUID for security decisions.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CpuModel", "DEFAULT_CBITPOS", "EPYC"]

DEFAULT_CBITPOS = 47


@dataclass(frozen=True)
class CpuModel:
    name: str = "hv emulated EPYC"
    cbitpos: int = DEFAULT_CBITPOS
    phys_bits: int = 48
    phys_reduction: int = 5
    max_asid: int = 509          # CPUID 0x8000001F ECX
    min_sev_asid: int = 0x80     # CPUID 0x8000001F EDX: 1..0x7F are for SEV-ES/SNP guests
    sev_es: bool = True
    sev_snp: bool = True         # hv launches SEV-SNP guests (the RMP, SNP firmware): say so

    def host_cpuid(self, leaf: int, subleaf: int = 0) -> tuple[int, int, int, int]:
        """(EAX, EBX, ECX, EDX) of the bare-metal processor."""
        if leaf == 0:
            return 0x10, *_vendor()
        if leaf == 1:
            # Family 0x19 (Zen 3), no hypervisor bit on bare metal; SSE2/FXSR/APIC/MSR/TSC/PAE...
            return 0x00A00F11, 0x00000800, 0x7ED8320B, 0x178BFBFF
        if leaf == 0x80000000:
            return 0x80000021, *_vendor()
        if leaf == 0x80000001:
            return 0x00A00F11, 0, 0x75C237FF, 0x2FD3FBFF  # LM, NX, SVM...
        if leaf == 0x80000007:
            return 0, 0, 0, 1 << 8  # invariant TSC, as on Zen 3 parts
        if leaf == 0x80000008:
            return 0x3000 | self.phys_bits, 0, 0, 0
        if leaf == 0x8000001F:
            eax = 0x1 | 0x2 | 0x4 | (0x8 if self.sev_es else 0) | (0x10 if self.sev_snp else 0)
            ebx = self.cbitpos | (self.phys_reduction << 6)
            return eax, ebx, self.max_asid, self.min_sev_asid
        return 0, 0, 0, 0


def _vendor() -> tuple[int, int, int]:
    b = b"AuthenticAMD"
    return (int.from_bytes(b[0:4], "little"), int.from_bytes(b[8:12], "little"),
            int.from_bytes(b[4:8], "little"))


EPYC = CpuModel()
