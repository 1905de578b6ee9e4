"""PVALIDATE and RMPADJUST on the OS vCPU of an SEV-SNP VM (hv.hw.oscpu, hv.hw.pvalidate
OsValidation): Unicorn raises #UD for both, the core executes them against the RMP.

The VM is launched as hv launches a kernel: its tables, GDT and probe code are SNP_LAUNCH_UPDATEd
(validated), every other page is assigned to it unvalidated. Status codes and CF follow AMD's
APM vol. 3 (PVALIDATE: 0 success, 1 FAIL_INPUT, 6 FAIL_SIZEMISMATCH, CF = 1 when the validated
bit did not change; RMPADJUST: 2 FAIL_PERMISSION for a VMPL not below the guest's own, 0)."""

from __future__ import annotations

import struct

import pytest
from unicorn import x86_const as X

from hv.boot import boot_page_tables
from hv.hw.machine import Machine, MachineConfig
from hv.hw.oscpu import OsHalt, OsShutdown
from hv.kvm import Kvm, KvmError
from hv.kvm.kvm import Vm
from hv.kvm.mode import Mode
from hv.kvm.sev_snp import SnpGuest, rmp_make_private, rmp_make_shared
from hv.vmm.snp_launch import snp_prepare
from test_oscpu import assemble
from test_oscpu_sev import CBIT, C, _devices

GDT_GPA, CODE_GPA, TARGET = 0xA000, 0x100000, 0x200000
CF = 1
# Capstone does not know the SNP instructions: their encodings are AMD's (APM vol. 3)
PVALIDATE, RMPADJUST = "f20f01ff", "f30f01fe"


def _probe(*parts) -> bytes:
    """Code at CODE_GPA: (bytes, capstone's text) pairs checked by assemble, SNP opcodes as is."""
    out = b""
    for part in parts:
        out += bytes.fromhex(part) if isinstance(part, str) else assemble(CODE_GPA + len(out), part)
    return out


_TARGET = ("b800002000", "mov eax, 0x200000")
PROBE = _probe(
    _TARGET, ("31c9", "xor ecx, ecx"), ("ba01000000", "mov edx, 1"),
    PVALIDATE, ("9c", "pushfq"), ("4159", "pop r9"), ("4989c0", "mov r8, rax"),
    _TARGET, PVALIDATE, ("9c", "pushfq"), ("415b", "pop r11"), ("4989c2", "mov r10, rax"),
    _TARGET, RMPADJUST, ("4989c4", "mov r12, rax"),                            # VMPL1: allowed
    _TARGET, ("31d2", "xor edx, edx"), RMPADJUST, ("4989c5", "mov r13, rax"),  # VMPL0: refused
    _TARGET, ("b901000000", "mov ecx, 1"), PVALIDATE, ("4989c6", "mov r14, rax"),  # 2 MiB
    ("f4", "hlt"))


def _launched_snp_vm(psp_state):
    machine = Machine(MachineConfig(dram_size=16 << 20, psp_state=psp_state))
    kvm = Kvm(machine)
    dev = snp_prepare(kvm)  # SNP_INIT, then INIT with SEV-ES, as the VMMs do
    vm = kvm.create_vm(Mode.SEV_SNP, cbitpos=CBIT)
    vm.set_user_memory_region(0, 0, 4 << 20)
    guest = SnpGuest(vm, dev)
    guest.launch_start()
    gdt = struct.pack("<3Q", 0, 0x00AF9A000000FFFF, 0x00CF92000000FFFF)
    launched = set()
    for gpa, data in boot_page_tables(4 << 20, CBIT) + [(GDT_GPA, gdt), (CODE_GPA, PROBE)]:
        for off in range(0, len(data), 0x1000):
            vm.write_gpa(gpa + off, data[off:off + 0x1000].ljust(0x1000, b"\0"))
            guest.launch_update(gpa + off)
            launched.add(gpa + off)
    slot = vm.slots[0]
    for off in range(0, slot.size, 0x1000):
        if off not in launched:
            rmp_make_private(machine, slot.spa + off, vm.asid, off)
    guest.launch_finish()
    return machine, vm, guest


def _run(cpu):
    cpu.enter_long_mode((GDT_GPA, 23), 0x1000 | C, 0x8, 0x10)
    cpu.set_reg(X.UC_X86_REG_RIP, CODE_GPA)
    cpu.set_reg(X.UC_X86_REG_RSP, 0x10000)
    return cpu.run()


def test_pvalidate_and_rmpadjust_act_on_the_rmp(psp_state):
    machine, vm, guest = _launched_snp_vm(psp_state)
    spa = vm.gpa_to_spa(TARGET)
    assert not machine.rmpread(spa).validated
    cpu = vm.create_os_vcpu(**_devices())
    try:
        assert _run(cpu) == OsHalt(interrupts_enabled=False)
        r = cpu.reg
        assert (r(X.UC_X86_REG_R8), r(X.UC_X86_REG_R9) & CF) == (0, 0)    # validated: changed
        assert (r(X.UC_X86_REG_R10), r(X.UC_X86_REG_R11) & CF) == (0, CF)  # again: no change
        assert r(X.UC_X86_REG_R12) == 0 and r(X.UC_X86_REG_R13) == 2
        assert r(X.UC_X86_REG_R14) == 6
        assert machine.rmpread(spa).validated
    finally:
        cpu.close()
        guest.decommission()


def test_pvalidate_of_a_page_the_hypervisor_took_back_stops_the_guest(psp_state):
    machine, vm, guest = _launched_snp_vm(psp_state)
    rmp_make_shared(machine, vm.gpa_to_spa(TARGET))  # the hypervisor's RMPUPDATE
    cpu = vm.create_os_vcpu(**_devices())
    try:
        out = _run(cpu)
        assert isinstance(out, OsShutdown)
        assert "RMP nested page fault: PVALIDATE of guest-physical 0x200000" in out.reason
        assert not machine.rmpread(vm.gpa_to_spa(TARGET)).validated
    finally:
        cpu.close()
        guest.decommission()


def test_an_snp_vms_os_vcpu_needs_snp_init():
    kvm = Kvm(Machine(MachineConfig(dram_size=16 << 20)))
    vm = Vm(kvm, Mode.SEV_SNP, CBIT)   # not kvm.create_vm, which would refuse first
    vm.set_user_memory_region(0, 0, 4 << 20)
    with pytest.raises(KvmError, match="SNP_INIT"):
        vm.create_os_vcpu(**_devices())
