"""SNP_LAUNCH_UPDATE with VMPL1..3 permission masks: the PSP measures them into PAGE_INFO at the
offsets of the table "PAGE_INFO Structure" in AMD's SEV-SNP Firmware ABI specification
(publication 56860): 0x64 VMPL3_PERMS, 0x65 VMPL2_PERMS, 0x66 VMPL1_PERMS, 0x67 reserved. The
expected digests are built here byte by byte from that table with hashlib, not with sevwire."""

from __future__ import annotations

import hashlib
import struct

import pytest

from hv.kvm.sev import FirmwareError
from hv.kvm.sev_snp import SnpGuest
from sevwire import SnpPageType, Status

PAGE_A = bytes(range(256)) * 16


def _abi_page_info(ld: bytes, contents_hash: bytes, page_type: int, gpa: int,
                   vmpl1: int, vmpl2: int, vmpl3: int) -> bytes:
    """PAGE_INFO written out from the ABI table, one field at a time."""
    info = bytearray(0x70)
    info[0x00:0x30] = ld                                  # DIGEST_CUR
    info[0x30:0x60] = contents_hash                       # CONTENTS
    info[0x60:0x62] = (0x70).to_bytes(2, "little")        # LENGTH
    info[0x62] = page_type                                # PAGE_TYPE
    info[0x63] = 0                                        # IMI_PAGE (bit 0)
    info[0x64] = vmpl3                                    # VMPL3_PERMS
    info[0x65] = vmpl2                                    # VMPL2_PERMS
    info[0x66] = vmpl1                                    # VMPL1_PERMS
    info[0x67] = 0                                        # reserved
    info[0x68:0x70] = gpa.to_bytes(8, "little")           # GPA
    return bytes(info)


def _launch(machine, vm, dev, pages):
    g = SnpGuest(vm, dev)
    g.launch_start()
    for gpa, kind, perms in pages:
        g.launch_update(gpa, kind, vmpl_perms=perms)
    g.launch_finish()
    return machine.psp_firmware._ctx.snp_guests[g.gctx].ld


def test_vmpl_permission_masks_are_measured_as_the_abi_table_says(launch):
    """Scenario: a NORMAL page launched with VMPL1 = RW+Xs, VMPL2 = R, VMPL3 = RWXuXs+SSS, then a
    SECRETS page with other masks; the PSP's digest is the one built from the ABI table."""
    machine, vm, dev = launch
    vm.write_gpa(0x1000, PAGE_A)
    perms_a, perms_b = (0x0B, 0x01, 0x1F), (0x03, 0x00, 0x0C)
    ld = _launch(machine, vm, dev, [(0x1000, SnpPageType.NORMAL, perms_a),
                                    (0x2000, SnpPageType.SECRETS, perms_b)])
    expected = bytes(48)
    for contents_hash, kind, gpa, (p1, p2, p3) in (
            (hashlib.sha384(PAGE_A).digest(), 1, 0x1000, perms_a),
            (bytes(48), 5, 0x2000, perms_b)):
        expected = hashlib.sha384(_abi_page_info(expected, contents_hash, kind, gpa, p1, p2, p3)).digest()
    assert ld == expected
    # The order matters: AMD's Genoa firmware source declares reserved, VMPL1, VMPL2, VMPL3 at
    # 0x64-0x67; that order gives another digest, so this test tells the two apart.
    other = bytes(48)
    for contents_hash, kind, gpa, (p1, p2, p3) in (
            (hashlib.sha384(PAGE_A).digest(), 1, 0x1000, perms_a),
            (bytes(48), 5, 0x2000, perms_b)):
        info = bytearray(_abi_page_info(other, contents_hash, kind, gpa, 0, 0, 0))
        info[0x64:0x68] = struct.pack("<BBBB", 0, p1, p2, p3)
        other = hashlib.sha384(bytes(info)).digest()
    assert ld != other


def test_zero_masks_measure_as_before(launch):
    """Scenario: masks of zero (what KVM and QEMU send) measure as a launch without masks."""
    machine, vm, dev = launch
    vm.write_gpa(0x1000, PAGE_A)
    ld = _launch(machine, vm, dev, [(0x1000, SnpPageType.NORMAL, (0, 0, 0))])
    assert ld == hashlib.sha384(_abi_page_info(bytes(48), hashlib.sha384(PAGE_A).digest(), 1,
                                               0x1000, 0, 0, 0)).digest()


@pytest.mark.parametrize("perms", [(0x20, 0, 0), (0, 0x80, 0), (0, 0, 0x40)])
def test_reserved_permission_bits_are_refused(launch, perms):
    """Scenario: a mask with a reserved bit (7:5) is INVALID_PARAM; the page is not measured."""
    machine, vm, dev = launch
    g = SnpGuest(vm, dev)
    g.launch_start()
    with pytest.raises(FirmwareError) as err:
        g.launch_update(0x1000, SnpPageType.NORMAL, vmpl_perms=perms)
    assert err.value.status == Status.INVALID_PARAM
    assert machine.psp_firmware._ctx.snp_guests[g.gctx].ld == bytes(48)
