"""`hv owner measure --policy <ES>` predicts, from the image file alone, the launch digest the
PSP measured in a real `--sev-es` launch (image, then the initial VMSA page)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

from click.testing import CliRunner

from hv.kvm.sev import SevDevice
from hv.owner.cli import owner
from hv.vmm import Vmm, VmmConfig

GUESTS = Path(__file__).resolve().parents[2] / "guests"


def test_owner_predicts_the_es_measurement(psp_state, tmp_path):
    """Scenario: the owner makes a session for the platform, the VMM launches sevcheck under
    SEV-ES with it, and `hv owner verify --image` accepts the MEASURE the PSP returned."""
    image = GUESTS / "sevcheck.img"
    vmm = Vmm(VmmConfig(image=image.read_bytes(), vm_type="sev-es", psp_state=psp_state))
    try:
        dev = SevDevice(vmm.kvm)
        dev.ensure_init()
        pdh, _chain = dev.pdh_cert_export()
        (tmp_path / "pdh.cert").write_bytes(pdh)
        runner = CliRunner()
        out = tmp_path / "session"
        assert runner.invoke(owner, ["session", str(tmp_path / "pdh.cert"), "--policy", "0x5", "-o", str(out)]).exit_code == 0
        vmm.config.session_dir = str(out)
        vmm.config.policy = 0x1  # the VMM adds the ES bit itself
        vmm.load()
        launch = vmm.launch_info
    finally:
        vmm.close()
    assert launch["policy"] == 0x5
    measured = runner.invoke(owner, ["measure", str(image), "--policy", "0x5", "--json"])
    assert json.loads(measured.stdout)["digest"] == launch["digest"]
    verify = runner.invoke(owner, [
        "verify", "--measurement", launch["measurement"], "--mnonce", launch["mnonce"],
        "--tk", str(out / "tmp_tk.bin"), "--image", str(image), "--policy", "0x5",
        "--api-major", str(launch["api_major"]), "--api-minor", str(launch["api_minor"]),
        "--build", str(launch["build"])])
    assert verify.exit_code == 0, verify.output
    # Without the VMSA page (the plain SEV digest) the same measurement does not verify.
    plain = runner.invoke(owner, [
        "verify", "--measurement", launch["measurement"], "--mnonce", launch["mnonce"],
        "--tk", str(out / "tmp_tk.bin"), "--image", str(image), "--policy", "0x1",
        "--api-major", str(launch["api_major"]), "--api-minor", str(launch["api_minor"]),
        "--build", str(launch["build"])])
    assert plain.exit_code == 1


def test_the_initial_vmsa_holds_the_abi_entry_state():
    """Scenario (known answers read at AMD's save-area offsets, not through hv.boot's table)."""
    from hv import boot

    image = (GUESTS / "hello.img").read_bytes()
    page = boot.initial_vmsa(image, 64 << 20)
    q = lambda off: struct.unpack_from("<Q", page, off)[0]  # noqa: E731
    entry = struct.unpack_from("<Q", image, 0x18)[0]  # ELF e_entry
    assert (q(0x178), q(0x1D8), q(0x330), q(0x150)) == (entry, 0x10000, 0x8000, 0x1000)  # RIP RSP RSI CR3
    # EFER: LME, LMA, NXE and SVME (bit 12), which KVM sets in every VMSA it launches.
    assert (q(0x158), q(0x148), q(0xD0), q(0x170)) == (0x80010033, 0x6A0, 0x1D00, 0x2)  # CR0 CR4 EFER RFLAGS
    assert q(0x1F8) == 0 and q(0x3B0) == 0 and q(0x3E8) == 1                          # RAX SEV_FEATURES XCR0
    assert struct.unpack_from("<HHIQ", page, 0x080)[2] == 0                             # IDTR limit 0
    assert len(page) == 4096 and page == boot.initial_vmsa(image, 64 << 20)
