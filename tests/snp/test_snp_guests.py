"""Every standalone sample guest boots under `hv run --sev-snp` and prints what it prints under
--sev-es (sevcheck reports the mode it sees); the launch digest is the owner's prediction; the
RMP ends the run as the design says (launched and used pages assigned, the shared ones not)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from hv import boot
from hv.cli import main as hv_main
from hv.hw.rmp import RmpEntry
from hv.vmm.vmm import LaunchError, Vmm, VmmConfig

GUESTS = Path(__file__).resolve().parents[2] / "guests"
STANDALONE = ["hello", "sevcheck", "secret", "compute"]  # memstress: its own test below


@pytest.fixture
def hv_run(psp_state):
    runner = CliRunner(env={"HV_PSP_STATE": psp_state})

    def run(*args: str):
        return runner.invoke(hv_main, list(args), catch_exceptions=False)

    return run


@pytest.mark.slow
@pytest.mark.parametrize("image", STANDALONE)
def test_serial_output_is_the_same_under_sev_snp(hv_run, image):
    """Scenario: the guest library validates memory and shares its GHCB; the guest notices
    nothing else of SNP."""
    img = str(GUESTS / f"{image}.img")
    es = hv_run("run", img, "--sev-es", "-q", "--json")
    snp = hv_run("run", img, "--sev-snp", "-q", "--json")
    assert es.exit_code == 0 and snp.exit_code == 0, (es.output, snp.output)
    es_out, snp_out = json.loads(es.stdout), json.loads(snp.stdout)
    if image == "sevcheck":
        assert snp_out["serial"] == es_out["serial"].replace("mode: sev-es\n", "mode: sev-snp\n").replace(
            "sev_status: 0x3\n", "sev_status: 0x7\n")
        assert "mode: sev-snp" in snp_out["serial"].splitlines()
    else:
        assert snp_out["serial"] == es_out["serial"]
    assert snp_out["launch"]["mode"] == "sev-snp"


def _memstress_checksum(passes: int = 4, working_set: int = 16 << 20) -> int:
    """The checksum guests/memstress.c documents, vectorised (independent of the guest)."""
    k = np.arange(working_set // 8, dtype=np.uint64)
    words = np.zeros_like(k)
    mul, inc = np.uint64(0x5851F42D4C957F2D), np.uint64(0x14057B7EF767814F)
    for p in range(passes):
        words = words * mul + ((k << np.uint64(8)) | np.uint64(p)) + inc
    mixed = words ^ (words >> np.uint64(31))
    return int(np.sum(mixed * (np.uint64(2) * k + np.uint64(1)), dtype=np.uint64))


@pytest.mark.slow
def test_memstress_keeps_its_memory_under_sev_snp(hv_run):
    """Scenario: 16 MiB of validated private memory survive 16384 exits (the SEV-ES run of the
    same guest prints the same line: tests/es)."""
    r = hv_run("run", str(GUESTS / "memstress.img"), "--sev-snp", "--mem", "64M")
    assert r.exit_code == 0, r.output
    assert f"memstress: {_memstress_checksum():#018x}" in r.stdout.splitlines()


def test_firmware_digest_is_the_owners_prediction(psp_state, hv_run):
    """Scenario: the owner predicts the SNP launch digest from the image alone, and the PSP
    computed exactly that (read from the firmware's guest context: no attestation yet)."""
    image = (GUESTS / "hello.img").read_bytes()
    vmm = Vmm(VmmConfig(image=image, vm_type="sev-snp", psp_state=psp_state))
    try:
        vmm.load()
        fw_ld = vmm.machine.psp_firmware._ctx.snp_guests[vmm.sev.gctx].ld
        cli = hv_run("owner", "measure", "--snp", str(GUESTS / "hello.img"), "--cbitpos",
                     str(vmm.vm.cbitpos))
        assert cli.exit_code == 0, cli.output
        assert fw_ld.hex() == cli.stdout.strip() == vmm.launch_info["digest"]
        assert fw_ld == boot.snp_launch_digest(image, 64 << 20, vmm.vm.cbitpos)
        # Another image, another digest.
        other = boot.snp_launch_digest((GUESTS / "compute.img").read_bytes(), 64 << 20, vmm.vm.cbitpos)
        assert other != fw_ld
    finally:
        vmm.close()


def test_rmp_after_a_run_and_after_teardown(psp_state):
    """Scenario: after hello ran, its GHCB page is shared (hypervisor-owned), every other page
    it validated is Guest-valid, the boot information page was never assigned; teardown gives
    all of it back to the host."""
    vmm = Vmm(VmmConfig(image=(GUESTS / "hello.img").read_bytes(), vm_type="sev-snp",
                        psp_state=psp_state))
    result = vmm.run()
    assert result.exit_code == 0, result.message
    m, vm = vmm.machine, vmm.vm
    assert m.rmpread(vm.gpa_to_spa(boot.BOOT_INFO_GPA)) == RmpEntry()
    stack = m.rmpread(vm.gpa_to_spa(boot.BOOT_STACK_TOP - 0x1000))
    assert stack == RmpEntry(assigned=True, asid=vm.asid, gpa=boot.BOOT_STACK_TOP - 0x1000,
                             validated=True)
    shared = [gpa for gpa in range(0x1000, 2 << 20, 0x1000)
              if not m.rmpread(vm.gpa_to_spa(gpa)).assigned]
    assert boot.BOOT_INFO_GPA in shared and len(shared) == 2  # the boot info page and the GHCB
    assert m.rmpread(vmm.vcpu.vmsa_spa).vmsa
    spas = [vm.gpa_to_spa(g) for g in (0x1000, 0x100000, shared[1])] + [vmm.vcpu.vmsa_spa]
    vmm.close()
    assert all(m.rmpread(spa) == RmpEntry() for spa in spas)


def test_snp_injects_no_launch_secret(psp_state):
    """Scenario: SNP has no LAUNCH_SECRET. A secret is offered for release after attestation
    (tests/snp/test_secret_release.py), never injected; a launch session is refused."""
    vmm = Vmm(VmmConfig(image=(GUESTS / "secret.img").read_bytes(), vm_type="sev-snp",
                        secret=b"x" * 16, psp_state=psp_state))
    try:
        vmm.load()
        info = vmm.vm.read_gpa(boot.BOOT_INFO_GPA, 0x20)
        assert info[0x18:0x20] == bytes.fromhex("0000000001000000")  # secret_len 0, flags bit 0
        assert vmm.launch_info["secret_injected"] is False
        assert vmm.launch_info["secret_release"]["offered"] is True
    finally:
        vmm.close()
    with pytest.raises(LaunchError, match="session"):
        Vmm(VmmConfig(image=(GUESTS / "secret.img").read_bytes(), vm_type="sev-snp",
                      session_dir=".", psp_state=psp_state))


def test_snp_policy_is_checked(hv_run):
    """Scenario: a legacy SEV policy (bit 17 clear) is refused by SNP_LAUNCH_START."""
    r = hv_run("run", str(GUESTS / "hello.img"), "--sev-snp", "--policy", "0x1")
    assert r.exit_code == 3 and "POLICY_FAILURE" in r.output
