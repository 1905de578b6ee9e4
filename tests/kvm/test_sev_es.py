"""EsExits (hv.kvm.sev_es) on synthetic GHCB pages: every event a Linux guest sends under
`hv run --kernel ... --sev-es` (docs/linux.md, "SEV and SEV-ES"), and DR7 read and NMI complete,
each answered as the GHCB specification (AMD 56421) says and counted in `events` under the key
`--json` reports it by.

The VM is a real SEV-ES VM with C-bit 39 (the position a kernel runs with) and one memory slot;
no vCPU runs: a test writes the page a #VC handler would, sets the GHCB MSR and calls
vmgexit(), then reads back what the hypervisor wrote. Expected values are written out here from
the specification, not taken from hv.kvm.ghcb."""

from __future__ import annotations

import struct
from types import SimpleNamespace

import pytest

from hv.hw.machine import Machine, MachineConfig
from hv.kvm import Kvm, exits as K
from hv.kvm.ghcb import GHCB_SIZE, Ghcb
from hv.kvm.sev_es import EsExits

CBIT = 39
GHCB_GPA = 0x5000
# The save-area offsets of the fields these tests read back (56421 table 2; Linux struct ghcb).
RAX, RBX, RCX, RDX = 0x1F8, 0x318, 0x308, 0x310
SW_EXIT_CODE, SW_EXIT_INFO_1, SW_EXIT_INFO_2 = 0x390, 0x398, 0x3A0
VALID_BITMAP = 0x3F0


@pytest.fixture
def vm():
    vm = Kvm(Machine(MachineConfig(dram_size=32 << 20))).create_vm("sev-es", cbitpos=CBIT)
    vm.set_user_memory_region(0, 0, 1 << 20)
    yield vm
    vm.destroy()


def ask(vm, es: EsExits, code: int, **fields: int) -> K.KvmExit | None:
    """The guest's side of one GHCB event: the page with `fields` valid, protocol version 2,
    then VMGEXIT with the GHCB MSR holding its GPA."""
    g = Ghcb(GHCB_GPA, bytes(GHCB_SIZE))
    g.set("sw_exit_code", code)
    g.set("sw_exit_info_1", fields.pop("sw_exit_info_1", 0))
    g.set("sw_exit_info_2", fields.pop("sw_exit_info_2", 0))
    for name, value in fields.items():
        g.set(name, value)
    struct.pack_into("<H", g.page, 0xFFA, 2)
    vm.write_gpa(GHCB_GPA, bytes(g.page))
    es.control.ghcb_msr = GHCB_GPA
    return es.vmgexit()


def q(vm, offset: int) -> int:
    return struct.unpack("<Q", vm.read_gpa(GHCB_GPA + offset, 8))[0]


def answer(vm) -> tuple[int, int]:
    """(sw_exit_info_1, sw_exit_info_2) of the hypervisor's reply."""
    return q(vm, SW_EXIT_INFO_1), q(vm, SW_EXIT_INFO_2)


def valid_offsets(vm) -> set[int]:
    """Save-area offsets whose valid bit the reply sets (bit n covers offset 8n)."""
    bitmap = int.from_bytes(vm.read_gpa(GHCB_GPA + VALID_BITMAP, 16), "little")
    return {8 * n for n in range(128) if bitmap >> n & 1}


def es_for(vm) -> EsExits:
    return EsExits(vm, SimpleNamespace(ghcb_msr=0))


# -- the MSR protocol ------------------------------------------------------------------------------
def test_sev_info_response_layout_for_cbit_39(vm):
    """Scenario: the guest's first request (GHCBInfo 0x002) before it has a GHCB. 56421 section
    2.3.1: [63:48] the highest protocol version, [47:32] the lowest, [31:24] the C-bit, [11:0]
    0x001. hv speaks versions 1 and 2."""
    es = es_for(vm)
    es.control.ghcb_msr = 0x002
    assert es.vmgexit() is None
    expected = 2 * 2**48 + 1 * 2**32 + 39 * 2**24 + 0x001
    assert expected == 0x0002_0001_2700_0001
    assert es.control.ghcb_msr == expected
    es.control.ghcb_msr = 0x002
    es.vmgexit()
    assert es.events == {"msr:0x002": 2}


def test_cpuid_through_the_msr_protocol_gives_one_register(vm):
    """Scenario: GHCBInfo 0x004 with the register in [31:30] (1 = EBX) and the leaf in [63:32]:
    the answer is 0x005 with the value in [63:32]. Leaf 0x8000001F EBX[5:0] is the C-bit."""
    es = es_for(vm)
    es.control.ghcb_msr = 0x8000_001F << 32 | 1 << 30 | 0x004
    assert es.vmgexit() is None
    msr = es.control.ghcb_msr
    assert msr & 0xFFF == 0x005 and (msr >> 30) & 3 == 1
    assert (msr >> 32) & 0x3F == 39
    es.control.ghcb_msr = 0x8000_001F << 32 | 0 << 30 | 0x004  # EAX: SEV (bit 1), SEV-ES (bit 3)
    es.vmgexit()
    assert (es.control.ghcb_msr >> 32) & 0b1010 == 0b1010
    assert es.events == {"msr:0x004": 2}


