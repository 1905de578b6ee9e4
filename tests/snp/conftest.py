import os
import sys

import pytest

from hv.hw.machine import Machine, MachineConfig
from hv.kvm import Kvm
from hv.kvm.sev import SevDevice
from hv.kvm.sev_snp import snp_init

here = os.path.dirname(__file__)
sys.path.insert(0, here)
sys.path.insert(0, os.path.join(os.path.dirname(here), "hw"))


def _new_snp_vm(psp_state):
    """(machine, vm, dev): a machine whose PSP keeps its state in `psp_state`, SNP_INIT and INIT
    with SEV-ES done, a sev-snp VM with 1 MiB of memory at GPA 0, nothing launched yet."""
    machine = Machine(MachineConfig(dram_size=32 << 20, psp_state=psp_state))
    kvm = Kvm(machine)
    dev = SevDevice(kvm)
    snp_init(dev)
    dev.ensure_init(es=True)
    vm = kvm.create_vm("sev-snp")
    vm.set_user_memory_region(0, 0, 1 << 20)
    return machine, vm, dev


@pytest.fixture
def new_snp_vm():
    """The function making (machine, vm, dev) for a PSP state file (see _new_snp_vm)."""
    return _new_snp_vm


@pytest.fixture
def launch(psp_state):
    """(machine, vm, dev) on the session's PSP state (see _new_snp_vm)."""
    return _new_snp_vm(psp_state)
