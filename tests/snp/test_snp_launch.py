"""The SNP launch through the PSP: SNP_INIT, GCTX, LAUNCH_START/UPDATE/FINISH, the RMP states
it leaves, the SHA-384 launch digest, and the policy checks."""

from __future__ import annotations

import hashlib

import pytest

from hv.hw.machine import Machine, MachineConfig
from hv.hw.rmp import RmpEntry, RmpViolation
from hv.kvm import Kvm
from hv.kvm.sev import FirmwareError, SevDevice
from hv.kvm.sev_snp import RmpUpdateError, SnpGuest, rmp_make_private, rmp_make_shared, snp_init
from sevwire import SNP_POLICY_DEFAULT, Cmd, SnpPageType, Status, snp_extend

MEM = 1 << 20


def _digest_of(pages):
    ld = bytes(48)
    for contents, kind, gpa in pages:
        ld = snp_extend(ld, contents, kind, gpa)
    return ld


def _fw_digest(machine, guest):
    return machine.psp_firmware._ctx.snp_guests[guest.gctx].ld


def test_launch_measures_encrypts_and_validates(launch):
    """Scenario: two NORMAL pages, a ZERO and a SECRETS page; the PSP's digest is the one the
    owner computes from contents, types and GPAs, and the pages end Guest-valid."""
    machine, vm, dev = launch
    a, b = bytes(range(256)) * 16, b"\x5a" * 4096
    vm.write_gpa(0x1000, a)
    vm.write_gpa(0x2000, b)
    g = SnpGuest(vm, dev)
    g.launch_start()
    g.launch_update(0x1000)
    g.launch_update(0x2000)
    g.launch_update(0x3000, SnpPageType.ZERO)
    g.launch_update(0x4000, SnpPageType.SECRETS)
    g.launch_finish()
    expected = _digest_of([(a, 1, 0x1000), (b, 1, 0x2000), (b"", 3, 0x3000), (b"", 5, 0x4000)])
    assert _fw_digest(machine, g) == expected
    # Any change of contents, GPA or type changes the digest.
    assert expected != _digest_of([(a, 1, 0x2000), (b, 1, 0x1000), (b"", 3, 0x3000), (b"", 5, 0x4000)])
    assert expected != _digest_of([(a, 1, 0x1000), (b, 4, 0x2000), (b"", 3, 0x3000), (b"", 5, 0x4000)])
    for gpa in (0x1000, 0x2000, 0x3000, 0x4000):
        e = machine.rmpread(vm.gpa_to_spa(gpa))
        assert e == RmpEntry(assigned=True, asid=vm.asid, gpa=gpa, validated=True)
    # In DRAM: ciphertext, and the host can no longer write it.
    assert vm.read_gpa(0x1000, 4096) != a
    with pytest.raises(RmpViolation):
        vm.write_gpa(0x1000, b"x")
    # The context page is the firmware's.
    gctx = machine.rmpread(g.gctx)
    assert gctx.assigned and gctx.immutable and gctx.asid == 0
    with pytest.raises(RmpViolation):
        machine.host.write(g.gctx, b"x")


def test_launch_update_needs_a_pre_guest_page_of_this_guest(launch):
    machine, vm, dev = launch
    g = SnpGuest(vm, dev)
    g.launch_start()
    spa = vm.gpa_to_spa(0x5000)
    from sevwire import SnpLaunchUpdate
    upd = SnpLaunchUpdate(gctx_paddr=g.gctx, flags=SnpLaunchUpdate.make_flags(1), page_paddr=spa)
    assert dev.issue(Cmd.SNP_LAUNCH_UPDATE, upd, check=False)[0] == Status.INVALID_PAGE_STATE
    rmp_make_private(machine, spa, vm.asid + 1, 0x5000, immutable=True)
    assert dev.issue(Cmd.SNP_LAUNCH_UPDATE, upd, check=False)[0] == Status.INVALID_PAGE_OWNER
    # Immutable: the hypervisor cannot take it back while it is Pre-guest.
    with pytest.raises(RmpUpdateError):
        rmp_make_shared(machine, spa)
    big = SnpLaunchUpdate(gctx_paddr=g.gctx, flags=SnpLaunchUpdate.make_flags(1, page_size=1),
                          page_paddr=spa)
    assert dev.issue(Cmd.SNP_LAUNCH_UPDATE, big, check=False)[0] == Status.INVALID_PAGE_SIZE


