"""The RMP in the memory controller and the CPU: host writes, guest access checks, PVALIDATE."""

from __future__ import annotations

import pytest

from hv.hw.cpu import Cpu, GuestControl
from hv.hw.exits import NpfExit, ShutdownExit
from hv.hw.mmu import Mmu
from hv.hw.rmp import (FAIL_PERMISSION, FAIL_SIZEMISMATCH, RMP_NPF, Rmp, RmpEntry, RmpViolation,
                       VC_UNVALIDATED)
from hv.hw.snp_mmu import SnpMmu
from snpvm import SnpVm
from tinyvm import ALIAS_VA, ASID, CBIT, DATA_GPA, MAILBOX_GPA, PRIVATE_VA

DATA1 = DATA_GPA + 0x1000


def test_validated_private_pages_work_under_snp():
    """Scenario: a launched SNP guest reads and writes its own validated pages."""
    vm = SnpVm()
    vm.guest_write(PRIVATE_VA + 8, 0xDEADBEEF)
    assert vm.guest_read(PRIVATE_VA + 8) == 0xDEADBEEF
    assert vm.cpu.control.sev_status & 4  # SEV_STATUS.SNP_Active


def test_host_and_dma_writes_to_guest_pages_fail_and_change_nothing():
    """Scenario: the hypervisor and a device try to overwrite a guest page (replay, corruption)."""
    vm = SnpVm()
    vm.guest_write(PRIVATE_VA, 0x1122334455667788)
    before = vm.mc.raw_dump(vm.spa(DATA_GPA), 0x1000)
    for port in (vm.host, vm.dma):
        with pytest.raises(RmpViolation, match="assigned to ASID 3"):
            port.write(vm.spa(DATA_GPA) + 0xFF8, b"\0" * 16)
    assert vm.mc.raw_dump(vm.spa(DATA_GPA), 0x1000) == before
    assert vm.guest_read(PRIVATE_VA) == 0x1122334455667788
    # Reads still work and return ciphertext.
    raw = vm.host.read(vm.spa(DATA_GPA), 8)
    assert raw != (0x1122334455667788).to_bytes(8, "little")
    # Hypervisor-owned pages (the shared mailbox) stay writable.
    vm.host.write(vm.spa(MAILBOX_GPA) + 0x100, b"ok")


def test_firmware_pages_refuse_host_writes():
    vm = SnpVm()
    vm.rmp.firmware_set(vm.spa(0x1F0000), RmpEntry(assigned=True, immutable=True))
    with pytest.raises(RmpViolation, match="the firmware"):
        vm.host.write(vm.spa(0x1F0000), b"x")
    assert vm.rmp.rmpupdate(vm.spa(0x1F0000), RmpEntry()) == FAIL_PERMISSION


def test_remapped_page_is_a_nested_fault_with_the_rmp_bit():
    """Scenario: SEVered - the hypervisor maps GPA DATA to the host page of GPA DATA1."""
    vm = SnpVm()
    vm.guest_write(PRIVATE_VA + 0x1000, 42)
    vm.npt.map(DATA_GPA, vm.spa(DATA1), 0x1000)
    e = vm.run_command(1, PRIVATE_VA + 0x10)
    assert isinstance(e, NpfExit) and e.error_code & RMP_NPF
    assert e.gpa == DATA_GPA + 0x10


def test_page_of_another_asid_is_a_nested_fault():
    vm = SnpVm()
    vm.rmp.firmware_set(vm.spa(DATA1), RmpEntry(assigned=True, asid=ASID + 1, gpa=DATA1,
                                                validated=True))
    e = vm.run_command(1, PRIVATE_VA + 0x1000)
    assert isinstance(e, NpfExit) and e.error_code & RMP_NPF


def test_shared_access_to_a_private_page_is_a_nested_fault():
    vm = SnpVm()
    e = vm.run_command(1, ALIAS_VA)
    assert isinstance(e, NpfExit) and e.error_code & RMP_NPF and e.gpa == DATA_GPA


def test_hypervisor_page_under_a_private_mapping_is_a_nested_fault():
    vm = SnpVm()
    vm.rmp.rmpupdate(vm.spa(DATA1), RmpEntry())
    e = vm.run_command(1, PRIVATE_VA + 0x1000)
    assert isinstance(e, NpfExit) and e.error_code & RMP_NPF


