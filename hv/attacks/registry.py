"""The catalogue of implemented attacks, in attacks.md order, and the matrix over modes."""

from __future__ import annotations

from types import ModuleType
from typing import Callable, Iterable

from hv.attacks import (a01_dump, a02_cold_boot, a03_dma, a04_registers, a05_replay, a07_severed,
                        a09_sevurity, a11_cipherleaks, a13_undeserved, a14_page_faults,
                        a15_launch_injection, a16_debug_policy)
from hv.attacks.outcome import MODES, Outcome

__all__ = ["ATTACKS", "KERNEL_ATTACKS", "PRIMITIVE_CODES", "by_id", "run_matrix"]

ATTACKS: tuple[ModuleType, ...] = (
    a01_dump, a02_cold_boot, a03_dma, a04_registers, a05_replay, a07_severed, a09_sevurity,
    a11_cipherleaks, a13_undeserved, a14_page_faults, a15_launch_injection, a16_debug_policy,
)

# The attacks that also take a Linux kernel (`run_kernel(mode, KernelFiles)`, hv.attacks.kernel_lab):
# the memory reads, whose secret is a file in the initramfs; A04, whose secret is the kernel's
# own registers at its exits; A05 and A07, whose effect is on the kernel's own plaintext. The
# others need the service guest.
KERNEL_ATTACKS: tuple[ModuleType, ...] = (a01_dump, a02_cold_boot, a03_dma, a04_registers,
                                          a05_replay, a07_severed)

# What each code in an attack's PRIMITIVES lets the hypervisor do (the codes of attacks.md).
PRIMITIVE_CODES: dict[str, str] = {
    "R": "read raw DRAM at a host physical address (private pages: ciphertext)",
    "W": "write raw DRAM",
    "M": "remap a guest page to another host page in the nested page table",
    "T": "trap accesses: a nested page fault names each page the guest touches",
    "X": "read or change the guest's registers at an exit",
    "P": "send commands to the PSP (the SEV firmware)",
    "Phys": "a physical attacker: a DRAM probe, cold boot or a DMA device",
}


def by_id(name: str) -> ModuleType:
    """An attack by id ("A07", "a7") or module name ("a07_severed")."""
    key = name.strip().lower()
    for a in ATTACKS:
        if key in (a.ID.lower(), a.__name__.rsplit(".", 1)[1], f"a{int(a.ID[1:])}"):
            return a
    raise KeyError(f"no attack {name!r} (try one of {', '.join(a.ID for a in ATTACKS)})")


def run_matrix(modes: Iterable[str] = MODES, attacks: Iterable[ModuleType] = ATTACKS,
               progress: Callable[[int, int, str, str, Outcome], None] | None = None,
               ) -> list[Outcome]:
    """Every attack in every mode: one cell each, none skipped. A cell whose experiment broke
    is an `error` cell that says why (hv.attacks.verdict), and the matrix goes on.

    `progress(done, total, attack_id, mode, outcome)` is called as each cell ends."""
    modes, attacks = tuple(modes), tuple(attacks)
    total = len(modes) * len(attacks)
    cells: list[Outcome] = []
    for attack in attacks:
        for mode in modes:
            cells.append(attack.run(mode))
            if progress is not None:
                progress(len(cells), total, attack.ID, mode, cells[-1])
    return cells
