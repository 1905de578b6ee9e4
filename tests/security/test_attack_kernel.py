"""The attack lab against a Linux kernel, without booting one: the command line's refusals and
options, the judge's ground truth taken from the initrd's marker file, and A04's taken from the
core's registers at the last exit, shown on a "kernel" whose only code is its power-off. The
real boots are in the Linux tier (tests/linux_boot/test_attack_kernel.py)."""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

import hv.attacks
from hv.attacks import a01_dump, a04_registers, a05_replay, a07_severed
from hv.attacks.findings import Findings, Seen
from hv.attacks.kernel_lab import KernelFiles
from hv.attacks.outcome import Outcome
from hv.attacks.verdict import KernelTrial, judge_kernel, judge_kernel_registers
from hv.boot.linux import KERNEL_CBITPOS, PML4_GPA
from hv.cli import main
from hv.vmm.initramfs import InitramfsError
from tests.boot.test_bzimage import synthetic
from tests.hw.test_oscpu import assemble

pytestmark = pytest.mark.security

MARKER = b"hv-initramfs-secret " + hashlib.sha256(b"a test marker").hexdigest().encode() + b"\n"


def newc_gz(files: dict[str, bytes]) -> bytes:
    """A gzip-compressed newc archive of regular files, written from the format's description
    (buffer-format.rst), not with hv's reader or tools/linux.py's writer."""
    out = b""
    for ino, (name, data) in enumerate([*files.items(), ("TRAILER!!!", b"")], start=1):
        raw = name.encode() + b"\0"
        fields = (ino, 0o100644, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(raw), 0)
        head = b"070701" + b"".join(b"%08X" % v for v in fields)
        out += head + raw + b"\0" * (-(110 + len(raw)) % 4) + data + b"\0" * (-len(data) % 4)
    return gzip.compress(out)


@pytest.fixture
def files(tmp_path) -> tuple[Path, Path]:
    kernel, initrd = tmp_path / "vmlinuz", tmp_path / "initrd.cpio.gz"
    kernel.write_bytes(b"not a bzImage: nothing here boots")
    initrd.write_bytes(newc_gz({"init": b"#!/bin/sh\n", "etc/hv-secret": MARKER}))
    return kernel, initrd


@pytest.fixture
def fake_a01(monkeypatch):
    """A01's kernel run recording what it was asked for instead of booting."""
    asked: list[tuple[str, KernelFiles]] = []

    def run_kernel(mode, files):
        asked.append((mode, files))
        return Outcome("A01", mode, "failed", f"stand-in kernel run against {mode}")

    monkeypatch.setattr(a01_dump, "run_kernel", run_kernel)
    return asked


def _run(*args: str):
    return CliRunner().invoke(main, ["attack", "run", *args])


