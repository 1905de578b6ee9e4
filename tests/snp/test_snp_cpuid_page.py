"""The CPUID page of an SEV-SNP launch on the whole machine: the VMM's table as a page
(hv.kvm.cpuid.snp_cpuid_page), SnpGuest.launch_update_cpuid, and the PSP's check of it against
the machine's own CPUID (its CpuModel), with the PSP's corrections coming back as
CpuidPageRejected.

Pages are packed here with `struct` at the offsets of Linux's `struct snp_cpuid_table`; the
machine's CPUID values are written out from hv/hw/cpuid.py's EPYC model; the launch digest is
hashed here from PAGE_INFO's layout (es-snp-reference 3.4)."""

from __future__ import annotations

import hashlib
import struct

import pytest

from hv.hw.rmp import RmpEntry
from hv.kvm import KvmError
from hv.kvm.cpuid import guest_cpuid_table, snp_cpuid_page
from hv.kvm.mode import Mode
from hv.kvm.sev import FirmwareError
from hv.kvm.sev_snp import CpuidPageRejected, SnpGuest
from sevwire import SNP_POLICY_DEFAULT, Cmd, SnpPolicy, Status

PAGE = 0x1000
CPUID_GPA = 0x3000
DEBUG = SNP_POLICY_DEFAULT | SnpPolicy.DEBUG
LEAF1 = (0x00A00F11, 0x00000800, 0x7ED8320B, 0x178BFBFF)  # EPYC's leaf 1 (hv/hw/cpuid.py)


def page_of(table: dict) -> bytes:
    """count u32, 12 reserved bytes, then per (leaf, subleaf) in order: eax_in, ecx_in u32,
    xcr0_in, xss_in u64 (zero), EAX..EDX u32, reserved u64."""
    rows = sorted(table.items())
    raw = struct.pack("<I12x", len(rows)) + b"".join(
        struct.pack("<IIQQIIIIQ", leaf, sub, 0, 0, *regs, 0) for (leaf, sub), regs in rows)
    return raw.ljust(PAGE, b"\0")


def cpuid_digest(ld: bytes, gpa: int) -> bytes:
    """SHA-384(PAGE_INFO) for a CPUID page: zero contents, length 0x70, type 6, no IMI, zero
    VMPL permissions, the GPA."""
    return hashlib.sha384(ld + bytes(48) + struct.pack("<HBBBBBBQ", 0x70, 6, 0, 0, 0, 0, 0,
                                                       gpa)).digest()


@pytest.fixture
def debug_launch(launch):
    """The sev-snp VM of tests/snp/conftest.py, its launch started with a DEBUG policy."""
    machine, vm, dev = launch
    guest = SnpGuest(vm, dev, DEBUG)
    guest.launch_start()
    return machine, vm, guest


def _digest(machine, guest) -> bytes:
    return machine.psp_firmware._ctx.snp_guests[guest.gctx].ld  # test-only: the PSP's own digest


def _vm_table(machine) -> dict:
    return guest_cpuid_table(machine.host_cpuid, Mode.SEV_SNP, machine.model.cbitpos)


def test_snp_cpuid_page_lists_the_table_in_leaf_order():
    table = {(0x80000000, 0): (0x8000001F, 1, 2, 3), (0x7, 1): (9, 8, 7, 6), (0x1, 0): LEAF1,
             (0x7, 0): (0, 5, 0, 0)}
    page = snp_cpuid_page(table)
    assert page == page_of(table)
    assert struct.unpack_from("<II", page, 0x10 + 48 * 2) == (0x7, 1)  # (1,0) (7,0) (7,1) ...
    with pytest.raises(ValueError):
        snp_cpuid_page({(0x40000000 + i, 0): (0, 0, 0, 0) for i in range(65)})


