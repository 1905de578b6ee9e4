"""The hypervisor's host-buffer ring (PSP command buffers, certificates) never hands out SPA 0,
which the PSP reads as "no buffer": a host launches guest after guest for as long as it runs."""

from __future__ import annotations

import pytest

import hv.vmm.vmm as vmm_module
from hv.hw.machine import Machine, MachineConfig
from hv.kvm import Kvm
from hv.kvm.kvm import HOST_RESERVED
from hv.vmm import Vmm, VmmConfig


def test_the_ring_wraps_past_spa_zero():
    """Scenario: more than the reserved area's worth of buffers, of awkward sizes."""
    kvm = Kvm(Machine(MachineConfig(dram_size=4 << 20)))
    sizes = [2084, 6252, 48, 16, 4096, 1]
    wrapped = 0
    last = -1
    for i in range(2000):
        size = sizes[i % len(sizes)]
        spa = kvm.alloc_host_buffer(size)
        assert spa != 0 and spa % 16 == 0
        assert spa + size <= HOST_RESERVED
        wrapped += spa < last
        last = spa
    assert wrapped >= 2


@pytest.mark.slow
def test_a_host_launches_a_hundred_sev_es_guests_in_a_row(psp_state, monkeypatch):
    """Scenario: one machine and one Kvm run SEV-ES guests one after another (about 5 s). The
    94th launch used to put the guest owner's certificate at SPA 0, where LAUNCH_START read "no
    session", and the owner refused the measurement."""
    machine = Machine(MachineConfig(dram_size=12 << 20, psp_state=psp_state))
    kvm = Kvm(machine)
    monkeypatch.setattr(vmm_module, "Kvm", lambda _machine: kvm)  # one /dev/kvm per host
    for i in range(100):
        vmm = Vmm(VmmConfig(image=b"\xf4", vm_type="sev-es", mem_size=4 << 20,
                            psp_state=psp_state, secret=b"s"), machine=machine)
        try:
            result = vmm.run()
        finally:
            vmm.close()
        assert (result.exit_reason, result.exit_code) == ("hlt", 0), (i, result.message)
        assert vmm.launch_info["secret_injected"], i
