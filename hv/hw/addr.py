"""The three address spaces of an SEV machine, as distinct types for the type checker.

- GVA: guest-virtual, what the guest's own page tables translate (its C-bit lives there);
- GPA: guest-physical, what the nested page table the hypervisor owns translates;
- SPA: system-physical (host-physical), where DRAM is, and what the memory encryption tweak is
  computed from.

Mixing them is this project's most dangerous bug class: the AES-XEX tweak is keyed by the SPA,
so code that hands a GPA where an SPA belongs still "works" on an identity-mapped test guest and
encrypts at the wrong place on any other. rust-vmm's `GuestAddress` idea, at no run-time cost:
`typing.NewType` values are plain ints at run time, but mypy (run by the test suite over hv.hw,
hv.kvm and hv.attacks) refuses a GPA where an SPA is expected. Convert explicitly and only where
a translation happens (the nested page table, the guest's page walk) or where a number becomes an
address (a constant of the boot layout, an exit's field).
"""

from __future__ import annotations

from typing import NewType

__all__ = ["GPA", "GVA", "SPA"]

GVA = NewType("GVA", int)
GPA = NewType("GPA", int)
SPA = NewType("SPA", int)
