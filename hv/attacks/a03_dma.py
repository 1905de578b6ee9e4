"""A03: DMA read by a bus-mastering device.

A device (or a hypervisor programming one) reads host memory with no guest key: the memory
controller gives DMA the host's view (ASID 0). A plain VM's pages come back in plaintext, an SEV
guest's private pages as ciphertext, and the pages the guest shares for I/O (bounce buffers,
SWIOTLB) in plaintext by design: the guest's shared page is the honest control.

Against a kernel (`run_kernel`, hv.attacks.kernel_lab) the device reads guest memory at the
power-off exit and the judge looks for the initramfs's marker file.
"""

from __future__ import annotations

from hv.attacks.evidence import find_all, hexs
from hv.attacks.findings import Findings, Seen
from hv.attacks.kernel_lab import NO_CONTROL, KernelFiles, KernelLab
from hv.attacks.lab import SHARED_MARKER, Lab
from hv.attacks.outcome import Outcome
from hv.attacks.snoop import snoop, snoop_kernel
from hv.attacks.verdict import KernelTrial, Trial, judge, judge_kernel
from hv.hw.addr import GPA

__all__ = ["ID", "NAME", "PAPER", "PRIMITIVES", "run", "run_kernel"]

ID = "A03"
NAME = "DMA read"
PAPER = "device DMA under SME/SEV (AMD memory encryption whitepaper, 2016; Linux SWIOTLB)"
PRIMITIVES = ("Phys", "R")


def _dma(lab: Lab | KernelLab) -> tuple[int, bytes]:
    base = lab.vm.gpa_to_spa(GPA(0))
    return base, lab.physical().dma.read(base, lab.config.mem_size)


def _attack(trial: Trial) -> Findings:
    (base, data), _lab = snoop(trial, _dma, physical=True)
    marker = [base + m for m in find_all(data, SHARED_MARKER)]
    control = f"DMA of the shared page at SPA {hexs(marker)} returns the marker" if marker else \
        "the shared page's marker was NOT seen"
    return Findings(f"a device read all {len(data) >> 20} MiB of guest memory by DMA; {control}",
                    seen=(Seen("the DMA read", data, base, "SPA"),), control=bool(marker))


def run(mode: str) -> Outcome:
    return judge(ID, mode, _attack)


def _attack_kernel(trial: KernelTrial) -> Findings:
    (base, data), _lab = snoop_kernel(trial, _dma, physical=True)
    return Findings(f"a device read all {len(data) >> 20} MiB of the kernel's memory by DMA at its "
                    f"power-off; {NO_CONTROL}", seen=(Seen("the DMA read", data, base, "SPA"),))


def run_kernel(mode: str, files: KernelFiles) -> Outcome:
    return judge_kernel(ID, mode, files, _attack_kernel)
