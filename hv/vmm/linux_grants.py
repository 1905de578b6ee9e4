"""A physical attacker's reach into a Linux guest's host: the attack lab's A02 and A03 with
--kernel (hv.attacks.kernel_lab). The same grant as Vmm.physical_access (hv.hw.grants), asked for
explicitly and never a hypervisor's: DMA with no guest key, the DRAM cells, a power cycle."""

from __future__ import annotations

from hv.hw.grants import PhysicalAccess
from hv.vmm.linux import KernelVmm

__all__ = ["kernel_physical_access"]


def kernel_physical_access(vmm: KernelVmm) -> PhysicalAccess:
    """What a physical attacker at `vmm`'s host reaches (the VMM is the host: it holds the
    machine; the attack lab does not)."""
    return vmm.machine.physical_access()
