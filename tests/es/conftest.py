"""Shared pieces of the SEV-ES tests: one PSP state file per test session (making a platform
identity takes seconds), and VMMs for tiny hand-made guests."""

from __future__ import annotations

import pytest

from hv.vmm import Vmm, VmmConfig


@pytest.fixture(scope="session")
def psp_state(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("psp") / "psp-state.json")


@pytest.fixture
def make_vmm(psp_state):
    """make_vmm(image, mode) -> a loaded Vmm (launch done) whose vCPU the test drives itself."""
    made = []

    def make(image: bytes, mode: str, **kw) -> Vmm:
        vmm = Vmm(VmmConfig(image=image, vm_type=mode, mem_size=kw.pop("mem_size", 16 << 20),
                            psp_state=psp_state, **kw))
        vmm.load()
        made.append(vmm)
        return vmm

    yield make
    for vmm in made:
        vmm.close()
