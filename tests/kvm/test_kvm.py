"""The KVM-shaped API: VM types, memory slots, ASIDs, exits, MMIO emulation, NPT remapping."""

import pytest

from hv.boot import boot_page_tables
from hv.hw.machine import Machine, MachineConfig
from hv.kvm import Kvm, KvmError, MemoryFault, exits as K


@pytest.fixture
def kvm():
    return Kvm(Machine(MachineConfig(dram_size=32 << 20)))


def plain_vm(kvm, code: bytes, mem=4 << 20, table_mem=None):
    vm = kvm.create_vm("plain")
    vm.set_user_memory_region(0, 0, mem)
    for gpa, data in boot_page_tables(table_mem or mem, None):
        vm.write_gpa(gpa, data)
    vm.write_gpa(0x100000, code)
    vcpu = vm.create_vcpu()
    vcpu.set_regs({"rip": 0x100000, "rsp": 0x10000})
    vcpu.set_sregs({"cr3": 0x1000})
    return vm, vcpu


def test_vm_types_and_asid_ranges(kvm):
    model = kvm.machine.model
    assert kvm.create_vm("plain").asid == 0
    sev = kvm.create_vm("sev")
    assert model.min_sev_asid <= sev.asid <= model.max_asid
    es = kvm.create_vm("sev-es")
    assert 1 <= es.asid < model.min_sev_asid
    with pytest.raises(KvmError, match="unknown VM type"):
        kvm.create_vm("tdx")


def test_asids_run_out_cleanly(kvm):
    n = kvm.machine.model.min_sev_asid - 1
    vms = [kvm.create_vm("sev-es") for _ in range(n)]
    with pytest.raises(KvmError, match="no free SEV-ES ASID"):
        kvm.create_vm("sev-es")
    vms[0].destroy()
    assert kvm.create_vm("sev-es").asid == vms[0].asid


def test_memory_slot_errors(kvm):
    vm = kvm.create_vm("plain")
    vm.set_user_memory_region(0, 0, 1 << 20)
    with pytest.raises(KvmError, match="overlaps"):
        vm.set_user_memory_region(1, 0x80000, 1 << 20)
    with pytest.raises(KvmError, match="already exists"):
        vm.set_user_memory_region(0, 4 << 20, 1 << 20)
    with pytest.raises(KvmError, match="page-aligned"):
        vm.set_user_memory_region(2, 0x123, 1 << 20)
    with pytest.raises(KvmError, match="out of host memory"):
        vm.set_user_memory_region(3, 1 << 30, 1 << 30)
    with pytest.raises(KvmError, match="not in any memory slot"):
        vm.read_gpa(8 << 20, 1)


def test_io_exit_round_trip(kvm):
    # in al, 0x60 ; out 0x61, al ; hlt
    vm, vcpu = plain_vm(kvm, bytes.fromhex("e460e661f4"))
    e = vcpu.run()
    assert isinstance(e, K.Io) and e.is_in and e.port == 0x60 and e.size == 1
    e.data = 0x5A
    e = vcpu.run()
    assert isinstance(e, K.Io) and not e.is_in and e.port == 0x61 and e.data == 0x5A
    assert isinstance(vcpu.run(), K.Hlt)


def test_mmio_is_emulated_from_the_faulting_instruction(kvm):
    # mov eax, [0x600000] ; add eax, 1 ; mov [0x600010], eax ; mov byte [0x600020], 7 ; hlt
    code = bytes.fromhex("8b0425000060 00".replace(" ", "")) + bytes.fromhex("83c001") + \
        bytes.fromhex("890425100060 00".replace(" ", "")) + bytes.fromhex("c6042520006000 07".replace(" ", "")) + b"\xf4"
    vm, vcpu = plain_vm(kvm, code, mem=4 << 20, table_mem=8 << 20)  # 4-8 MiB mapped, not backed
    e = vcpu.run()
    assert isinstance(e, K.Mmio) and not e.is_write and e.gpa == 0x600000 and e.size == 4
    e.data = 41
    e = vcpu.run()
    assert isinstance(e, K.Mmio) and e.is_write and e.gpa == 0x600010 and e.data == 42 and e.size == 4
    e = vcpu.run()
    assert isinstance(e, K.Mmio) and e.is_write and e.gpa == 0x600020 and e.data == 7 and e.size == 1
    assert isinstance(vcpu.run(), K.Hlt)


def test_hypervisor_unmapping_guest_ram_is_a_memory_fault_then_resumes(kvm):
    # mov rax, [0x200000] ; hlt
    vm, vcpu = plain_vm(kvm, bytes.fromhex("488b042500002000f4"))
    vm.write_gpa(0x200000, (1234).to_bytes(8, "little"))
    spa = vm.npt_lookup(0x200000)[0]
    vm.npt_unmap(0x200000)
    e = vcpu.run()
    assert isinstance(e, MemoryFault) and e.gpa == 0x200000 and not e.write
    vm.npt_map(0x200000, spa)
    assert isinstance(vcpu.run(), K.Hlt)
    assert vcpu.get_regs()["rax"] == 1234


def test_remapping_a_gpa_changes_what_the_guest_reads(kvm):
    vm, vcpu = plain_vm(kvm, bytes.fromhex("488b042500002000f4"))
    vm.write_gpa(0x200000, b"AAAAAAAA")
    vm.write_gpa(0x300000, b"BBBBBBBB")
    vm.npt_map(0x200000, vm.gpa_to_spa(0x300000))
    assert isinstance(vcpu.run(), K.Hlt)
    assert vcpu.get_regs()["rax"].to_bytes(8, "little") == b"BBBBBBBB"


def test_unknown_msr_and_hypercall_reach_user_space(kvm):
    # mov ecx, 0x1234 ; rdmsr ; vmmcall ; hlt
    vm, vcpu = plain_vm(kvm, bytes.fromhex("b934120000") + b"\x0f\x32" + b"\x0f\x01\xd9" + b"\xf4")
    e = vcpu.run()
    assert isinstance(e, K.Rdmsr) and e.index == 0x1234
    e.data = 0x1111222233334444
    e = vcpu.run()
    assert isinstance(e, K.Hypercall)
    assert vcpu.get_regs()["rax"] == 0x33334444 and vcpu.get_regs()["rdx"] == 0x11112222
    e.ret = 99
    assert isinstance(vcpu.run(), K.Hlt)
    assert vcpu.get_regs()["rax"] == 99


def test_guest_cpuid_table(kvm):
    plain = kvm.create_vm("plain").cpuid
    sev = kvm.create_vm("sev").cpuid
    assert (0x8000001F, 0) not in plain
    eax, ebx, _ecx, _edx = sev[(0x8000001F, 0)]
    assert eax & 2 and ebx & 0x3F == 47
    assert plain[(1, 0)][2] & (1 << 31)  # hypervisor present
