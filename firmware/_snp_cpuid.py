"""The CPUID page's check at SNP_LAUNCH_UPDATE (page type 6): hv's model of AMD's CPUID policy.

An SEV-SNP guest answers CPUID from the table in this page rather than from the hypervisor, so
the PSP checks that the table claims nothing the platform does not have: a guest told of a
feature that is absent (or of a vendor, family, C-bit position or address width that is not the
platform's) could take a path that faults or, worse, encrypts with the wrong C-bit. The
hypervisor stays free to hide features and to say anything in the registers the policy does not
cover (its own leaves 0x40000000.., APIC IDs, topology, cache sizes).

The policy, register by register ("subset": only bits the platform sets; "equal": the
platform's value; "at most": not above it):

    leaf 0x0, 0x80000000   EAX (highest leaf) at most; EBX, ECX, EDX (the vendor) equal
    leaf 0x1               EAX (family/model/stepping) equal; ECX subset, except bit 31
                           (hypervisor present), which a guest may always be told; EDX subset;
                           EBX free (APIC ID, CLFLUSH size, logical processor count)
    leaf 0x7, any subleaf  EBX, ECX, EDX subset
    leaf 0x80000001        ECX, EDX subset
    leaf 0x80000007        EDX subset
    leaf 0x80000008        EAX[7:0] (physical address bits) and EAX[15:8] (linear) each at most
    leaf 0x8000001F        EAX subset; EBX[5:0] (the C-bit position) equal
    every other leaf and register is free, as is every leaf above the platform's highest

Each entry is checked against the platform's answer for its own EAX and ECX inputs, and by the
rules of its leaf whatever its ECX input: the guest (Linux's `snp_cpuid_get_validated_func`)
matches leaves other than the indexed ones (7, 0xB, 0xD...) on EAX alone, so a leaf 1 entry with
subleaf 5 must not escape the leaf 1 rules. The count must be at most 64 and every
reserved field zero. A refused table is corrected (subset -> value & platform, equal -> the
platform's value, at most -> the smaller, count -> 64, reserved -> 0) for the hypervisor to read.

AMD's firmware (AMD-ASPFW `cpuid_lookup.c`) knows every leaf of its part: it also requires the
leaves it does not list to read as zeros, checks leaf 0xD's save-area sizes against xcr0_in and
xss_in, and allows a family/model/stepping at or below the part's. hv checks the leaves whose
lies would matter to its guests and leaves the rest to the hypervisor.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from sevwire import SnpCpuidEntry, decode_snp_cpuid_page, encode_snp_cpuid_page

__all__ = ["sanitize_cpuid_page"]

HostCpuid = Callable[[int, int], tuple[int, int, int, int]]
Rule = Callable[[int, int], int]
"""(the table's value, the platform's) -> the value the policy allows."""

HYPERVISOR_PRESENT = 1 << 31  # CPUID 1 ECX
EXTENDED = 0x80000000


def _free(value: int, _platform: int) -> int:
    return value


def _equal(_value: int, platform: int) -> int:
    return platform


def _subset(value: int, platform: int) -> int:
    return value & platform


def _at_most(value: int, platform: int) -> int:
    return min(value, platform)


def _features_but_hypervisor(value: int, platform: int) -> int:
    return value & (platform | HYPERVISOR_PRESENT)


def _address_sizes(value: int, platform: int) -> int:
    physical = min(value & 0xFF, platform & 0xFF)
    linear = min((value >> 8) & 0xFF, (platform >> 8) & 0xFF)
    return (value & ~0xFFFF) | linear << 8 | physical


def _cbit_position(value: int, platform: int) -> int:
    return (value & ~0x3F) | (platform & 0x3F)


RULES: dict[int, tuple[Rule, Rule, Rule, Rule]] = {
    # leaf:       EAX,            EBX,             ECX,                       EDX
    0x0:         (_at_most,       _equal,          _equal,                    _equal),
    0x1:         (_equal,         _free,           _features_but_hypervisor,  _subset),
    0x7:         (_free,          _subset,         _subset,                   _subset),
    0x80000000:  (_at_most,       _equal,          _equal,                    _equal),
    0x80000001:  (_free,          _free,           _subset,                   _subset),
    0x80000007:  (_free,          _free,           _free,                     _subset),
    0x80000008:  (_address_sizes, _free,           _free,                     _free),
    0x8000001F:  (_subset,        _cbit_position,  _free,                     _free),
}


def sanitize_cpuid_page(page: bytes, host_cpuid: HostCpuid) -> bytes:
    """The CPUID page `page` (4096 bytes, any contents) as the policy allows it: its entries
    corrected against `host_cpuid(leaf, subleaf)` (at most 64 of them, reserved fields zero),
    the rest of the page zero. The table is acceptable when nothing in it changed
    (sevwire.snp_cpuid_changes is empty)."""
    entries, _problems = decode_snp_cpuid_page(page)  # the comparison shows the problems
    return encode_snp_cpuid_page(_sanitize(e, host_cpuid) for e in entries)


def _sanitize(entry: SnpCpuidEntry, host_cpuid: HostCpuid) -> SnpCpuidEntry:
    leaf = entry.eax_in
    rules = RULES.get(leaf)
    if rules is None or leaf > host_cpuid(leaf & EXTENDED, 0)[0]:
        return dataclasses.replace(entry, reserved=0)
    platform = host_cpuid(leaf, entry.ecx_in)  # the platform's CPUID ignores ECX where it should
    eax, ebx, ecx, edx = (rule(value, host) for rule, value, host in zip(rules, entry.regs,
                                                                         platform))
    return dataclasses.replace(entry, eax=eax, ebx=ebx, ecx=ecx, edx=edx, reserved=0)