# -- GHCB events -----------------------------------------------------------------------------------
def test_cpuid_event_answers_all_four_registers(vm):
    """Scenario: CPUID (0x72) with RAX = leaf, RCX = subleaf: RAX..RDX come back, marked valid,
    from the VM's table (the same one the MSR protocol reads)."""
    es = es_for(vm)
    assert ask(vm, es, 0x72, rax=0x8000_001F, rcx=0) is None
    assert answer(vm) == (0, 0)
    assert valid_offsets(vm) == {RAX, RBX, RCX, RDX}
    assert (q(vm, RBX) & 0x3F, q(vm, RAX) & 0b1010) == (39, 0b1010)
    assert ask(vm, es, 0x72, rax=0x4000_0000, rcx=0) is None
    assert (q(vm, RBX), q(vm, RCX), q(vm, RDX)) == tuple(
        int.from_bytes(b"KVMKVMKVM\0\0\0"[i:i + 4], "little") for i in (0, 4, 8))
    assert es.events == {"0x72": 2}


def test_ioio_out_and_in_become_kvm_io_exits(vm):
    """Scenario: IOIO (0x7b), exit info 1 as the IOIO intercept's (port [31:16], size bits
    [6:4], IN bit 0). An OUT gives user space the port, size and RAX's low bytes; an IN's data
    goes back into RAX, marked valid, when user space completes it."""
    es = es_for(vm)
    out = ask(vm, es, 0x7B, sw_exit_info_1=0x3F8 << 16 | 1 << 4, rax=0xAABB_CC41)
    assert out == K.Io(0x3F8, 1, False, 0x41)
    es.complete(out)
    assert answer(vm) == (0, 0) and valid_offsets(vm) == set()
    into = ask(vm, es, 0x7B, sw_exit_info_1=0x3FD << 16 | 1 << 4 | 1)
    assert into == K.Io(0x3FD, 1, True) and es.busy
    into.data = 0x1260  # wider than the access: only its byte is the answer
    es.complete(into)
    assert not es.busy and q(vm, RAX) == 0x60 and valid_offsets(vm) == {RAX}
    assert es.events == {"0x7b": 2}


def test_msr_event_reads_and_writes(vm):
    """Scenario: MSR (0x7c), RCX = index, exit info 1 = 0 read / 1 write (EDX:EAX). A read user
    space answers comes back in RAX and RDX; a refused write is a #GP for the guest (exit info 1
    = 1, info 2 = EVENTINJ: vector 13, type 3, error code valid, valid)."""
    es = es_for(vm)
    read = ask(vm, es, 0x7C, sw_exit_info_1=0, rcx=0xC001_0015)
    assert read == K.Rdmsr(0xC001_0015)
    read.data = 0x1_0000_0010
    es.complete(read)
    assert (q(vm, RAX), q(vm, RDX)) == (0x10, 0x1) and valid_offsets(vm) == {RAX, RDX}
    write = ask(vm, es, 0x7C, sw_exit_info_1=1, rcx=0x8B, rax=0x2222_2222, rdx=0x1111_1111)
    assert write == K.Wrmsr(0x8B, 0x1111_1111_2222_2222)
    write.error = True
    es.complete(write)
    assert answer(vm) == (1, 13 | 3 << 8 | 1 << 11 | 1 << 31)
    assert es.events == {"0x7c": 2}


def test_wbinvd_is_answered_and_nothing_else_changes(vm):
    """Scenario: WBINVD (0x89): the caches already write back at every hypervisor access, so
    the event is answered at once (exit info 1 = 0) and the reply changes nothing in the page but
    the valid bitmap (inputs are not outputs), nothing elsewhere in guest memory, and no state of
    the vCPU's GHCB side."""
    es = es_for(vm)
    ask(vm, es, 0x37, rax=0x455)  # state that must survive: a DR7 and a jump table
    ask(vm, es, 0x8000_0005, sw_exit_info_1=0, sw_exit_info_2=0x9_F000)
    memory = bytearray(vm.read_gpa(0, 1 << 20))
    page = Ghcb(GHCB_GPA, bytes(GHCB_SIZE))
    page.set("sw_exit_code", 0x89)
    page.set("sw_exit_info_1", 0)
    page.set("sw_exit_info_2", 0)
    struct.pack_into("<H", page.page, 0xFFA, 2)
    memory[GHCB_GPA:GHCB_GPA + GHCB_SIZE] = page.page
    state = (es.dr7, es.ap_jump_table, es.registered_gpa)
    assert ask(vm, es, 0x89) is None
    after = vm.read_gpa(0, 1 << 20)
    changed = {i for i in range(len(after)) if after[i] != memory[i]}
    assert changed <= set(range(GHCB_GPA + VALID_BITMAP, GHCB_GPA + VALID_BITMAP + 16)), sorted(changed)
    assert answer(vm) == (0, 0) and valid_offsets(vm) == set()
    assert q(vm, SW_EXIT_CODE) == 0x89
    assert (es.dr7, es.ap_jump_table, es.registered_gpa) == state == (0x455, 0x9_F000, None)
    assert not es.busy
    assert es.events == {"0x37": 1, "0x80000005": 1, "0x89": 1}


