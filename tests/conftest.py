"""Shared fixtures. The PSP's platform identity (two RSA-4096 keys) is made once per test session
in a state file, as the PSP's non-volatile storage would keep it across boots."""

import pytest


@pytest.fixture(scope="session")
def psp_state(tmp_path_factory):
    from hv.hw.machine import Machine, MachineConfig

    path = tmp_path_factory.mktemp("psp") / "psp-state.json"
    Machine(MachineConfig(dram_size=4 << 20, psp_state=str(path))).psp.firmware  # noqa: B018
    return str(path)
