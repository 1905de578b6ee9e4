"""What a hypervisor can still do to a running SNP guest, end to end through hv.vmm: remap,
overwrite, take a page back; each is stopped by the RMP, and page-state changes are checked."""

from __future__ import annotations

from pathlib import Path

import pytest

from hv import boot
from hv.hw.rmp import RmpViolation
from hv.kvm import MemoryFault
from hv.kvm.sev_snp import page_state_change_msr, rmp_make_private
from hv.vmm.vmm import Vmm, VmmConfig

GUESTS = Path(__file__).resolve().parents[2] / "guests"
STACK_PAGE = boot.BOOT_STACK_TOP - 0x1000


def _vmm(psp_state, on_exit=None, image="hello"):
    return Vmm(VmmConfig(image=(GUESTS / f"{image}.img").read_bytes(), vm_type="sev-snp",
                         psp_state=psp_state, on_exit=on_exit))


def test_remapping_a_guest_page_is_an_rmp_fault(psp_state):
    """Scenario: SEVered - at the first exit the hypervisor maps the stack's GPA onto the host
    page of another guest page; the guest's next stack access is a nested page fault (RMP)."""
    faults = []

    def remap(vmm, e):
        if isinstance(e, MemoryFault):
            faults.append(e)
        elif not faults and vmm.vcpu.exit_counts.get("IO", 0) == 1:
            vmm.vm.npt_map(STACK_PAGE, vmm.vm.gpa_to_spa(0x100000))
        return False

    vmm = _vmm(psp_state, remap)
    result = vmm.run()
    vmm.close()
    assert result.exit_reason == "crash"
    assert faults and faults[0].rmp and faults[0].gpa & ~0xFFF == STACK_PAGE


def test_overwriting_guest_memory_fails(psp_state):
    """Scenario: replay - the hypervisor writes old ciphertext back into a guest page."""
    vmm = _vmm(psp_state)
    vmm.load()
    old = vmm.vm.read_gpa(0x100000, 0x1000)
    with pytest.raises(RmpViolation):
        vmm.vm.write_gpa(0x100000, old)
    vmm.close()


def test_a_page_taken_back_and_returned_stops_the_guest(psp_state):
    """Scenario: at the first exit the hypervisor RMPUPDATEs hello's .rodata page (as it would
    to swap or replay it); it comes back unvalidated, the guest's next read is #VC 0x404, and
    the guest library terminates rather than re-validate (reason set 1, code 7)."""
    rodata = 0x102000  # hello.img's .rodata: the greeting it prints

    def take_back(vmm, e):
        if vmm.vcpu.exit_counts.get("IO", 0) == 1 and vmm.machine.rmpread(
                vmm.vm.gpa_to_spa(rodata)).validated:
            rmp_make_private(vmm.machine, vmm.vm.gpa_to_spa(rodata), vmm.vm.asid, rodata)
        return False

    vmm = _vmm(psp_state, take_back)
    result = vmm.run()
    vmm.close()
    assert result.exit_reason == "terminated", result
    assert "reason set 1, code 0x7" in result.message
    assert "Hello from an hv guest!" not in result.serial


def test_a_stack_page_taken_back_ends_in_shutdown(psp_state):
    """Scenario: the same with the stack page: the #VC frame cannot even be pushed, so the
    guest triple-faults; it never runs on with the hypervisor's page."""
    def take_back(vmm, e):
        if vmm.vcpu.exit_counts.get("IO", 0) == 1:
            rmp_make_private(vmm.machine, vmm.vm.gpa_to_spa(STACK_PAGE), vmm.vm.asid, STACK_PAGE)
        return False

    vmm = _vmm(psp_state, take_back)
    result = vmm.run()
    vmm.close()
    assert result.exit_reason == "shutdown", result
    assert "Hello from an hv guest!" not in result.serial


def test_page_state_change_msr_protocol(psp_state):
    vmm = _vmm(psp_state)
    vmm.load()
    m, vm = vmm.machine, vmm.vm
    gpa = 0x200000
    assert page_state_change_msr(vm, gpa | 2 << 52 | 0x014) == 0x015
    assert not m.rmpread(vm.gpa_to_spa(gpa)).assigned
    assert page_state_change_msr(vm, gpa | 1 << 52 | 0x014) == 0x015
    e = m.rmpread(vm.gpa_to_spa(gpa))
    assert e.assigned and e.asid == vm.asid and e.gpa == gpa and not e.validated
    assert page_state_change_msr(vm, (1 << 40) | 2 << 52 | 0x014) >> 32 == 1  # not guest memory
    assert page_state_change_msr(vm, gpa | 7 << 52 | 0x014) >> 32 == 1        # unknown operation
    # A launched page is no longer immutable: the guest may give it up, and gets it back
    # unvalidated.
    assert page_state_change_msr(vm, 0x100000 | 2 << 52 | 0x014) == 0x015
    vmm.close()


def test_vmrun_needs_the_rmp_vmsa_page(psp_state):
    """Scenario: the hypervisor takes the VMSA page back (to swap or replay it): VMRUN fails."""
    from hv.kvm import exits as K
    from hv.kvm.sev_snp import rmp_make_shared
    vmm = _vmm(psp_state)
    vmm.load()
    rmp_make_shared(vmm.machine, vmm.vcpu.vmsa_spa)
    e = vmm.vcpu.run()
    assert isinstance(e, K.FailEntry) and "VMSA" in e.detail
    vmm.close()
