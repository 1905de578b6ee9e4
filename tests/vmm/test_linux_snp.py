"""The SEV-SNP launch of a kernel by the kernel VMM (hv.vmm.linux, hv.vmm.snp_launch), without a
boot: a synthetic bzImage (tests/boot/test_bzimage.py). What the PSP measured is the digest the
owner predicts from the files; every page of guest memory is the guest's in the RMP, the
launched ones validated and the rest waiting for the stub; a CPUID table claiming what the part
lacks ends the launch with the PSP's correction in one line."""

from __future__ import annotations

import pytest
from unicorn import x86_const as X

from hv.boot import kernel_plan, kernel_snp_launch_digest, kernel_snp_launch_pages
from hv.kvm.mode import Mode
from hv.vmm.config import LaunchError
from hv.vmm.linux import KernelConfig, KernelVmm
from tests.boot.test_bzimage import MiB, synthetic

KERNEL = bytes(synthetic())
INITRD = b"the initrd of an SNP kernel " * 100
MEM = 64 * MiB


def _vmm(psp_state) -> KernelVmm:
    return KernelVmm(KernelConfig(kernel=KERNEL, initrd=INITRD, append="quiet", mem_size=MEM,
                                  mode=Mode.SEV_SNP, psp_state=psp_state))


def test_the_launch_measures_what_the_owner_predicts_and_assigns_all_memory(psp_state):
    vmm = _vmm(psp_state)
    try:
        vmm.load()
        plan = kernel_plan(KERNEL, INITRD, "quiet", MEM, encrypted=True, snp=True)
        assert vmm.launch_info["digest"] == kernel_snp_launch_digest(plan).hex()
        pages = kernel_snp_launch_pages(plan)
        census = vmm._rmp_census()
        # every page assigned; validated: the launched ones (the VMSA is outside guest memory)
        assert census == {"assigned": MEM >> 12, "validated": len(pages) - 1, "hypervisor": 0}
        assert vmm.cpu.reg(X.UC_X86_REG_RIP) == plan.start != plan.entry  # the stub first
        assert vmm.cpu.reg(X.UC_X86_REG_RSI) == plan.boot_params
    finally:
        vmm.close()


def test_a_cpuid_table_the_part_refuses_ends_the_launch_in_one_line(psp_state):
    vmm = _vmm(psp_state)
    try:
        a, b, c, d = vmm.vm.cpuid[(1, 0)]
        vmm.vm.cpuid[(1, 0)] = (a, b, c | 1 << 2, d)  # DTES64: not on this part
        with pytest.raises(LaunchError) as e:
            vmm.load()
        message = str(e.value)
        assert "\n" not in message and "the PSP refused the CPUID page: leaf 0x1" in message
        assert f"{c | 1 << 2:#x} -> {c:#x}" in message
    finally:
        vmm.close()