@pytest.mark.parametrize("policy,status", [
    (SNP_POLICY_DEFAULT & ~(1 << 17), Status.POLICY_FAILURE),   # reserved-must-be-one
    (SNP_POLICY_DEFAULT | 1 << 40, Status.POLICY_FAILURE),       # unknown bit
    (SNP_POLICY_DEFAULT & ~(1 << 16), Status.POLICY_FAILURE),    # SMT forbidden, SMT is on
    (SNP_POLICY_DEFAULT | 0xFF00, Status.POLICY_FAILURE),        # ABI major 255
    (SNP_POLICY_DEFAULT | 1 << 18, Status.UNSUPPORTED),          # MIGRATE_MA
])
def test_policy_checks(launch, policy, status):
    _machine, vm, dev = launch
    g = SnpGuest(vm, dev, policy)
    with pytest.raises(FirmwareError) as err:
        g.launch_start()
    assert err.value.status == status


def test_debug_and_single_socket_policies_are_accepted(launch):
    _machine, vm, dev = launch
    SnpGuest(vm, dev, SNP_POLICY_DEFAULT | 1 << 19 | 1 << 20).launch_start()


def test_snp_commands_need_snp_init(psp_state):
    machine = Machine(MachineConfig(dram_size=32 << 20, psp_state=psp_state))
    kvm = Kvm(machine)
    dev = SevDevice(kvm)
    from sevwire import SnpGctxCreate
    st, _ = dev.issue(Cmd.SNP_GCTX_CREATE, SnpGctxCreate(gctx_paddr=kvm.alloc(0x1000)), check=False)
    assert st == Status.INVALID_PLATFORM_STATE
    assert not machine.snp_enabled
    snp_init(dev)
    assert machine.snp_enabled
    assert dev.issue(Cmd.SNP_INIT, check=False)[0] == Status.INVALID_PLATFORM_STATE


def test_snp_asid_is_not_given_to_a_legacy_guest(launch):
    _machine, vm, dev = launch
    g = SnpGuest(vm, dev)
    g.launch_start()
    from sevwire import Activate, LaunchStart
    _st, out = dev.issue(Cmd.LAUNCH_START, LaunchStart(policy=0x5))  # an SEV-ES policy
    st, _ = dev.issue(Cmd.ACTIVATE, Activate(handle=out.handle, asid=vm.asid), check=False)
    assert st == Status.ASID_OWNED


def test_decommission_returns_the_context_page(launch):
    machine, vm, dev = launch
    g = SnpGuest(vm, dev)
    g.launch_start()
    gctx = g.gctx
    g.decommission()
    assert machine.rmpread(gctx) == RmpEntry()
    machine.host.write(gctx, b"ok")


def test_known_answer_vectors():
    """es-snp-reference 3.4 vectors: one zero NORMAL page, one ZERO page, both at GPA 0."""
    normal = snp_extend(bytes(48), bytes(4096), 1, 0).hex()
    assert normal == ("9d13634b6014bb21cf059b2dc694e7bff01a8a7137041100cd2b695f3d10fb68"
                      "7267b97808b27f8f471d943bc6f53a20")
    zero = snp_extend(bytes(48), b"", 3, 0).hex()
    assert zero.startswith("70c0ecaa") and zero.endswith("dd794676")
    # The contents field of a ZERO page is zeros, not the hash of a zero page.
    assert zero != hashlib.sha384(bytes(48) + hashlib.sha384(bytes(4096)).digest()).hexdigest()


def test_a_sev_snp_vm_needs_snp_init(psp_state):
    """KVM refuses to create an SNP VM before SNP_INIT (its vCPUs need the RMP); other types
    never turn the RMP on, so they pay nothing for it."""
    from hv.kvm import KvmError
    machine = Machine(MachineConfig(dram_size=32 << 20, psp_state=psp_state))
    kvm = Kvm(machine)
    with pytest.raises(KvmError, match="SNP_INIT"):
        kvm.create_vm("sev-snp")
    SevDevice(kvm).ensure_init(es=True)
    es = kvm.create_vm("sev-es")
    es.set_user_memory_region(0, 0, MEM)
    es.create_vcpu()
    assert not machine.snp_enabled