def test_rmpupdate_clears_validated_so_the_guest_gets_vc():
    """Scenario: the hypervisor reassigns a page (swap, replay): the guest's next access is #VC."""
    vm = SnpVm()
    assert vm.rmp.rmpupdate(vm.spa(DATA1), RmpEntry(assigned=True, asid=ASID, gpa=DATA1)) == 0
    assert not vm.rmp.read(vm.spa(DATA1)).validated
    e = vm.run_command(1, PRIVATE_VA + 0x1000)
    # TinyVm has no IDT: the #VC escalates to a triple fault, which names the vector.
    assert isinstance(e, ShutdownExit) and "exception 29" in e.reason


def test_pvalidate_validates_once_and_reports_no_change_with_cf():
    vm = SnpVm()
    vm.rmp.rmpupdate(vm.spa(DATA1), RmpEntry(assigned=True, asid=ASID, gpa=DATA1))
    assert vm.pvalidate(PRIVATE_VA + 0x1000) == (0, 0)
    assert vm.pvalidate(PRIVATE_VA + 0x1000) == (0, 1)
    vm.guest_write(PRIVATE_VA + 0x1000, 7)
    assert vm.guest_read(PRIVATE_VA + 0x1000) == 7


def test_pvalidate_rescind_makes_the_next_access_vc():
    vm = SnpVm()
    vm.guest_write(PRIVATE_VA + 0x1000, 5)
    assert vm.guest_read(PRIVATE_VA + 0x1000) == 5  # in the TLB now
    assert vm.pvalidate(PRIVATE_VA + 0x1000, validate=False) == (0, 0)
    e = vm.run_command(1, PRIVATE_VA + 0x1000)
    assert isinstance(e, ShutdownExit) and "exception 29" in e.reason


def test_pvalidate_2m_is_a_size_mismatch():
    vm = SnpVm()
    assert vm.pvalidate(PRIVATE_VA, size=1) == (FAIL_SIZEMISMATCH, 0)


def test_pvalidate_of_a_page_owned_elsewhere_is_a_nested_fault():
    vm = SnpVm()
    vm.npt.map(DATA1, vm.spa(DATA_GPA), 0x1000)  # DATA1 now backed by DATA's page
    vm.host.write(vm.spa(MAILBOX_GPA), (PRIVATE_VA + 0x1000).to_bytes(8, "little") + bytes(16))
    vm.cpu.set_regs({"rip": 0x1800})
    e = vm.cpu.run()
    assert isinstance(e, NpfExit) and e.error_code & RMP_NPF and e.gpa == DATA1


def test_pvalidate_is_ud_outside_snp():
    vm = SnpVm(snp=False)
    assert isinstance(vm.cpu._mmu, Mmu) and not isinstance(vm.cpu._mmu, SnpMmu)
    vm.host.write(vm.spa(MAILBOX_GPA), (PRIVATE_VA).to_bytes(8, "little") + bytes(16))
    vm.cpu.set_regs({"rip": 0x1800})
    e = vm.cpu.run()
    assert isinstance(e, ShutdownExit) and "exception 6" in e.reason


def test_snp_needs_the_rmp():
    from tinyvm import TinyVm
    vm = TinyVm()
    with pytest.raises(ValueError, match="SNP_INIT"):
        Cpu(vm.mc, GuestControl(asid=ASID, npt=vm.npt, sev=True, sev_snp=True, cbitpos=CBIT))


def test_rmp_entry_fields_and_checks():
    rmp = Rmp(16 << 12)
    assert rmp.read(0x3000) == RmpEntry()
    assert rmp.rmpupdate(0x3000, RmpEntry(assigned=True, asid=5, gpa=0x7000, page_size=1)) == \
        FAIL_SIZEMISMATCH
    assert rmp.rmpupdate(0x3000, RmpEntry(assigned=True, asid=5, gpa=0x7000)) == 0
    assert rmp.read(0x3000) == RmpEntry(assigned=True, asid=5, gpa=0x7000)
    assert rmp.guest_check(0x3000, 5, 0x7000, True) == VC_UNVALIDATED
    assert rmp.guest_check(0x3000, 5, 0x8000, True) & RMP_NPF
    assert rmp.guest_check(0x3000, 5, 0x7000, False) == RMP_NPF
    assert rmp.guest_check(0x4000, 5, 0x7000, False) == 0
    rmp.check_host_write(0x2000, 0x1000)
    with pytest.raises(RmpViolation):
        rmp.check_host_write(0x2FFF, 2)
    with pytest.raises(ValueError):
        rmp.read(0x3001)
