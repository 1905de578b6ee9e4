"""A02: cold boot (Halderman et al., "Lest We Remember", USENIX Security 2008).

A physical attacker freezes the DIMMs, and reads the cells: what DRAM stores, caches flushed,
no key applied. Without SME that is a plain VM's plaintext. SEV guests' private pages are stored
encrypted, and so is everything under transparent SME (TSME): the host key lives in the memory
controller and, like every VEK, is made new at each boot. The attack's second half re-imports
the frozen cells into a freshly powered machine and reads them through its (new) host key:
ciphertext from the old boot decrypts to garbage.

Against a kernel (`run_kernel`, hv.attacks.kernel_lab; a host without SME) the cells are frozen
at the power-off exit and the judge looks for the initramfs's marker file.
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

ID = "A02"
NAME = "cold boot"
PAPER = "Halderman et al., Lest We Remember: Cold Boot Attacks on Encryption Keys, USENIX Security 2008"
PRIMITIVES = ("Phys", "R")


def _freeze(lab: Lab | KernelLab) -> bytes:
    return lab.physical().cold_boot.dump()


def _attack(trial: Trial, tsme: bool) -> Findings:
    cells, lab = snoop(trial, _freeze, tsme=tsme, physical=True)
    marker = find_all(cells, SHARED_MARKER)
    # Power cycle: same cells, new machine, new keys. Read them back through the new host key.
    rebooted = lab.physical().power_cycle_read(cells)
    host = "host with TSME" if tsme else "host without SME"
    # The control is the guest's shared page, plaintext in DRAM; under TSME no cell is plaintext,
    # so there is no control to find (and its absence proves nothing either way).
    control = f"control marker at SPA {hexs(marker)}" if marker else "control marker NOT in the cells"
    if tsme and not marker:
        control = "no control: under TSME no cell holds plaintext, the shared page's neither"
    return Findings(f"{host}: froze {len(cells) >> 20} MiB of DRAM cells and read them after a power "
                    f"cycle through the new host key; {control}",
                    seen=_seen(cells, rebooted), control=None if tsme and not marker else bool(marker))


def _seen(cells: bytes, rebooted: bytes) -> tuple[Seen, Seen]:
    return (Seen("the raw DRAM cells", cells, space="SPA"),
            Seen("the cells read through the new host key", rebooted, space="SPA"))


def run(mode: str, *, tsme: bool = False) -> Outcome:
    return judge(ID, mode, lambda trial: _attack(trial, tsme))


def _attack_kernel(trial: KernelTrial) -> Findings:
    cells, lab = snoop_kernel(trial, _freeze, physical=True)
    rebooted = lab.physical().power_cycle_read(cells)
    return Findings(f"host without SME: froze {len(cells) >> 20} MiB of DRAM cells at the kernel's "
                    f"power-off and read them after a power cycle through the new host key; {NO_CONTROL}",
                    seen=_seen(cells, rebooted))


def run_kernel(mode: str, files: KernelFiles) -> Outcome:
    return judge_kernel(ID, mode, files, _attack_kernel)
