"""The SEV-ES TMR under SEV-SNP: its pages are Firmware pages in the RMP.

On an SNP part the TMR that INIT reserves sits in Firmware pages (assigned, ASID 0, immutable),
so the RMP refuses the hypervisor what the fence already refuses it: RMPUPDATE cannot give a TMR
page to a guest (FAIL_PERMISSION), SNP_PAGE_RECLAIM cannot make it mutable while the TMR is live,
and an SNP guest whose nested page table reaches a TMR page gets a nested page fault with the RMP
bit for the hypervisor, for shared, private and PVALIDATE accesses alike. Below the RMP the fence
still holds: even a TMR page the RMP wrongly gave a guest reads as all ones.
"""

from __future__ import annotations

import struct

import pytest

from hv.hw.exits import NpfExit
from hv.hw.machine import Machine, MachineConfig
from hv.hw.memctl import ABSENT, MemoryController
from hv.hw.rmp import FAIL_PERMISSION, RMP_NPF, RmpEntry
from hv.kvm import Kvm
from hv.kvm.sev import SevDevice
from hv.kvm.sev_snp import RmpUpdateError, rmp_make_private, rmp_make_shared, snp_init
from sevwire import Cmd, SnpPageReclaim, Status
from snpvm import PVALIDATE_GPA, SnpVm
from tinyvm import ALIAS_VA, ASID, DATA_GPA, MAILBOX_GPA, PRIVATE_VA

TMR, TMR_LEN = 0x600000, 1 << 20
PAGE = 0x1000
ONES = (1 << 64) - 1
FIRMWARE_PAGE = RmpEntry(assigned=True, asid=0, gpa=0, immutable=True)


def _fenced_snp_vm() -> SnpVm:
    vm = SnpVm()
    vm.mc.fence(TMR, TMR_LEN)
    vm.mc.write(TMR, b"slot: the PSP's" * 2)
    vm.npt.map(DATA_GPA, TMR, PAGE)
    return vm


# -- the machine -----------------------------------------------------------------------------------

@pytest.mark.parametrize("order", ["rmp-first", "fence-first"])
def test_fenced_pages_are_firmware_pages(order):
    """Whichever comes first, SNP_INIT (the RMP on) or INIT (the fence), the TMR ends up in
    Firmware pages and the pages around it stay the hypervisor's."""
    mc = MemoryController(8 << 20, SnpVm().engine)
    if order == "rmp-first":
        rmp = mc.enable_rmp()
        mc.fence(TMR, TMR_LEN)
    else:
        mc.fence(TMR, TMR_LEN)
        rmp = mc.enable_rmp()
    for spa in range(TMR, TMR + TMR_LEN, PAGE):
        assert rmp.read(spa) == FIRMWARE_PAGE, hex(spa)
    assert rmp.read(TMR - PAGE) == RmpEntry() and rmp.read(TMR + TMR_LEN) == RmpEntry()


def test_rmpupdate_of_a_tmr_page_fails():
    """Scenario: the hypervisor makes a TMR page Pre-guest (to launch it into a guest), or
    hands it back to itself (to map it anywhere)."""
    vm = _fenced_snp_vm()
    for entry in (RmpEntry(assigned=True, asid=ASID, gpa=DATA_GPA, immutable=True),
                  RmpEntry(assigned=True, asid=ASID, gpa=DATA_GPA), RmpEntry()):
        assert vm.rmp.rmpupdate(TMR, entry) == FAIL_PERMISSION
        assert vm.rmp.read(TMR) == FIRMWARE_PAGE


@pytest.mark.parametrize("va", [ALIAS_VA, PRIVATE_VA], ids=["shared", "private"])
@pytest.mark.parametrize("write", [False, True], ids=["read", "write"])
def test_an_snp_guest_access_to_a_tmr_page_is_an_rmp_fault(va, write):
    """Scenario: the hypervisor maps a TMR page into its SNP guest's nested page table."""
    vm = _fenced_snp_vm()
    before = vm.mc.read(TMR, PAGE)
    e = vm.run_command(0 if write else 1, va + 8, 0x4141414141414141)
    assert isinstance(e, NpfExit) and e.error_code & RMP_NPF, e
    assert e.gpa & ~0xFFF == DATA_GPA
    assert vm.mc.read(TMR, PAGE) == before


def test_pvalidate_of_a_tmr_page_is_an_rmp_fault():
    """Scenario: the guest (the hypervisor's accomplice) tries to take the page with PVALIDATE."""
    vm = _fenced_snp_vm()
    vm.host.write(vm.spa(MAILBOX_GPA), struct.pack("<QQQ", PRIVATE_VA, 0, 1))  # 4K, validate
    vm.cpu.set_regs({"rip": PVALIDATE_GPA})
    e = vm.cpu.run()
    assert isinstance(e, NpfExit) and e.error_code & RMP_NPF, e
    assert vm.rmp.read(TMR) == FIRMWARE_PAGE


