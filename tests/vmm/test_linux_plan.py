"""KernelVmm loads hv.boot's kernel_plan, the plan the guest owner measures: the same writes,
and ACPI tables byte for byte those of the platform the kernel runs on."""

from __future__ import annotations

from hv.boot.linux import ACPI_GPA, KERNEL_DEFAULT_MEM, kernel_plan
from hv.vmm.clock import ManualClock
from hv.vmm.linux import KernelConfig, KernelVmm
from hv.vmm.linux_cli import KERNEL_DEFAULT_MEM as CLI_DEFAULT_MEM
from hv.vmm.pc import PcPlatform
from tests.boot.test_bzimage import MiB, synthetic


def test_the_plans_acpi_tables_are_the_platforms():
    """Scenario: the tables the owner measures are those PcPlatform describes its ports with."""
    plan = kernel_plan(bytes(synthetic()), None, "", 64 * MiB, encrypted=True)
    blob, rsdp = PcPlatform(ManualClock(), lambda b: None, lambda e: None).build_acpi(ACPI_GPA)
    assert dict(plan.writes)[ACPI_GPA] == blob
    assert int.from_bytes(dict(plan.writes)[plan.boot_params][0x70:0x78], "little") == rsdp


def test_the_kernel_vmm_loads_the_owners_plan():
    kernel, initrd = bytes(synthetic()), b"\x5a" * 3000
    vmm = KernelVmm(KernelConfig(kernel=kernel, initrd=initrd, append="quiet", mem_size=64 * MiB))
    plan = kernel_plan(kernel, initrd, "quiet", 64 * MiB, encrypted=False)
    assert vmm.plan.writes == plan.writes and vmm.plan.cmdline == vmm.config.cmdline == plan.cmdline


def test_the_owner_and_hv_run_default_to_the_same_kernel_memory():
    assert KERNEL_DEFAULT_MEM == CLI_DEFAULT_MEM == KernelConfig(kernel=b"").mem_size
