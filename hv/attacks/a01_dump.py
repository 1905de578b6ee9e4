"""A01: the hypervisor dumps guest memory (the baseline every SEV paper starts from).

A hypervisor maps all of guest RAM into its own address space (QEMU's memory slots), so it can
read every page at any exit. On a plain VM that is the guest's plaintext. Under SEV the memory
controller encrypts private pages with the guest's VEK, which only the PSP knows, so the same
read returns ciphertext. Shared (C=0) pages stay plaintext by design: the control that keeps
this test honest is the HV-SHARED-MARKER the guest put in its shared page, which must be found.
"""

from __future__ import annotations

from hv.attacks.evidence import find_all, hexs
from hv.attacks.findings import Findings, Seen
from hv.attacks.lab import SHARED_MARKER, Lab
from hv.attacks.outcome import Outcome
from hv.attacks.snoop import snoop
from hv.attacks.verdict import Trial, judge

__all__ = ["ID", "NAME", "PAPER", "PRIMITIVES", "run"]

ID = "A01"
NAME = "guest memory dump"
PAPER = "baseline of the SEV threat model (AMD memory encryption whitepaper, 2016)"
PRIMITIVES = ("R",)


def _read(lab: Lab) -> bytes:
    """All of guest memory as the hypervisor reads it, at an exit while the secret is live."""
    return lab.vmm.dump_guest_memory()


def _attack(trial: Trial) -> Findings:
    dump, _lab = snoop(trial, _read)
    marker = find_all(dump, SHARED_MARKER)
    control = f"control {SHARED_MARKER.decode()} at GPA {hexs(marker)}" if marker else \
        f"control {SHARED_MARKER.decode()} NOT found"
    return Findings(f"read the guest's {len(dump) >> 20} MiB at an exit; {control}",
                    seen=(Seen("the dump", dump),), control=bool(marker))


def run(mode: str) -> Outcome:
    return judge(ID, mode, _attack)