def test_dr7_write_then_read_returns_it(vm):
    """Scenario: DR7 write (0x37, the value in RAX) and DR7 read (0x27): the hypervisor keeps the
    value the guest reported and answers the read with it, in RAX. Before any write the read
    gives DR7's reset value, 0x400."""
    es = es_for(vm)
    assert ask(vm, es, 0x27) is None
    assert q(vm, RAX) == 0x400 and valid_offsets(vm) == {RAX}
    assert ask(vm, es, 0x37, rax=0x0000_0000_0000_0455) is None
    assert answer(vm) == (0, 0) and valid_offsets(vm) == set()
    assert ask(vm, es, 0x27) is None
    assert answer(vm) == (0, 0) and q(vm, RAX) == 0x455 and valid_offsets(vm) == {RAX}
    assert es.events == {"0x27": 2, "0x37": 1}


def test_a_dr7_write_without_rax_is_missing_input(vm):
    """Scenario: a DR7 write whose RAX is not marked valid is refused and changes nothing."""
    es = es_for(vm)
    assert ask(vm, es, 0x37) is None
    assert answer(vm) == (2, 4)  # GHCB_ERR_MISSING_INPUT
    assert es.dr7 == 0x400


def test_ap_jump_table_set_then_get(vm):
    """Scenario: AP jump table (0x80000005): exit info 1 = 0 sets it to exit info 2, 1 gets it
    back in exit info 2; anything else is an invalid input. Before a set it is 0 (Linux takes 0
    as "no jump table": one vCPU)."""
    es = es_for(vm)
    assert ask(vm, es, 0x8000_0005, sw_exit_info_1=1) is None
    assert answer(vm) == (0, 0)
    assert ask(vm, es, 0x8000_0005, sw_exit_info_1=0, sw_exit_info_2=0x9_F000) is None
    assert answer(vm) == (0, 0)
    assert ask(vm, es, 0x8000_0005, sw_exit_info_1=1) is None
    assert answer(vm) == (0, 0x9_F000)
    assert ask(vm, es, 0x8000_0005, sw_exit_info_1=2) is None
    assert answer(vm) == (2, 5)  # GHCB_ERR_INVALID_INPUT
    assert es.events == {"0x80000005": 4}


def test_nmi_complete_is_answered(vm):
    """Scenario: NMI complete (0x80000003): no NMI is ever injected here, so there is nothing to
    unblock; the event is answered (exit info 1 = 0) and leaves the GHCB side as it was."""
    es = es_for(vm)
    state = (es.dr7, es.ap_jump_table, es.registered_gpa)
    assert ask(vm, es, 0x8000_0003) is None
    assert answer(vm) == (0, 0) and valid_offsets(vm) == set()
    assert (es.dr7, es.ap_jump_table, es.registered_gpa) == state and not es.busy
    assert es.events == {"0x80000003": 1}


# -- RDTSC and RDTSCP (56421 section 4.1.4: RAX/RDX out, RCX too for RDTSCP) -------------------
def test_rdtsc_and_rdtscp_answer_the_guests_tsc(vm):
    """Scenario: a hypervisor that intercepts RDTSC (hv's OS core answers it itself, as TSC
    offsetting does, so Linux sends these only on such a host). RDTSC gets EDX:EAX, RDTSCP
    also TSC_AUX in ECX; without a TSC source the event is one hv does not know."""
    es = EsExits(vm, SimpleNamespace(ghcb_msr=0), tsc=lambda: 0x1122_3344_5566_7788)
    vm.msrs[0xC0000103] = 0x5
    assert ask(vm, es, 0x6E) is None
    assert (q(vm, RAX), q(vm, RDX)) == (0x5566_7788, 0x1122_3344)
    assert valid_offsets(vm) >= {RAX, RDX} and answer(vm) == (0, 0)
    assert ask(vm, es, 0x87) is None
    assert (q(vm, RAX), q(vm, RDX), q(vm, RCX)) == (0x5566_7788, 0x1122_3344, 5)
    assert valid_offsets(vm) >= {RAX, RDX, RCX}
    assert ask(vm, es_for(vm), 0x6E) is None
    assert answer(vm) == (2, 6)  # sw_exit_info_1 2, GHCB_ERR_INVALID_EVENT
    assert es.events == {"0x6e": 1, "0x87": 1}