def test_the_vms_own_table_is_accepted_unchanged_and_decrypts_to_itself(debug_launch):
    """Scenario: the VMM launches its SNP VM's CPUID table (the host's, filtered as KVM does,
    with the model's C-bit). The PSP accepts it as it is; the page ends Guest-valid, its
    plaintext (through SNP_DBG_DECRYPT) is the table, and it is measured as zeros."""
    machine, vm, guest = debug_launch
    table = _vm_table(machine)
    assert table[(0x1, 0)] == (LEAF1[0], LEAF1[1], LEAF1[2] | 1 << 31, LEAF1[3])
    assert table[(0x8000001F, 0)][1] & 0x3F == 47
    page = snp_cpuid_page(table)
    guest.launch_update_cpuid(CPUID_GPA, page)
    spa = vm.gpa_to_spa(CPUID_GPA)
    assert machine.rmpread(spa) == RmpEntry(assigned=True, asid=vm.asid, gpa=CPUID_GPA,
                                            validated=True)
    assert vm.read_gpa(CPUID_GPA, PAGE) != page
    assert guest.dbg_decrypt(CPUID_GPA) == page
    assert _digest(machine, guest) == cpuid_digest(bytes(48), CPUID_GPA)


def test_a_feature_the_part_lacks_is_refused_with_the_psps_corrections(debug_launch):
    """Scenario: the hypervisor claims leaf 1 ECX bit 2 and a C-bit at 51 on a part with neither.
    CpuidPageRejected (a FirmwareError, INVALID_PARAM) carries the PSP's corrected table, which
    is the table with exactly those two registers fixed, and names both in one line; the page
    is the hypervisor's again (readable in plaintext), the digest is unchanged, and the
    corrected table then launches."""
    machine, vm, guest = debug_launch
    good = _vm_table(machine)
    bad = dict(good)
    a, b, c, d = good[(0x1, 0)]
    bad[(0x1, 0)] = (a, b, c | 1 << 2, d)
    a, b, c, d = good[(0x8000001F, 0)]
    bad[(0x8000001F, 0)] = (a, 51 | 1 << 6, c, d)
    with pytest.raises(CpuidPageRejected) as err:
        guest.launch_update_cpuid(CPUID_GPA, page_of(bad))
    e = err.value
    assert isinstance(e, FirmwareError)
    assert (e.cmd, e.status) == (Cmd.SNP_LAUNCH_UPDATE, Status.INVALID_PARAM)
    assert e.corrected == page_of(good)
    assert str(e) == ("the PSP refused the CPUID page: leaf 0x1 ECX 0xfed8320f -> 0xfed8320b; "
                      "leaf 0x8000001f EBX 0x73 -> 0x6f")
    spa = vm.gpa_to_spa(CPUID_GPA)
    assert machine.rmpread(spa) == RmpEntry()
    assert machine.host.read(spa, PAGE) == page_of(good)
    assert _digest(machine, guest) == bytes(48)
    guest.launch_update_cpuid(CPUID_GPA, e.corrected)
    assert _digest(machine, guest) == cpuid_digest(bytes(48), CPUID_GPA)


def test_another_failure_is_a_firmware_error_and_the_page_comes_back(debug_launch):
    """A CPUID page after SNP_LAUNCH_FINISH: INVALID_GUEST_STATE, raised as a plain FirmwareError,
    and the page is given back to the hypervisor rather than left immutable."""
    machine, vm, guest = debug_launch
    guest.launch_finish()
    with pytest.raises(FirmwareError) as err:
        guest.launch_update_cpuid(CPUID_GPA, snp_cpuid_page(_vm_table(machine)))
    assert not isinstance(err.value, CpuidPageRejected)
    assert err.value.status == Status.INVALID_GUEST_STATE
    assert machine.rmpread(vm.gpa_to_spa(CPUID_GPA)) == RmpEntry()
    with pytest.raises(KvmError):
        guest.launch_update_cpuid(CPUID_GPA, bytes(PAGE - 1))
