"""The CPUID table a guest sees: the host's, filtered the way KVM and QEMU filter it.

A hypervisor controls this table entirely; SEV does not protect it (a malicious hypervisor could
hide SEV from the guest, which is why the guest confirms with SEV_STATUS, which it cannot fake).
An SEV-SNP guest may instead be given the table as a CPUID page (`snp_cpuid_page`), which the PSP
checks against the platform at launch: the hypervisor can still hide features, no longer invent
them.
"""

from __future__ import annotations

from sevwire import SnpCpuidEntry, encode_snp_cpuid_page

from hv.kvm.mode import Mode

__all__ = ["cpuid_lookup", "guest_cpuid_table", "snp_cpuid_page"]

_INDEXED = (4, 7, 0xB, 0xD)  # leaves whose ECX selects a subleaf

_KVM_SIG = b"KVMKVMKVM\0\0\0"


def guest_cpuid_table(host_cpuid, vm_type: Mode, cbitpos: int) -> dict[tuple[int, int], tuple[int, int, int, int]]:
    """Entries keyed by (leaf, subleaf); leaves not listed read as zeros."""
    t: dict[tuple[int, int], tuple[int, int, int, int]] = {}
    for leaf in (0x0, 0x80000000, 0x80000001, 0x80000008):
        t[(leaf, 0)] = host_cpuid(leaf)
    a, b, c, d = host_cpuid(1)
    t[(1, 0)] = (a, b & 0x00FFFFFF, c | (1 << 31), d)  # hypervisor present; APIC id 0
    ebx, ecx, edx = (int.from_bytes(_KVM_SIG[i:i + 4], "little") for i in (0, 4, 8))
    t[(0x40000000, 0)] = (0x40000001, ebx, ecx, edx)
    if vm_type.encrypted:
        eax = 0x2 | (0x8 if vm_type.es else 0) | (0x10 if vm_type.snp else 0)
        # QEMU reports the C-bit and a reduced-phys-bits of 1; KVM clears the rest of EBX.
        t[(0x8000001F, 0)] = (eax, cbitpos | (1 << 6), 0, 0)
    return t


def cpuid_lookup(table, leaf: int, subleaf: int) -> tuple[int, int, int, int]:
    """What CPUID returns for (leaf, subleaf) from a guest table: the intercept and the SEV-ES
    GHCB paths (CPUID exit 0x72, the MSR protocol's CPUID request) answer the same."""
    return table.get((leaf, subleaf if leaf in _INDEXED else 0), (0, 0, 0, 0))


def snp_cpuid_page(table) -> bytes:
    """The CPUID page (SNP_LAUNCH_UPDATE page type 6) of a VM's table: one entry per (leaf,
    subleaf), in that order, with XCR0 and XSS inputs of zero, except for leaf 0xD's subleaves
    0 and 1, whose entries are for XCR0 = 1 (x87 only, the legacy save area): the only ones a
    Linux guest takes for them. FieldRangeError (a ValueError) for more than 64 entries."""
    return encode_snp_cpuid_page(
        SnpCpuidEntry(leaf, subleaf, int(leaf == 0xD and subleaf in (0, 1)), 0, *regs)
        for (leaf, subleaf), regs in sorted(table.items()))