# -- string I/O (56421 section 4.1.2: count in sw_exit_info_2, data at sw_scratch) -------------
SHARED = GHCB_GPA + 0x800  # the GHCB's shared buffer, where Linux points sw_scratch


def test_outs_and_ins_go_through_the_shared_buffer(vm):
    """Scenario: REP OUTSB of 3 bytes to port 0x3f8 and REP INSW of 2 words from 0x60 by an
    SEV-ES #VC handler: exit_info_1 = port << 16 | size bit | REP (8) | STR (4) | IN (1)."""
    es = EsExits(vm, SimpleNamespace(ghcb_msr=0), string_io=True)
    page = bytearray(GHCB_SIZE)
    page[0x800:0x803] = b"abc"
    vm.write_gpa(GHCB_GPA, bytes(page))
    g = Ghcb(GHCB_GPA, bytes(page))
    g.set("sw_exit_code", 0x7B)
    g.set("sw_exit_info_1", 0x3F8 << 16 | 0x10 | 8 | 4)
    g.set("sw_exit_info_2", 3)
    g.set("sw_scratch", SHARED)
    struct.pack_into("<H", g.page, 0xFFA, 2)
    vm.write_gpa(GHCB_GPA, bytes(g.page))
    es.control.ghcb_msr = GHCB_GPA
    out = es.vmgexit()
    assert out == K.StringIo(0x3F8, 1, False, 3, b"abc")
    es.complete(out)
    assert answer(vm) == (0, 0)
    got = ask(vm, es, 0x7B, sw_exit_info_1=0x60 << 16 | 0x20 | 8 | 4 | 1, sw_exit_info_2=2,
              sw_scratch=SHARED)
    assert got == K.StringIo(0x60, 2, True, 2)
    got.buffer = bytes.fromhex("11223344")
    es.complete(got)
    assert vm.read_gpa(SHARED, 4) == bytes.fromhex("11223344") and answer(vm) == (0, 0)
    assert es.events == {"0x7b": 2}


def test_string_io_outside_the_shared_buffer_or_not_offered_is_refused(vm):
    """A scratch area beyond the shared buffer is GHCB_ERR_INVALID_SCRATCH_AREA (3); a VMM that
    does not take string I/O answers GHCB_ERR_INVALID_INPUT (5)."""
    es = EsExits(vm, SimpleNamespace(ghcb_msr=0), string_io=True)
    info = 0x3F8 << 16 | 0x10 | 8 | 4
    assert ask(vm, es, 0x7B, sw_exit_info_1=info, sw_exit_info_2=4000, sw_scratch=SHARED) is None
    assert answer(vm) == (2, 3)
    assert ask(vm, es_for(vm), 0x7B, sw_exit_info_1=info, sw_exit_info_2=1, sw_scratch=SHARED) is None
    assert answer(vm) == (2, 5)


def test_an_snp_guests_ghcb_must_be_registered_first(psp_state):
    """Scenario: GHCB 2.0 requires an SEV-SNP guest to register its GHCB's GPA (MSR protocol
    0x012) before using it; KVM refuses the exit otherwise. A request through an unregistered
    GHCB ends the guest; after registering the same page, the request is answered."""
    from hv.kvm.mode import Mode
    from hv.kvm.sev import SevDevice
    from hv.kvm.sev_snp import snp_init

    kvm = Kvm(Machine(MachineConfig(dram_size=16 << 20, psp_state=psp_state)))
    snp_init(SevDevice(kvm))
    vm = kvm.create_vm(Mode.SEV_SNP, cbitpos=CBIT)
    vm.set_user_memory_region(0, 0, 1 << 20)
    vm.cpuid[(0x8000001F, 0)] = (0x1A, CBIT, 0, 0)
    es = es_for(vm)
    out = ask(vm, es, 0x72, rax=0x8000001F, rcx=0)
    assert isinstance(out, K.SystemEvent) and "was not registered" in out.detail
    es.control.ghcb_msr = GHCB_GPA | 0x012
    assert es.vmgexit() is None and es.control.ghcb_msr == GHCB_GPA | 0x013
    assert ask(vm, es, 0x72, rax=0x8000001F, rcx=0) is None
    assert answer(vm) == (0, 0) and q(vm, RAX) == 0x1A
    vm.destroy()
