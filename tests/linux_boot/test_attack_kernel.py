"""The attack lab against Debian's kernel (docs/linux.md): A01's dump finds the initramfs's
marker file in a plain guest and no 16-byte window of it under SEV; A04 reads the kernel's RIP,
RSP and CR3 at its exits in a plain and an SEV guest, and under SEV-ES gets refused and reads
ciphertext. One boot per run."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

pytestmark = [pytest.mark.linux, pytest.mark.slow]
RUN_LIMIT = 900  # seconds; the lab's own boot limit (hv.attacks.kernel_lab.BOOT_LIMIT)


def _attack(hv_command, kernel_files, psp_state, *flags: str, attack: str = "A01") -> tuple[int, dict]:
    kernel, initrd = kernel_files
    proc = subprocess.run([*hv_command, "attack", "run", attack, "--kernel", str(kernel),
                           "--initrd", str(initrd), "--json", *flags],
                          env=dict(os.environ, HV_PSP_STATE=psp_state), stdin=subprocess.DEVNULL,
                          capture_output=True, timeout=RUN_LIMIT + 60)
    return proc.returncode, json.loads(proc.stdout)


def test_a01_finds_the_initramfs_marker_in_a_plain_kernel(hv_command, kernel_files, psp_state):
    status, out = _attack(hv_command, kernel_files, psp_state)
    assert status == 0 and out["outcome"] == "succeeded", out["evidence"]
    assert out["mode"] == "plain" and "at its power-off exit" in out["evidence"]
    assert "the secret is in the dump at GPA" in out["evidence"]


def test_a01_finds_nothing_of_the_marker_under_sev(hv_command, kernel_files, psp_state):
    status, out = _attack(hv_command, kernel_files, psp_state, "--sev")
    assert status == 0 and out["outcome"] == "failed", out["evidence"]
    assert "no 16-byte window of the 85-byte secret in the dump" in out["evidence"]


@pytest.mark.parametrize("flags", [(), ("--sev",)], ids=["plain", "sev"])
def test_a04_reads_the_kernels_registers_at_its_exits(hv_command, kernel_files, psp_state, flags):
    """Scenario: without SEV-ES the registers at an exit are the hypervisor's to read (the VMCB's
    save area, the registers left live): what it read at the power-off are the core's own."""
    status, out = _attack(hv_command, kernel_files, psp_state, *flags, attack="A04")
    assert status == 0 and out["outcome"] == "succeeded", out["evidence"]
    assert "the 192 recovered bits are the secret's" in out["evidence"]
    assert "the judge read RIP, RSP and CR3 from the core itself" in out["evidence"]
    assert "at the last (its power-off): RIP 0xffff" in out["evidence"]  # kernel text


def test_a04_gets_only_ciphertext_under_sev_es(hv_command, kernel_files, psp_state):
    status, out = _attack(hv_command, kernel_files, psp_state, "--sev-es", attack="A04")
    assert status == 0 and out["outcome"] == "failed", out["evidence"]
    assert "KVM_GET_REGS: vCPU 0's state is protected (SEV-ES)" in out["evidence"]
    assert "the 192 recovered bits are not the secret's" in out["evidence"]
    assert out["findings"]["defence"] == "SEV-ES: the registers are saved in the encrypted VMSA"
