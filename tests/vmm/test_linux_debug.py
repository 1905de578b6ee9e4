"""The kernel's vCPU as the hypervisor sees it (hv.vmm.linux_debug.KernelVcpuView): a plain
kernel's registers are the core's own; once LAUNCH_UPDATE_VMSA has encrypted an SEV-ES kernel's
save area, every register call refuses, as KVM does for a protected vCPU, and none hands out the
live plaintext the emulated core still holds."""

from __future__ import annotations

import pytest
from unicorn import x86_const as X

from hv.kvm import KvmError, Mode
from hv.kvm.vcpu import vmsa_words
from hv.vmm.linux import KernelConfig, KernelVmm
from hv.vmm.linux_debug import KernelVcpuView
from tests.boot.test_bzimage import MiB, synthetic
from tests.hw.test_oscpu import KCODE, PML4, Guest

RIP, RSP, RBX = KCODE + 0x40, 0x7FF0, 0x6B65792D696E2D72  # "r-in-key": a value no page holds


def _live() -> tuple[Guest, KernelVcpuView]:
    g = Guest()
    for reg, value in ((X.UC_X86_REG_RIP, RIP), (X.UC_X86_REG_RSP, RSP), (X.UC_X86_REG_RBX, RBX)):
        g.uc.reg_write(reg, value)
    return g, KernelVcpuView(g.cpu)


def test_a_plain_kernels_registers_are_the_cores():
    _g, view = _live()
    regs, sregs = view.get_regs(), view.get_sregs()
    assert (regs["rip"], regs["rsp"], regs["rbx"]) == (RIP, RSP, RBX)
    assert sregs["cr3"] == PML4 and sregs["cs"] == 0x10 and sregs["cr0"] == 0x80000011


def test_a_protected_view_refuses_and_leaves_the_registers_alone():
    """Scenario: under SEV-ES the hypervisor asks for the registers at an exit; the emulated core
    still holds them in plaintext, but what the hypervisor gets is a refusal, and a write it
    tries changes nothing."""
    g, view = _live()
    view.attach_vmsa(0x10200000)
    for call in (view.get_regs, view.get_sregs, lambda: view.set_regs({"rip": 0x1234, "rbx": 0})):
        with pytest.raises(KvmError, match=r"state is protected \(SEV-ES\).*VMSA at SPA 0x10200000"):
            call()
    assert (g.uc.reg_read(X.UC_X86_REG_RIP), g.uc.reg_read(X.UC_X86_REG_RBX)) == (RIP, RBX)


def test_vmsa_words_are_read_at_the_save_area_offsets():
    """Known answers from AMD's APM vol. 2, table B-4 (the save area): CR3 at 0x150, RIP at
    0x178, RSP at 0x1D8, RAX at 0x1F8."""
    page = bytearray(4096)
    for off, value in ((0x150, 0x1000), (0x178, 0xFFFFFFFF81000000), (0x1D8, 0x8000), (0x1F8, 7)):
        page[off:off + 8] = value.to_bytes(8, "little")
    assert vmsa_words(bytes(page), ("cr3", "rip", "rsp", "rax")) == {
        "cr3": 0x1000, "rip": 0xFFFFFFFF81000000, "rsp": 0x8000, "rax": 7}


def test_an_sev_es_kernel_is_protected_from_its_launch(psp_state):
    """Scenario: the measured launch of an SEV-ES kernel ends in LAUNCH_UPDATE_VMSA; from then on
    the VMM's vCPU view refuses (the core is at the kernel's entry, which it would otherwise show),
    and the VMSA page holds ciphertext, not that entry state."""
    vmm = KernelVmm(KernelConfig(kernel=bytes(synthetic()), mem_size=64 * MiB, mode=Mode.SEV_ES,
                                 psp_state=psp_state))
    vmm.load()
    assert vmm.vcpu.guest_state_protected and vmm.vcpu.vmsa_spa is not None
    with pytest.raises(KvmError, match="KVM_GET_REGS"):
        vmm.vcpu.get_regs()
    assert vmm.cpu.reg(X.UC_X86_REG_RIP) == vmm.plan.entry
    stored = vmsa_words(vmm.vm.host.read(vmm.vcpu.vmsa_spa, 4096), ("rip", "cr3"))
    assert stored["rip"] != vmm.plan.entry and stored["cr3"] != vmm.plan.cr3
