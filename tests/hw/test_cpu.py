"""The vCPU: intercepts stop precisely, exceptions go through the guest's IDT, triple faults are
reported, and SEV_STATUS comes from the hardware."""

import struct

import pytest

from hv.hw.cpu import Cpu, GuestControl
from hv.hw.engine import AesEngine, KeySlotPort
from hv.hw.exits import (CpuidExit, HltExit, IoExit, MsrExit, NpfExit, ShutdownExit, VmmcallExit,
                         VmrunFailed)
from hv.hw.memctl import MemoryController
from hv.hw.npt import NPT_R, NPT_X, NestedPageTable
from hv.boot import boot_page_tables

MEM = 4 << 20
BASE = 8 << 20
CODE = 0x100000
IDT = 0x200000


def make(code: bytes, encrypted: bool = False, idt: dict | None = None, key: bool = True):
    engine = AesEngine(15)
    mc = MemoryController(16 << 20, engine)
    npt = NestedPageTable(mc.size, mc.bump)
    npt.map(0, BASE, MEM)
    slot = 5 if encrypted else None
    if encrypted:
        KeySlotPort(engine).program_key(5, b"k" * 16)
    for gpa, data in boot_page_tables(MEM, 47 if encrypted else None):
        mc.write(BASE + gpa, data, slot)
    mc.write(BASE + CODE, code, slot)
    if idt:
        table = bytearray(256 * 16)
        for vec, handler in idt.items():
            table[vec * 16:vec * 16 + 16] = struct.pack("<HHBBHII", handler & 0xFFFF, 0x8, 0, 0x8E,
                                                        (handler >> 16) & 0xFFFF, handler >> 32, 0)
        mc.write(BASE + IDT, bytes(table), slot)
    if encrypted and not key:
        KeySlotPort(engine).clear_key(5)
    cpu = Cpu(mc, GuestControl(asid=5 if encrypted else 0, npt=npt, sev=encrypted))
    cpu.set_regs({"rip": CODE, "rsp": 0x80000})
    cpu.set_sregs({"cr3": 0x1000, **({"idtr": (IDT, 256 * 16 - 1)} if idt else {})})
    return cpu, mc, npt


def test_intercepts_stop_at_the_instruction_with_next_rip():
    # out 0x80,al; in al,dx; cpuid; rdmsr (ecx=0x1234); vmmcall; hlt
    code = bytes.fromhex("e680" "ec" "0fa2" "b934120000" "0f32" "0f01d9" "f4")
    cpu, _mc, _npt = make(code)
    expected = [(IoExit, 0x100002), (IoExit, 0x100003), (CpuidExit, 0x100005),
                (MsrExit, 0x10000C), (VmmcallExit, 0x10000F), (HltExit, 0x100010)]
    for kind, rip in expected:
        e = cpu.run()
        assert isinstance(e, kind), e
        assert cpu.reg("rip") == rip


def test_sev_status_is_answered_by_the_cpu():
    code = bytes.fromhex("b9310101c0" "0f32" "f4")  # mov ecx, 0xc0010131; rdmsr; hlt
    for encrypted, want in ((False, 0), (True, 1)):
        cpu, _mc, _npt = make(code, encrypted)
        assert isinstance(cpu.run(), HltExit)
        assert cpu.reg("rax") == want


def test_page_fault_is_delivered_with_cr2_and_error_code():
    # mov rax,[0x7fff0000] (unmapped in the boot tables) ; handler at CODE+0x100: hlt
    code = bytes.fromhex("488b042523017f7f").ljust(0x100, b"\x90") + b"\xf4"
    cpu, _mc, _npt = make(code, idt={14: CODE + 0x100})
    assert isinstance(cpu.run(), HltExit)
    assert cpu.reg("cr2") == 0x7F7F0123  # the byte address (decode assist), not just the page
    rsp = cpu.reg("rsp")
    frame = _read(cpu, rsp, 48)
    err, rip = struct.unpack_from("<QQ", frame)
    assert err == 0 and rip == CODE  # not present, read, supervisor; RIP of the faulting insn


def test_invalid_opcode_and_no_idt_is_a_triple_fault():
    cpu, _mc, _npt = make(bytes.fromhex("0f0b"))  # ud2, no IDT
    e = cpu.run()
    assert isinstance(e, ShutdownExit) and "triple fault" in e.reason


def test_invalid_opcode_goes_to_the_ud_handler():
    code = bytes.fromhex("0f0b").ljust(0x40, b"\x90") + b"\xf4"
    cpu, _mc, _npt = make(code, idt={6: CODE + 0x40})
    assert isinstance(cpu.run(), HltExit)


def test_missing_nested_mapping_is_an_npf_exit_with_the_gpa():
    cpu, _mc, npt = make(bytes.fromhex("488b042500003000f4"))  # mov rax, [0x300000]; hlt
    npt.unmap(0x300000, 0x1000)  # the guest maps it, the hypervisor does not back it
    e = cpu.run()
    assert isinstance(e, NpfExit) and e.gpa == 0x300000 and e.error_code & (1 << 32)


def test_write_protected_nested_page_faults_on_write_only():
    code = bytes.fromhex("488b0425000030004889042500003000f4")  # mov rax,[0x300000]; mov [..],rax
    cpu, _mc, npt = make(code)
    npt.protect(0x300000, 0x1000, NPT_R | NPT_X)
    e = cpu.run()
    assert isinstance(e, NpfExit) and e.gpa == 0x300000 and e.error_code & 2
    assert cpu.reg("rip") == CODE + 8  # the read retired, the write did not


def test_encrypted_guest_without_a_key_fails_entry():
    cpu, _mc, _npt = make(b"\xf4", encrypted=True, key=False)
    assert isinstance(cpu.run(), VmrunFailed)


def test_kick_interrupts_a_spinning_guest():
    import threading

    cpu, _mc, _npt = make(bytes.fromhex("ebfe"))  # jmp $
    threading.Timer(0.2, cpu.kick).start()
    from hv.hw.exits import InterruptedExit
    assert isinstance(cpu.run(), InterruptedExit)


def test_instruction_budget():
    from hv.hw.exits import BudgetExit
    cpu, _mc, _npt = make(bytes.fromhex("48ffc0ebfb"))  # inc rax; jmp back
    cpu.enable_counting(10_000)
    e = cpu.run()
    assert isinstance(e, BudgetExit) and e.instructions >= 10_000
    assert abs(cpu.reg("rax") * 2 - e.instructions) <= 16


def _read(cpu, gva, n):
    return cpu._read_virt(gva, n)
