"""The TMR against everything but the PSP, on the whole machine: host, DMA and guests.

The VMSA integrity values that make an SEV-ES guest's saved registers tamper-evident live in the
TMR the PSP reserves at INIT. On the part the TMR is fenced from every x86 agent from then on: the
hypervisor's own loads and stores, devices, and guests, whatever the hypervisor puts in their
nested page tables. Here a hypervisor tries each of these. Its accomplice is a plain VM of its own
whose nested page table maps a TMR page; the victim is the SEV-ES guest of test_es_registers.py:
        movabs $0x5345435245542121, %rax; hlt
        movl   $0x600DF00D, 0x8004;         hlt
        movl   $0x0BADC0DE, 0x8004;         hlt
"""

from __future__ import annotations

import pytest

from hv.boot import boot_page_tables
from hv.hw.errors import AddressError
from hv.hw.machine import Machine, MachineConfig
from hv.kvm import Kvm, exits as K
from hv.kvm.sev import SevDevice

GUEST = bytes.fromhex("48b82121544552434553f4c70425048000000df00d60f4c7042504800000dec0ad0bf4")
PAGE = 0x1000
TMR_LEN = 1 << 20
COPY = bytes.fromhex("f3a4f4")  # rep movsb; hlt
CODE, BUF, WINDOW = 0x100000, 0x200000, 0x300000  # the accomplice's GPAs (identity-mapped)


class Accomplice:
    """A plain VM of the hypervisor that copies bytes between two of its GPAs on request."""

    def __init__(self, kvm: Kvm):
        self.vm = kvm.create_vm("plain")
        self.vm.set_user_memory_region(0, 0, 4 << 20)
        for gpa, data in boot_page_tables(4 << 20, None):
            self.vm.write_gpa(gpa, data)
        self.vm.write_gpa(CODE, COPY)
        self.vcpu = self.vm.create_vcpu()
        self.vcpu.set_sregs({"cr3": 0x1000})

    def copy(self, src: int, dst: int, length: int) -> None:
        self.vcpu.set_regs({"rip": CODE, "rsi": src, "rdi": dst, "rcx": length})
        e = self.vcpu.run()
        assert isinstance(e, K.Hlt), e


def _victim_slot(vmm) -> tuple[int, int, bytes]:
    """(TMR page, offset, tag) of the victim's slot, found as the test's own probe (the physical
    DRAM) sees it: the firmware gives the first VMSA the first free slot of a fresh TMR."""
    tmr, spa = vmm.sev.dev._tmr, vmm.vcpu.vmsa_spa
    tag = (spa | 1).to_bytes(8, "little")
    page = vmm.machine.cold_boot.dump(tmr, PAGE)
    assert page.find(tag) >= 0
    return tmr, page.find(tag), tag


def test_the_tmr_is_fenced_from_init_on(psp_state):
    """Scenario: between INIT and the first SEV-ES launch (before any slot exists) the hypervisor
    reads or writes the TMR: to plant slots, or to learn what the PSP keeps there."""
    machine = Machine(MachineConfig(dram_size=32 << 20, psp_state=psp_state))
    dev = SevDevice(Kvm(machine))
    dev.init(es=True)
    tmr = dev._tmr
    for spa in (tmr, tmr + TMR_LEN - 16):
        with pytest.raises(AddressError):
            machine.host.read(spa, 16)
        with pytest.raises(AddressError):
            machine.host.read(spa, 16, c_bit=True)
        with pytest.raises(AddressError):
            machine.host.write(spa, bytes(16))
        with pytest.raises(AddressError):
            machine.dma.read(spa, 16)
        with pytest.raises(AddressError):
            machine.dma.write(spa, bytes(16))
    machine.host.write(tmr + TMR_LEN, bytes(16))  # the control: memory next to it is the host's
    assert machine.dma.read(tmr - 16, 16) == machine.host.read(tmr - 16, 16)


def test_a_guest_of_the_hypervisor_reads_all_ones_from_the_tmr(make_vmm):
    """Scenario: the hypervisor maps the TMR page with the victim's slot into its accomplice,
    which copies it out for it."""
    vmm = make_vmm(GUEST, "sev-es")
    tmr, _at, tag = _victim_slot(vmm)
    helper = Accomplice(vmm.kvm)
    helper.vm.npt_map(WINDOW, tmr)
    helper.copy(WINDOW, BUF, PAGE)
    copied = helper.vm.read_gpa(BUF, PAGE)
    assert tag not in copied
    assert copied == b"\xff" * PAGE


def test_a_guest_of_the_hypervisor_cannot_replay_a_slot(make_vmm):
    """Scenario: the hypervisor saves the victim's VMSA ciphertext and the TMR page with the
    victim's slot (here from the physical probe, so that this test does not rest on the read
    being blocked); lets the victim run on; then puts both back, the TMR page through its
    accomplice, and resumes the victim. VMRUN must refuse."""
    vmm = make_vmm(GUEST, "sev-es")
    host, spa, probe = vmm.vm.host, vmm.vcpu.vmsa_spa, vmm.machine.cold_boot
    tmr, at, _tag = _victim_slot(vmm)
    helper = Accomplice(vmm.kvm)
    helper.vm.npt_map(WINDOW, tmr)
    assert isinstance(vmm.vcpu.run(), K.Hlt)
    old_vmsa = host.read(spa, PAGE)
    old_page = probe.dump(tmr, PAGE)

    assert isinstance(vmm.vcpu.run(), K.Hlt)
    assert probe.dump(tmr + at, 16) != old_page[at:at + 16]

    host.write(spa, old_vmsa)
    helper.vm.write_gpa(BUF, old_page)
    helper.copy(BUF, WINDOW, PAGE)
    replay = vmm.vcpu.run()
    assert not isinstance(replay, K.Hlt), "VMRUN accepted a replayed VMSA"
    assert isinstance(replay, K.FailEntry) and "integrity" in replay.detail, replay
    assert probe.dump(tmr + at, 16) != old_page[at:at + 16]


def test_an_sev_es_guest_cannot_write_into_the_tmr(make_vmm):
    """Scenario: the hypervisor maps a TMR page under the GPA the victim stores to next (0x8004,
    in its shared boot information page): the store must not land in the TMR, where it would
    plant a slot (or, on the page of a live slot, overwrite it), and the victim runs on."""
    vmm = make_vmm(GUEST, "sev-es")
    assert isinstance(vmm.vcpu.run(), K.Hlt)
    tmr, at, _tag = _victim_slot(vmm)
    probe = vmm.machine.cold_boot
    before = probe.dump(tmr, 2 * PAGE)
    vmm.vm.npt_map(0x8000, tmr + PAGE)
    assert isinstance(vmm.vcpu.run(), K.Hlt)
    after = probe.dump(tmr, 2 * PAGE)
    assert after[PAGE:] == before[PAGE:], "the guest's store changed the TMR"
    assert after[:at] == before[:at] and after[at + 16:PAGE] == before[at + 16:PAGE]
    assert isinstance(vmm.vcpu.run(), K.Hlt)
    assert probe.dump(tmr + PAGE, PAGE) == before[PAGE:]
