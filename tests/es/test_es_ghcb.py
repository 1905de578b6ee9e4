"""A guest that sends the hypervisor a malformed GHCB request, an unknown exit code or a
termination request is answered as the GHCB specification says (sw_exit_info_1 = 2, the reason
in sw_exit_info_2) or ended cleanly (KVM_EXIT_SYSTEM_EVENT); hv itself never fails.

The guest (flat binary, assembled from) takes its request from a table appended to the code:
        mov  $0x8000, %edi ; zero the page (rep stosq)    # GHCB = the shared boot info page
        mov  table(%rip), %rax ; mov %rax, 0x390(%rdi)     # sw_exit_code
        mov  table+8(%rip), %eax ; movb %al, 0x3fe(%rdi)   # valid bitmap byte 14 (bit 114)
        movw $2, 0xffa(%rdi)                               # protocol version 2
        mov  table+16(%rip), %eax ; movl %eax, 0xffc(%rdi) # ghcb_usage
        mov  $0xc0010130, %ecx ; mov table+24(%rip) -> edx:eax ; wrmsr   # the GHCB MSR
        rep; vmmcall                                       # VMGEXIT
        hlt
  table: .quad sw_exit_code, valid byte, usage, MSR value
"""

from __future__ import annotations

import struct

import pytest

from hv.kvm import exits as K
from hv.vmm import Vmm, VmmConfig

CODE = bytes.fromhex(
    "bf0080000031c0b900020000f348abbf00800000488b0545000000488987900300008b05400000008887fe0300"
    "0066c787fa0f000002008b05330000008987fc0f0000b9300101c0488b05290000004889c248c1ea200f30f30f"
    "01d9f40f1f00")
GHCB = 0x8000
VALID = 0x04  # sw_exit_code's valid bit


def guest(exit_code: int, valid: int = VALID, usage: int = 0, msr: int = GHCB) -> bytes:
    return CODE + struct.pack("<QQQQ", exit_code, valid, usage, msr)


def exit_info(vmm) -> tuple[int, int]:
    return struct.unpack("<QQ", vmm.vm.read_gpa(GHCB + 0x398, 16))


@pytest.mark.parametrize("exit_code, valid, usage, reason", [
    (0x1234, VALID, 0, 6),          # unknown exit code: GHCB_ERR_INVALID_EVENT
    (0x72, VALID, 0, 4),            # CPUID without RAX/RCX: GHCB_ERR_MISSING_INPUT
    (0x7B, VALID, 0, 4),            # IOIO without sw_exit_info_1
    (0x72, 0, 0, 4),                # sw_exit_code not marked valid
    (0x72, VALID, 7, 2),            # ghcb_usage != 0: GHCB_ERR_INVALID_USAGE
    (0x80000001, VALID, 0, 4),      # MMIO read without GPA/length/scratch
])
def test_a_bad_request_is_answered_with_the_spec_error(make_vmm, exit_code, valid, usage, reason):
    """Scenario: the guest's request is malformed; it gets sw_exit_info_1 = 2 and the reason."""
    vmm = make_vmm(guest(exit_code, valid, usage), "sev-es")
    e = vmm.vcpu.run()
    assert isinstance(e, K.Hlt), e
    assert exit_info(vmm) == (2, reason)


def test_termination_through_the_msr_protocol_ends_the_run_cleanly(psp_state):
    """Scenario: the guest asks to be terminated (GHCB MSR 0x100, set 1, reason 7)."""
    request = 0x100 | 1 << 12 | 7 << 16
    vmm = Vmm(VmmConfig(image=guest(0, msr=request), vm_type="sev-es", mem_size=16 << 20, psp_state=psp_state))
    try:
        result = vmm.run()
    finally:
        vmm.close()
    assert result.exit_reason == "terminated"
    assert "reason set 1, code 0x7" in result.message


def test_termination_through_the_ghcb(make_vmm):
    """Scenario: sw_exit_code 0x8000FFFE (terminate) is a SYSTEM_EVENT for user space."""
    vmm = make_vmm(guest(0x8000FFFE), "sev-es")
    e = vmm.vcpu.run()
    assert isinstance(e, K.SystemEvent) and "termination" in e.detail


@pytest.mark.parametrize("msr", [0x7FF000, 1 << 40])
def test_a_ghcb_outside_guest_memory_terminates_the_guest(make_vmm, msr):
    """Scenario: a GHCB GPA the hypervisor cannot map cannot be answered: the guest is ended."""
    vmm = make_vmm(guest(0x72, msr=msr), "sev-es", mem_size=4 << 20)
    e = vmm.vcpu.run()
    assert isinstance(e, K.SystemEvent), e


def test_msr_protocol_answers(make_vmm):
    """Scenario: SEV_INFO and CPUID requests through the GHCB MSR get their responses."""
    vmm = make_vmm(guest(0, msr=0x002), "sev-es")
    assert isinstance(vmm.vcpu.run(), K.Hlt)
    info = vmm.vcpu._cpu.control.ghcb_msr
    assert info & 0xFFF == 0x001 and (info >> 48, (info >> 32) & 0xFFFF, (info >> 24) & 0xFF) == (2, 1, 47)
    vmm = make_vmm(guest(0, msr=0x8000001F << 32 | 1 << 30 | 0x004), "sev-es")
    assert isinstance(vmm.vcpu.run(), K.Hlt)
    resp = vmm.vcpu._cpu.control.ghcb_msr
    assert resp & 0xFFF == 0x005 and (resp >> 32) & 0x3F == 47  # EBX[5:0] = C-bit position


def test_mmio_write_takes_its_data_from_sw_scratch(make_vmm):
    """Scenario: an MMIO write with its data in the shared buffer (the request written into the
    GHCB page as the guest would): user space gets the GPA and the data. sw_scratch is read
    before the valid bitmap is cleared, so a valid scratch area is accepted."""
    vmm = make_vmm(guest(0), "sev-es")
    page = bytearray(0x1000)
    struct.pack_into("<QQQQ", page, 0x390, 0x80000002, 0xFED00000, 4, GHCB + 0x800)
    page[0x3FE] = 0x3C  # sw_exit_code, info_1, info_2, sw_scratch valid
    struct.pack_into("<I", page, 0x800, 0xCAFEF00D)
    struct.pack_into("<H", page, 0xFFA, 2)
    vmm.vm.write_gpa(GHCB, bytes(page))
    es = vmm.vcpu.es
    es.control.ghcb_msr = GHCB
    e = es.vmgexit()
    assert isinstance(e, K.Mmio) and (e.gpa, e.size, e.is_write, e.data) == (0xFED00000, 4, True, 0xCAFEF00D)