def test_the_fence_holds_below_a_wrong_rmp():
    """Defence in depth: were a TMR page the SNP guest's, validated (no command can do this),
    the guest would still read all ones and its stores would still be dropped."""
    vm = _fenced_snp_vm()
    vm.rmp.firmware_set(TMR, RmpEntry(assigned=True, asid=ASID, gpa=DATA_GPA, validated=True))
    before = vm.mc.read(TMR, PAGE)
    assert vm.guest_read(PRIVATE_VA) == ONES
    vm.guest_write(PRIVATE_VA, 0x4141414141414141)
    assert vm.guest_read(PRIVATE_VA) == ONES
    assert vm.mc.read(TMR, PAGE) == before
    assert all(v.state[TMR // PAGE] == ABSENT for v in vm.mc.views.values())


# -- the whole machine: SNP_INIT, INIT, the hypervisor's instructions and commands ----------------

def _platform(psp_state, snp_first: bool = True) -> tuple[Machine, SevDevice]:
    machine = Machine(MachineConfig(dram_size=32 << 20, psp_state=psp_state))
    dev = SevDevice(Kvm(machine))
    if snp_first:
        snp_init(dev)
        dev.init(es=True)
    else:
        dev.init(es=True)
        snp_init(dev)
    return machine, dev


@pytest.mark.parametrize("snp_first", [True, False], ids=["snp-init-first", "init-first"])
def test_init_leaves_the_tmr_in_firmware_pages(psp_state, snp_first):
    machine, dev = _platform(psp_state, snp_first)
    for spa in range(dev._tmr, dev._tmr + TMR_LEN, PAGE):
        assert machine.rmpread(spa) == FIRMWARE_PAGE, hex(spa)
    assert machine.rmpread(dev._tmr + TMR_LEN) == RmpEntry()


def test_the_hypervisor_cannot_rmpupdate_a_tmr_page(psp_state):
    """Scenario: KVM's rmp_make_private / rmp_make_shared on a TMR page."""
    machine, dev = _platform(psp_state)
    for spa in (dev._tmr, dev._tmr + TMR_LEN - PAGE):
        with pytest.raises(RmpUpdateError, match=f"status {FAIL_PERMISSION}"):
            rmp_make_private(machine, spa, 1, 0x10000, immutable=True)
        with pytest.raises(RmpUpdateError, match=f"status {FAIL_PERMISSION}"):
            rmp_make_shared(machine, spa)
        assert machine.rmpread(spa) == FIRMWARE_PAGE


def test_snp_page_reclaim_of_a_tmr_page_is_refused(psp_state):
    """Scenario: the hypervisor asks the PSP to make a TMR page mutable (Firmware -> Reclaim),
    to RMPUPDATE it afterwards."""
    machine, dev = _platform(psp_state)
    for spa in (dev._tmr, dev._tmr + 0x5000):
        status, _ = dev.issue(Cmd.SNP_PAGE_RECLAIM, SnpPageReclaim(spa), check=False)
        assert status == Status.INVALID_ADDRESS
        assert machine.rmpread(spa) == FIRMWARE_PAGE
        assert machine.rmpupdate(spa, RmpEntry()) == FAIL_PERMISSION


def test_the_platform_inits_again_over_its_own_tmr(psp_state):
    """The control: SHUTDOWN and INIT again with the same TMR (which is still in Firmware
    pages) works, as AMD's INIT accepts Firmware and hypervisor pages for the TMR."""
    machine, dev = _platform(psp_state)
    dev.shutdown()
    dev.init(es=True)
    assert dev.platform_status().state != 0
    assert machine.rmpread(dev._tmr) == FIRMWARE_PAGE


def test_pages_next_to_the_tmr_stay_the_hypervisors(psp_state):
    """The control: the pages around the TMR are still the hypervisor's to give."""
    machine, dev = _platform(psp_state)
    for spa in (dev._tmr - PAGE, dev._tmr + TMR_LEN):
        rmp_make_private(machine, spa, 1, 0x10000)
        assert machine.rmpread(spa).assigned
        rmp_make_shared(machine, spa)


def test_a_tmr_reclaimed_after_shutdown_is_in_firmware_pages_again_at_init(psp_state):
    """Scenario: after SHUTDOWN (the TMR no longer live) the hypervisor reclaims the TMR's pages
    and takes them back with RMPUPDATE, then INITs over the same TMR: its pages must be Firmware
    pages again, or RMPUPDATE could hand out the new TMR."""
    machine, dev = _platform(psp_state)
    dev.shutdown()
    for spa in range(dev._tmr, dev._tmr + TMR_LEN, PAGE):
        dev.issue(Cmd.SNP_PAGE_RECLAIM, SnpPageReclaim(spa))
        rmp_make_shared(machine, spa)
    assert machine.rmpread(dev._tmr) == RmpEntry()
    dev.init(es=True)
    for spa in (dev._tmr, dev._tmr + TMR_LEN - PAGE):
        assert machine.rmpread(spa) == FIRMWARE_PAGE
        entry = RmpEntry(assigned=True, asid=1, gpa=0x10000)
        assert machine.rmpupdate(spa, entry) == FAIL_PERMISSION