def test_the_options_reach_the_kernel_run(files, fake_a01):
    """Scenario: `hv attack run A01 --kernel K --initrd I --append A --sev-es` attacks that
    kernel, with those files and that command line, in that mode."""
    kernel, initrd = files
    r = _run("a1", "--kernel", str(kernel), "--initrd", str(initrd), "--append", "quiet", "--sev-es", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["mode"] == "sev-es"
    [(mode, got)] = fake_a01
    assert mode == "sev-es"
    assert got == KernelFiles(kernel.read_bytes(), initrd.read_bytes(), "quiet", "vmlinuz")
    assert _run("A01", "--kernel", str(kernel), "--initrd", str(initrd)).exit_code == 0
    assert fake_a01[1][0] == "plain" and fake_a01[1][1].append == ""


@pytest.mark.parametrize("args,words", [
    (["A01", "--initrd", "{initrd}"], "--initrd and --append go with --kernel"),
    (["A01", "--append", "quiet"], "--initrd and --append go with --kernel"),
    (["A01", "--kernel", "{kernel}"], "--kernel needs --initrd"),
    (["A09", "--kernel", "{kernel}", "--initrd", "{initrd}", "--sev"],
     "A09 does not take --kernel: against a kernel the lab runs A01, A02, A03, A04, A05, A07"),
    (["A11", "--kernel", "{kernel}", "--initrd", "{initrd}"], "A11 does not take --kernel"),
    (["A01", "--kernel", "{kernel}", "--initrd", "{initrd}", "--sev", "--sev-es"], "exclude each other"),
    (["A01", "--kernel", "{kernel}", "--initrd", "{missing}"], "does not exist"),
])
def test_what_cannot_be_judged_is_refused_before_anything_runs(files, fake_a01, tmp_path, args, words):
    kernel, initrd = files
    given = [a.format(kernel=kernel, initrd=initrd, missing=tmp_path / "none") for a in args]
    r = _run(*given)
    assert r.exit_code == 2, r.output
    assert words in " ".join(r.output.split())
    assert fake_a01 == []


@pytest.mark.parametrize("initrd_data,words", [
    (newc_gz({"init": b"#!/bin/sh\n"}), "the initrd holds no /etc/hv-secret"),
    (b"plain text, no archive", "not a newc cpio archive"),
], ids=["archive-without-marker", "not-an-archive"])
def test_an_initrd_without_the_marker_is_refused_before_the_kernel_runs(files, initrd_data, words):
    """Scenario: the lab judges by the initramfs's marker; without one a run could only ever
    "fail", which would read as a defence. The real A01 refuses it (status 2) before it boots
    anything (the kernel here is no bzImage at all)."""
    kernel, initrd = files
    initrd.write_bytes(initrd_data)
    r = _run("A01", "--kernel", str(kernel), "--initrd", str(initrd))
    assert r.exit_code == 2, r.output
    assert "--initrd" in r.output and words in " ".join(r.output.split())


def _kernel_files(files) -> KernelFiles:
    return KernelFiles.read(*files)


def test_the_judge_takes_the_marker_from_the_initrd(files):
    """Scenario: the judge's ground truth for a kernel is the initramfs's own file: a 16-byte
    window of it in what the hypervisor read wins, and its absence is a defence that held."""
    trials: list[KernelTrial] = []

    def experiment(dump: bytes):
        def run(trial: KernelTrial) -> Findings:
            trials.append(trial)
            return Findings("read a dump", seen=(Seen("the dump", dump),))
        return run

    kf = _kernel_files(files)
    won = judge_kernel("A01", "plain", kf, experiment(bytes(4096) + MARKER[30:46] + bytes(100)))
    assert won.outcome == "succeeded" and won.evidence.endswith("the secret is in the dump at GPA 0xfe2")
    held = judge_kernel("A01", "sev", kf, experiment(bytes(4096) + MARKER[30:45] + bytes(100)))
    assert held.outcome == "failed"
    assert "no 16-byte window of the 85-byte secret in the dump" in held.evidence
    assert [t.mode for t in trials] == ["plain", "sev"]
    other = KernelFiles(kf.kernel, newc_gz({"etc/hv-secret": b"another initramfs, another marker"}))
    assert judge_kernel("A01", "plain", other, experiment(MARKER)).outcome == "failed"
    with pytest.raises(InitramfsError):
        judge_kernel("A01", "plain", KernelFiles(kf.kernel, newc_gz({})), experiment(MARKER))


def test_only_the_judge_reads_the_marker_out_of_the_initrd():
    """Scenario: the kernel attacks get the initrd only to boot it; reading /etc/hv-secret out
    of it is the judge's (hv.attacks.verdict) alone, as the random secret is for the lab's guests."""
    names = ("initrd_file", "kernel_truth", "SECRET_PATH", "newc_files")
    readers = {f.name for f in Path(hv.attacks.__file__).parent.glob("*.py")
               if any(n in f.read_text() for n in names)}
    assert readers == {"verdict.py"}


@pytest.mark.parametrize("attack,flag", [(a04_registers, "--sev"), (a05_replay, "--sev-snp"),
                                         (a07_severed, "--sev-es")], ids=["A04", "A05", "A07"])
def test_the_kernel_attacks_past_the_dumps_take_a_kernel(files, monkeypatch, attack, flag):
    """Scenario: `hv attack run A05 --kernel K --initrd I --sev-snp` replays pages of that
    kernel in that mode (A04 reads its registers, A07 remaps its pages)."""
    asked: list[tuple[str, KernelFiles]] = []
    monkeypatch.setattr(attack, "run_kernel", lambda mode, kf: asked.append((mode, kf))
                        or Outcome(attack.ID, mode, "succeeded", "stand-in"))
    kernel, initrd = files
    r = _run(attack.ID, "--kernel", str(kernel), "--initrd", str(initrd), flag)
    assert r.exit_code == 0, r.output
    assert asked == [(flag[2:], KernelFiles(kernel.read_bytes(), initrd.read_bytes(), "", "vmlinuz"))]


# A "kernel" whose 64-bit entry writes SLP_TYP = 5 (S5) with SLP_EN into PM1a_CNT (port 0x604,
# hv.boot.acpi_tables.PmLayout; ACPI 6.3, 4.8.3.2.1): a boot whose one exit is its power-off.
POWEROFF = (("66ba0406", "mov dx, 0x604"), ("66b80034", "mov ax, 0x3400"), ("66ef", "out dx, ax"),
            ("f4", "hlt"))


def tiny_kernel() -> KernelFiles:
    image = synthetic()
    entry = (image[0x1F1] + 1) * 512 + 0x200  # startup_64: 0x200 into the protected-mode code
    code = assemble(0, *POWEROFF)
    image[entry:entry + len(code)] = code
    return KernelFiles(bytes(image), b"\0" * 64)


@pytest.mark.parametrize("mode", ["plain", "sev"])
def test_a04_reads_the_registers_of_a_kernel_at_its_power_off(mode, psp_state, monkeypatch):
    """Scenario: without SEV-ES the hypervisor's KVM_GET_REGS/SREGS at the power-off exit give the
    core's own RIP, RSP and CR3 (CR3: the page tables hv's loader built, with the C-bit under SEV)."""
    monkeypatch.setenv("HV_PSP_STATE", str(psp_state))
    out = a04_registers.run_kernel(mode, tiny_kernel())
    assert out.outcome == "succeeded", out.evidence
    cr3 = PML4_GPA | (1 << KERNEL_CBITPOS if mode == "sev" else 0)
    assert f"CR3 {cr3:#x}" in out.evidence and "at each of the kernel's 1 exits" in out.evidence
    assert out.evidence.endswith("the 192 recovered bits are the secret's "
                                 "(the judge read RIP, RSP and CR3 from the core itself at that exit)")


def test_the_register_judge_reads_the_core_not_the_claim():
    """Scenario: the judge's truth is the core's, so a claim of other registers fails, and an
    experiment that boots no kernel, or two, has no verdict."""
    kf = tiny_kernel()

    def claim(recovered: bytes, boots: int):
        def run(trial: KernelTrial) -> Findings:
            for _ in range(boots):
                trial.lab().run()
            return Findings("claimed", recovered=recovered, completed=True)
        return run

    wrong = judge_kernel_registers("A04", "plain", kf, claim(bytes(24), 1))
    assert wrong.outcome == "failed" and "the 192 recovered bits are not the secret's" in wrong.evidence
    for boots in (0, 2):
        out = judge_kernel_registers("A04", "plain", kf, claim(bytes(24), boots))
        assert out.outcome == "error" and f"booted {boots} kernels" in out.evidence
