"""The attack lab against Debian's kernel (docs/linux.md): A01's dump finds the initramfs's
marker file in a plain guest and no 16-byte window of it under SEV. One boot per run."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

pytestmark = [pytest.mark.linux, pytest.mark.slow]
RUN_LIMIT = 900  # seconds; the lab's own boot limit (hv.attacks.kernel_lab.BOOT_LIMIT)


def _attack(hv_command, kernel_files, psp_state, *flags: str) -> tuple[int, dict]:
    kernel, initrd = kernel_files
    proc = subprocess.run([*hv_command, "attack", "run", "A01", "--kernel", str(kernel),
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
