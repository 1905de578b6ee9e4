"""The attack lab against Debian's kernel (docs/linux.md): A01's dump finds the initramfs's
marker file in a plain guest and no 16-byte window of it under SEV; A04 reads the kernel's RIP,
RSP and CR3 at its exits in a plain and an SEV guest, and under SEV-ES gets refused and reads
ciphertext; A05's replay and A07's remap reach the kernel's plaintext under SEV and are stopped
by the RMP under SEV-SNP. One boot per run."""

from __future__ import annotations

import json
import os
import re
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


def test_a05_rolls_a_page_of_an_sev_kernel_back(hv_command, kernel_files, psp_state):
    """Scenario: SEV has no integrity or freshness: the saved ciphertext of a page the init
    rewrote, written back, decrypts cleanly to what the page held before."""
    status, out = _attack(hv_command, kernel_files, psp_state, "--sev", attack="A05")
    assert status == 0 and out["outcome"] == "succeeded", out["evidence"]
    assert "wrote the saved ciphertext back over the highest, GPA 0x" in out["evidence"]
    assert "after the write-back the guest ran on the plaintext of the save" in out["evidence"]


def test_a05_is_refused_by_the_rmp_under_sev_snp(hv_command, kernel_files, psp_state):
    status, out = _attack(hv_command, kernel_files, psp_state, "--sev-snp", attack="A05")
    assert status == 0 and out["outcome"] == "failed", out["evidence"]
    assert "after the write-back the guest still held the newer plaintext" in out["evidence"]
    assert out["findings"]["defence"].startswith("RMP: host write to page 0x")
    assert "which is assigned to ASID" in out["findings"]["defence"]


def test_a07_shows_an_sev_kernel_another_pages_plaintext(hv_command, kernel_files, psp_state):
    """Scenario: SEVered: the tweak is the host address, so a guest page pointed at another
    page's host page reads that page's plaintext, decrypted by the guest's own key."""
    status, out = _attack(hv_command, kernel_files, psp_state, "--sev", attack="A07")
    assert status == 0 and out["outcome"] == "succeeded", out["evidence"]
    assert "(one the guest never wrote) at the host page of GPA 0x" in out["evidence"]
    assert "no nested page fault came of it" in out["evidence"]
    assert re.search(r"once the guest ran on, GPA 0x[0-9a-f]+ held GPA 0x[0-9a-f]+'s plaintext",
                     out["evidence"])


def test_a07_is_a_nested_page_fault_under_sev_snp(hv_command, kernel_files, psp_state):
    """Scenario: the RMP entry of the target's host page names the target's GPA: the remapped
    page's check is a nested page fault with the RMP bit, and the page stays the guest's own."""
    status, out = _attack(hv_command, kernel_files, psp_state, "--sev-snp", attack="A07")
    assert status == 0 and out["outcome"] == "failed", out["evidence"]
    assert "still held its own plaintext" in out["evidence"]
    assert re.fullmatch(r"a nested page fault on the guest's read of GPA 0x[0-9a-f]+, raised by the RMP",
                        out["findings"]["defence"])
