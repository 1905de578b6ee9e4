"""The hypervisor at an exit reads a register that holds a secret and redirects RIP: under SEV it
succeeds (the honest control), under SEV-ES it reads ciphertext and the redirect fails the next
VMRUN instead of running its code.

The guest (flat binary at 0x100000, assembled from):
        movabs $0x5345435245542121, %rax     # the secret, live in RAX at the exit
        hlt
        movl   $0x600DF00D, 0x8004          # the guest's own path: a marker in the shared page
        hlt
  evil: movl   $0x0BADC0DE, 0x8004          # (+0x17) where the hypervisor wants it to go
        hlt
"""

from __future__ import annotations

import pytest

from hv.kvm import exits as K

GUEST = bytes.fromhex("48b82121544552434553f4c70425048000000df00d60f4c7042504800000dec0ad0bf4")
SECRET = 0x5345435245542121
EVIL = 0x100000 + 0x17
MARKER_GPA = 0x8004


def marker(vmm) -> int:
    return int.from_bytes(vmm.vm.read_gpa(MARKER_GPA, 4), "little")


def test_under_sev_the_hypervisor_reads_the_secret_and_redirects_the_guest(make_vmm):
    """Scenario (honest control): plain SEV leaves registers to the hypervisor."""
    vmm = make_vmm(GUEST, "sev")
    assert isinstance(vmm.vcpu.run(), K.Hlt)
    assert vmm.vcpu.get_regs()["rax"] == SECRET
    vmm.vcpu.set_regs({"rip": EVIL})
    assert isinstance(vmm.vcpu.run(), K.Hlt)
    assert marker(vmm) == 0x0BADC0DE


def test_under_sev_es_the_guest_runs_its_own_path(make_vmm):
    """Scenario: an honest hypervisor resumes an SEV-ES guest across an exit unharmed."""
    vmm = make_vmm(GUEST, "sev-es")
    assert vmm.vcpu.guest_state_protected
    assert isinstance(vmm.vcpu.run(), K.Hlt)
    assert isinstance(vmm.vcpu.run(), K.Hlt)
    assert marker(vmm) == 0x600DF00D


def test_under_sev_es_registers_read_as_ciphertext_and_a_redirect_fails_entry(make_vmm):
    """Scenario: the same hypervisor against SEV-ES learns nothing and cannot steer the guest."""
    vmm = make_vmm(GUEST, "sev-es")
    assert isinstance(vmm.vcpu.run(), K.Hlt)
    regs = vmm.vcpu.get_regs()
    assert SECRET not in regs.values()
    assert regs["rip"] != 0x100000 + 11  # the real RIP after the first HLT
    page = vmm.vm.host.read(vmm.vcpu.vmsa_spa, 4096)
    assert SECRET.to_bytes(8, "little") not in page
    vmm.vcpu.set_regs({"rip": EVIL})
    e = vmm.vcpu.run()
    assert isinstance(e, K.FailEntry), e
    assert "integrity" in e.detail
    assert marker(vmm) != 0x0BADC0DE


def test_the_hook_seam_of_the_vmm_sees_the_same(make_vmm, psp_state):
    """Scenario: a malicious VmmConfig.on_exit hook redirects RIP at the first HLT... which ends
    an SEV run; under SEV-ES the run fails at the next entry and reports FAIL_ENTRY."""
    from hv.vmm import Vmm, VmmConfig

    seen = []

    def hook(vmm, e):
        if isinstance(e, K.Hlt) and not seen:
            seen.append(vmm.vcpu.get_regs()["rax"])
            vmm.vcpu.set_regs({"rip": EVIL})

    vmm = Vmm(VmmConfig(image=GUEST, vm_type="sev-es", mem_size=16 << 20, psp_state=psp_state, on_exit=hook))
    try:
        result = vmm.run()
    finally:
        vmm.close()
    assert seen and seen[0] != SECRET
    assert result.exit_reason == "hlt"  # the VMM stops at the HLT; nothing of the guest leaked


@pytest.mark.parametrize("offset", [0x178, 0x1F8, 0x300, 0x3B0, 0x10])
def test_any_change_to_the_saved_vmsa_fails_entry(make_vmm, offset):
    """Scenario: flipping one bit of the stored VMSA ciphertext (RIP, RAX, reserved words,
    SEV_FEATURES, a segment) makes VMRUN refuse the guest state."""
    vmm = make_vmm(GUEST, "sev-es")
    assert isinstance(vmm.vcpu.run(), K.Hlt)
    spa = vmm.vcpu.vmsa_spa + offset
    byte = vmm.vm.host.read(spa, 1)[0]
    vmm.vm.host.write(spa, bytes([byte ^ 1]))
    assert isinstance(vmm.vcpu.run(), K.FailEntry)


def test_replaying_an_older_vmsa_fails_entry(make_vmm):
    """Scenario: the hypervisor saves the VMSA ciphertext at one exit and puts it back after the
    next: the integrity value in the TMR has moved on, so the old state is refused."""
    vmm = make_vmm(GUEST, "sev-es")
    spa = vmm.vcpu.vmsa_spa
    assert isinstance(vmm.vcpu.run(), K.Hlt)
    old = vmm.vm.host.read(spa, 4096)
    assert isinstance(vmm.vcpu.run(), K.Hlt)
    vmm.vm.host.write(spa, old)
    assert isinstance(vmm.vcpu.run(), K.FailEntry)


def test_the_tmr_is_out_of_the_hypervisors_reach(make_vmm):
    """Scenario: the integrity values live in the TMR, which host accesses cannot touch."""
    from hv.hw.errors import AddressError

    vmm = make_vmm(GUEST, "sev-es")
    tmr = vmm.sev.dev._tmr
    with pytest.raises(AddressError):
        vmm.vm.host.read(tmr, 16)
    with pytest.raises(AddressError):
        vmm.vm.host.write(tmr, bytes(16))
