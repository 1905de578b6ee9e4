"""Debian's kernel under `hv run --kernel ... --dump-dram`: the initramfs's marker file
(/etc/hv-secret, tools/linux.py) is in a plain guest's memory as the hypervisor reads it, and in
no 16-byte window of an SEV or SEV-ES guest's, which boots to its init and powers off all the
same (docs/linux.md). One boot per mode, shared by that mode's checks."""

from __future__ import annotations

import json
import re
import subprocess

import pytest

from hv.attacks.evidence import find_windows
from hv.vmm.initramfs import POWEROFF_PARAM, SECRET_PATH, initrd_file

pytestmark = [pytest.mark.linux, pytest.mark.slow]
BOOT_LIMIT = 240  # seconds; a plain boot takes about 30 here
FEATURES = {"sev": "AMD SEV", "sev-es": "AMD SEV SEV-ES", "sev-snp": "AMD SEV SEV-ES SEV-SNP"}


@pytest.fixture(scope="module")
def marker(kernel_files) -> bytes:
    text = initrd_file(kernel_files[1].read_bytes(), SECRET_PATH)
    if text is None:
        pytest.fail(f"the initrd has no {SECRET_PATH}: run python tools/linux.py fetch again")
    return text


@pytest.fixture(scope="module")
def boot(hv_command, kernel_files, tmp_path_factory):
    """boot(mode) -> (status, JSON summary, the --dump-dram file's bytes), one run per mode."""
    runs: dict[str, tuple[int, dict, bytes]] = {}

    def run(mode: str) -> tuple[int, dict, bytes]:
        if mode not in runs:
            kernel, initrd = kernel_files
            dump = tmp_path_factory.mktemp(mode) / "dram.bin"
            flags = [] if mode == "plain" else [f"--{mode}"]
            proc = subprocess.run(
                [*hv_command, "run", "--kernel", str(kernel), "--initrd", str(initrd),
                 "--append", POWEROFF_PARAM, "--json", "--timeout", str(BOOT_LIMIT),
                 "--dump-dram", str(dump), *flags],
                stdin=subprocess.DEVNULL, capture_output=True, timeout=BOOT_LIMIT + 60)
            try:
                summary = json.loads(proc.stdout)
            except ValueError:
                pytest.fail(f"hv run --kernel {' '.join(flags)} printed no JSON (status "
                            f"{proc.returncode}): {proc.stderr.decode()[-600:]}")
            runs[mode] = (proc.returncode, summary, dump.read_bytes() if dump.exists() else b"")
        return runs[mode]

    return run


def test_a_plain_guests_dump_holds_the_initramfs_marker(boot, kernel_files, marker):
    """The kernel unpacks the initramfs into its page cache, so the plain file's text is in RAM.
    It comes from there and not from the initrd as loaded: the gzip stream holds no 16-byte
    window of it (deflate codes the text, it does not store it), which this test checks too."""
    status, summary, dump = boot("plain")
    assert status == 0 and summary["exit_reason"] == "poweroff", summary["message"]
    assert len(dump) == summary["launch"]["mem_size"]
    assert find_windows(kernel_files[1].read_bytes(), marker) == []
    assert marker in dump
    assert "Memory Encryption Features active" not in summary["serial"]


@pytest.mark.parametrize("mode", ["sev", "sev-es", "sev-snp"])
def test_an_encrypted_guest_boots_and_its_dump_hides_the_marker(boot, marker, mode):
    """Scenario: the same kernel and initramfs under --sev / --sev-es / --sev-snp find their mode, run the init and
    power off with status 0, and the hypervisor's dump holds nothing of the marker file."""
    status, summary, dump = boot(mode)
    serial = summary["serial"]
    assert status == 0 and summary["exit_reason"] == "poweroff", summary["message"] + serial[-600:]
    features = re.search(r"Memory Encryption Features active: ([^\r\n]*)", serial)
    assert features is not None and features.group(1).strip() == FEATURES[mode], serial[-2000:]
    assert "hv-init: user space is up" in serial and "hv-init: powering off" in serial
    assert len(dump) == summary["launch"]["mem_size"]
    assert find_windows(dump, marker) == []


# What the kernel sends the hypervisor under SEV-ES (docs/linux.md, "SEV and SEV-ES"), by the
# keys of `launch.ghcb_events`: GHCB MSR protocol requests by GHCBInfo, GHCB events by exit code.
GHCB_EVENTS = {
    "msr:0x002": "SEV_INFO request (protocol negotiation)",
    "msr:0x004": "CPUID request (#VC before the GHCB is set up)",
    "0x37": "DR7 write",
    "0x72": "CPUID",
    "0x7b": "IOIO",
    "0x7c": "MSR",
    "0x89": "WBINVD",
    "0x80000005": "AP jump table",
}
VC_EVENTS = ("0x37", "0x72", "0x7b", "0x7c", "0x89")  # the GHCB events a #VC handler sends


def test_an_sev_es_boot_sends_each_documented_ghcb_event_and_no_other(boot):
    """Scenario: the SEV-ES boot above talks to the hypervisor only through the GHCB MSR protocol
    and GHCB events, each of the documented kinds at least once (unit tests of each answer:
    tests/kvm/test_sev_es.py). Every VMGEXIT is one counted request; every #VC is one GHCB
    event, except that the decompressor's CPUIDs (no GHCB yet) ask for EAX, EBX, ECX and EDX
    through four MSR-protocol requests; SEV_INFO and the AP jump table are asked without a #VC."""
    status, summary, _dump = boot("sev-es")
    assert status == 0, summary["message"]
    launch = summary["launch"]
    events = launch["ghcb_events"]
    assert set(events) == set(GHCB_EVENTS), events
    assert all(n > 0 for n in events.values()), events
    assert launch["vmgexits"] == sum(events.values())
    assert events["msr:0x004"] % 4 == 0
    assert launch["vc"] == sum(events[k] for k in VC_EVENTS) + events["msr:0x004"] // 4


# What the kernel sends the hypervisor under SEV-SNP besides the SEV-ES events: GHCB GPA
# registration, hypervisor features and page-state changes (through the MSR protocol early, the
# GHCB's Page State Change event later); no AP jump table (SNP starts APs otherwise).
SNP_EVENTS = {
    **{k: v for k, v in GHCB_EVENTS.items() if k != "0x80000005"},
    "msr:0x012": "GHCB GPA registration",
    "msr:0x014": "page state change (MSR protocol)",
    "msr:0x080": "hypervisor features (SEV-SNP bit)",
    "0x80000010": "page state change (GHCB)",
}


def test_an_sev_snp_boot_validates_all_memory_and_sends_each_documented_event(boot):
    """Scenario: the SEV-SNP boot above: the stub validated every page of guest memory before the
    kernel ran, so at the end every page is either the guest's and validated or one it turned
    over to the hypervisor with a page-state change (its GHCBs, the bounce buffers' pages); the
    kernel spoke through the documented requests only."""
    status, summary, _dump = boot("sev-snp")
    assert status == 0, summary["message"]
    launch = summary["launch"]
    pages = launch["mem_size"] // 4096
    rmp = launch["rmp"]
    assert rmp["assigned"] == rmp["validated"] and rmp["assigned"] + rmp["hypervisor"] == pages
    # the shared pages: SWIOTLB's 64 MiB bounce buffers, the GHCBs, ... and no more than that
    assert 64 << 8 <= rmp["hypervisor"] < (64 << 8) + 1024, rmp
    events = launch["ghcb_events"]
    assert set(events) == set(SNP_EVENTS), events
    assert launch["vmgexits"] == sum(events.values())
