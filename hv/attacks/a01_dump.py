"""A01: the hypervisor dumps guest memory (the baseline every SEV paper starts from).

A hypervisor maps all of guest RAM into its own address space (QEMU's memory slots), so it can
read every page at any exit. On a plain VM that is the guest's plaintext. Under SEV the memory
controller encrypts private pages with the guest's VEK, which only the PSP knows, so the same
read returns ciphertext. Shared (C=0) pages stay plaintext by design: the control that keeps
this test honest is the HV-SHARED-MARKER the guest put in its shared page, which must be found.
"""

from __future__ import annotations

from hv.attacks.evidence import find_all, find_windows, hexs
from hv.attacks.lab import SHARED_MARKER
from hv.attacks.outcome import Outcome
from hv.attacks.snoop import snoop

__all__ = ["ID", "NAME", "PAPER", "PRIMITIVES", "run"]

ID = "A01"
NAME = "guest memory dump"
PAPER = "baseline of the SEV threat model (AMD memory encryption whitepaper, 2016)"
PRIMITIVES = ("R",)


def run(mode: str) -> Outcome:
    dump, lab, secret = snoop(mode, lambda lab: lab.vmm.dump_guest_memory())
    hits = find_windows(dump, secret)
    marker = find_all(dump, SHARED_MARKER)
    control = f"control {SHARED_MARKER.decode()} at GPA {hexs(marker)}" if marker else \
        "control HV-SHARED-MARKER NOT found (the dump is broken)"
    if hits:
        return Outcome(ID, mode, "succeeded",
                       f"secret {secret[:16].decode()}... found at GPA {hexs(hits)} of the "
                       f"{len(dump) >> 20} MiB dump; {control}")
    return Outcome(ID, mode, "failed",
                   f"no 16-byte window of the {len(secret)}-byte secret in the {len(dump) >> 20} MiB "
                   f"dump (ciphertext); {control}")
