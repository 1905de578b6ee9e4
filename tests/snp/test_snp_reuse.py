"""A host runs SEV-SNP guests one after another: a torn-down guest's ASID is flushed, so the next
guest that is given it can be activated."""

from __future__ import annotations

import hv.vmm.vmm as vmm_module
from hv.hw.machine import Machine, MachineConfig
from hv.kvm import Kvm
from hv.vmm import Vmm, VmmConfig


def test_snp_guests_one_after_another_on_one_host(psp_state, monkeypatch):
    """Scenario: three SNP guests in a row on one machine and one Kvm; each reuses ASID 1."""
    machine = Machine(MachineConfig(dram_size=12 << 20, psp_state=psp_state))
    kvm = Kvm(machine)
    monkeypatch.setattr(vmm_module, "Kvm", lambda _machine: kvm)  # one /dev/kvm per host
    asids = []
    for i in range(3):
        vmm = Vmm(VmmConfig(image=b"\xf4", vm_type="sev-snp", mem_size=4 << 20,
                            psp_state=psp_state), machine=machine)
        try:
            result = vmm.run()
            asids.append(vmm.vm.asid)
        finally:
            vmm.close()
        assert (result.exit_reason, result.exit_code) == ("hlt", 0), (i, result.message)
    assert asids == [asids[0]] * 3
