"""EFER.SVME in the save area: KVM launches every VMSA with it (its VMCB save area always holds
SVME), the CPU refuses VMRUN of a guest state without it, and the CPU keeps it at every save.

The guest is the one-HLT flat binary `f4` at 0x100000."""

from __future__ import annotations

import struct

import pytest

from hv import boot
from hv.kvm import exits as K

GUEST = bytes.fromhex("f4f4f4")
EFER_OFF = 0xD0  # AMD's save-area offset of EFER (es-snp-reference 1)


def _efer(vmm) -> int:
    machine = vmm.machine
    plain = machine._mc.read(vmm.vcpu.vmsa_spa, 4096, vmm.vm.asid)
    return struct.unpack_from("<Q", plain, EFER_OFF)[0]


def test_the_launched_vmsa_has_svme_and_keeps_it_across_exits(make_vmm):
    """Scenario: an SEV-ES guest runs to its HLT; its save area holds EFER = LME|LMA|NXE|SVME
    before the first VMRUN and again after the #VMEXIT wrote it back."""
    vmm = make_vmm(GUEST, "sev-es")
    assert _efer(vmm) == 0x1D00
    assert isinstance(vmm.vcpu.run(), K.Hlt)
    assert _efer(vmm) == 0x1D00


def test_vmrun_refuses_a_vmsa_without_svme(make_vmm, monkeypatch):
    """Scenario: the same launch with a VMSA whose EFER lacks SVME (what hv launched before):
    the PSP measures it, but the first VMRUN fails, as the APM's consistency checks demand."""
    def without_svme(image, mem_size, vcpus=1):
        return [boot.initial_vmsa(image, mem_size, regs={"efer": 0xD00})]

    monkeypatch.setattr(boot, "launch_vmsas", without_svme)
    vmm = make_vmm(GUEST, "sev-es")
    assert _efer(vmm) == 0xD00
    assert isinstance(vmm.vcpu.run(), K.FailEntry)


@pytest.mark.parametrize("vm_type", ["sev-es", "sev-snp"])
def test_the_owner_prediction_includes_svme(vm_type):
    """Scenario: the VMSA the owner predicts from an image (ES and SNP) carries SVME."""
    features = 1 if vm_type == "sev-snp" else 0
    page = boot.initial_vmsa(b"\xf4" * 16, 16 << 20, features, rip=0x100000)
    assert struct.unpack_from("<Q", page, EFER_OFF)[0] & 0x1000
