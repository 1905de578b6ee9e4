"""A03: DMA read by a bus-mastering device.

A device (or a hypervisor programming one) reads host memory with no guest key: the memory
controller gives DMA the host's view (ASID 0). A plain VM's pages come back in plaintext, an SEV
guest's private pages as ciphertext, and the pages the guest shares for I/O (bounce buffers,
SWIOTLB) in plaintext by design: the guest's shared page is the honest control.
"""

from __future__ import annotations

from hv.attacks.evidence import find_all, find_windows, hexs
from hv.attacks.lab import SHARED_MARKER, Lab
from hv.attacks.outcome import Outcome
from hv.attacks.snoop import snoop

__all__ = ["ID", "NAME", "PAPER", "PRIMITIVES", "run"]

ID = "A03"
NAME = "DMA read"
PAPER = "device DMA under SME/SEV (AMD memory encryption whitepaper, 2016; Linux SWIOTLB)"
PRIMITIVES = ("Phys", "R")


def _dma(lab: Lab) -> tuple[int, bytes]:
    base = lab.vm.gpa_to_spa(0)
    return base, lab.machine.dma.read(base, lab.config.mem_size)


def run(mode: str) -> Outcome:
    (base, data), _lab, secret = snoop(mode, _dma)
    hits = [base + h for h in find_windows(data, secret)]
    marker = [base + m for m in find_all(data, SHARED_MARKER)]
    control = f"DMA of the shared page at SPA {hexs(marker)} returns the marker" if marker else \
        "the shared page's marker was NOT seen (the read is broken)"
    if hits:
        return Outcome(ID, mode, "succeeded", f"DMA returns the secret at SPA {hexs(hits)}; {control}")
    return Outcome(ID, mode, "failed",
                   f"DMA of all {len(data) >> 20} MiB of guest memory: ciphertext, no window of the secret; {control}")
