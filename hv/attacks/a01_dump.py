"""A01: the hypervisor dumps guest memory (the baseline every SEV paper starts from).

A hypervisor maps all of guest RAM into its own address space (QEMU's memory slots), so it can
read every page at any exit. On a plain VM that is the guest's plaintext. Under SEV the memory
controller encrypts private pages with the guest's VEK, which only the PSP knows, so the same
read returns ciphertext. Shared (C=0) pages stay plaintext by design: the control that keeps
this test honest is the HV-SHARED-MARKER the guest put in its shared page, which must be found.

Against a kernel (`run_kernel`, hv.attacks.kernel_lab) the dump is read at the power-off exit and
the judge looks for the initramfs's marker file, which the kernel unpacked into its page cache.
"""

from __future__ import annotations

from hv.attacks.evidence import find_all, hexs
from hv.attacks.findings import Findings, Seen
from hv.attacks.kernel_lab import NO_CONTROL, KernelFiles, KernelLab
from hv.attacks.lab import SHARED_MARKER, Lab
from hv.attacks.outcome import Outcome
from hv.attacks.snoop import snoop, snoop_kernel
from hv.attacks.verdict import KernelTrial, Trial, judge, judge_kernel

__all__ = ["ID", "NAME", "PAPER", "PRIMITIVES", "run", "run_kernel"]

ID = "A01"
NAME = "guest memory dump"
PAPER = "baseline of the SEV threat model (AMD memory encryption whitepaper, 2016)"
PRIMITIVES = ("R",)


def _read(lab: Lab | KernelLab) -> bytes:
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


def _attack_kernel(trial: KernelTrial) -> Findings:
    dump, _lab = snoop_kernel(trial, _read)
    return Findings(f"read the kernel's {len(dump) >> 20} MiB at its power-off exit; {NO_CONTROL}",
                    seen=(Seen("the dump", dump),))


def run_kernel(mode: str, files: KernelFiles) -> Outcome:
    return judge_kernel(ID, mode, files, _attack_kernel)
