"""`hv owner measure --snp --kernel` and `verify-report --kernel`: the SEV-SNP launch digest of a
Linux kernel, its initrd and its whole command line, from the files alone, checked against the
PAGE_INFO chain rebuilt with hashlib (tests/boot/test_kernel_snp.py) and against the measurement
the PSP itself puts into a VCEK-signed report after launching the kernel's pages."""

from __future__ import annotations

import json
import os
import shutil

import pytest
from click.testing import CliRunner

from hv.boot import kernel_launch_digest, kernel_plan, kernel_snp_launch_pages
from hv.owner.cli import owner
from sevwire import SNP_POLICY_DEFAULT
from tests.boot.test_bzimage import MiB, synthetic
# The PAGE_INFO chain rebuilt with hashlib from the SNP firmware ABI's layout, not from hv.boot.
from tests.boot.test_kernel_snp import _page_info_digest as _page_info_chain
from tests.owner.test_owner_release import Platform

KERNEL = bytes(synthetic())
INITRD = b"only the initramfs holds this\n" * 100
PLATFORM = "console=ttyS0 tsc_early_khz=2000000 panic=-1"
SECRETS, CPUID, VMSA = 5, 6, 2  # PAGE_INFO page types


def run(*args):
    return CliRunner().invoke(owner, [str(a) for a in args])


def _pages(append: str, initrd: bytes | None = INITRD, mem: int = 256 * MiB):
    return kernel_snp_launch_pages(kernel_plan(KERNEL, initrd, append, mem, encrypted=True, snp=True))


@pytest.fixture
def files(tmp_path):
    (tmp_path / "bzImage").write_bytes(KERNEL)
    (tmp_path / "initrd").write_bytes(INITRD)
    return tmp_path / "bzImage", tmp_path / "initrd"


def _one_line(result, status: int, text: str) -> None:
    assert result.exit_code == status, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and text in lines[0], result.stderr


# ---- measure --snp --kernel -------------------------------------------------------------------


def test_measure_snp_prints_the_page_info_chain_of_the_kernels_launch(files):
    """Scenario: the digest is the SHA-384 PAGE_INFO chain over the kernel's SNP pages in 256M,
    the CPUID page counted by type and GPA only; the policy does not enter it."""
    kernel, initrd = files
    args = ("measure", "--snp", "--kernel", kernel, "--initrd", initrd, "--append", "quiet")
    result = run(*args)
    assert result.exit_code == 0, result.output
    digest = result.stdout.strip()
    assert len(digest) == 96 and digest == _page_info_chain(_pages("quiet")).hex()
    assert run(*args, "--policy", "0x30000").stdout.strip() == digest
    assert run(*args, "--policy", "0x5").stdout.strip() == digest
    sev = kernel_launch_digest(kernel_plan(KERNEL, INITRD, "quiet", 256 * MiB, encrypted=True))
    assert run(*args[:1], *args[2:]).stdout.strip() == sev.hex()  # without --snp: the SEV digest


def test_snp_json_names_the_inputs_the_command_line_and_the_pages(files):
    kernel, initrd = files
    result = run("measure", "--snp", "--kernel", kernel, "--initrd", initrd, "--append", "quiet",
                 "--mem", "64M", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    pages = _pages("quiet", mem=64 * MiB)
    assert data["digest"] == _page_info_chain(pages).hex()
    assert data["kernel"] == str(kernel) and data["initrd"] == str(initrd)
    assert data["cmdline"] == f"{PLATFORM} quiet"
    assert data["mem_size"] == 64 * MiB and data["cbitpos"] == 39 and data["snp"] is True
    assert "policy" not in data
    assert data["pages"] == [{"gpa": gpa, "type": kind} for gpa, _c, kind in pages]
    assert [p["type"] for p in data["pages"]][-3:] == [SECRETS, CPUID, VMSA]
    alone = json.loads(run("measure", "--snp", "--kernel", kernel, "--json").stdout)
    assert alone["initrd"] is None and alone["cmdline"] == PLATFORM and alone["mem_size"] == 256 * MiB
    assert alone["digest"] == _page_info_chain(_pages("", initrd=None)).hex()


def test_the_snp_digest_follows_the_kernel_the_initrd_the_append_string_and_the_memory(files, tmp_path):
    kernel, initrd = files
    args = ("measure", "--snp", "--kernel", kernel, "--initrd", initrd, "--append", "quiet")
    base = run(*args).stdout
    assert run(*args[:-1], "loud").stdout != base
    assert run(*args[:-4], "--append", "quiet").stdout != base  # no initrd
    assert run(*args, "--mem", "128M").stdout != base
    other = tmp_path / "other"
    other.write_bytes(INITRD.replace(b"this", b"that"))
    assert run(*args[:-3], other, "--append", "quiet").stdout != base
    other.write_bytes(KERNEL[:-1] + b"\x90")
    assert run("measure", "--snp", "--kernel", other, "--initrd", initrd, "--append", "quiet").stdout != base
    assert run(*args, "--mem", "256M", "--cbitpos", "39").stdout == base


def test_snp_kernel_misuse_is_one_line_and_status_2(files, tmp_path):
    kernel, initrd = files
    elf = tmp_path / "vmlinux"
    elf.write_bytes(b"\x7fELF" + bytes(4096))
    _one_line(run("measure", "--snp", "--kernel", kernel, "--cbitpos", "47"), 2, "C-bit at 39, not 47")
    _one_line(run("measure", "--snp", "--kernel", elf), 2, f"kernel {elf}: not a bzImage")
    _one_line(run("measure", "--snp", "--kernel", kernel, "--mem", "1M"), 2, "too small for the kernel")
    _one_line(run("measure", "--snp", kernel, "--kernel", kernel), 2, "give IMAGE or --kernel, not both")
    _one_line(run("measure", "--snp", kernel, "--initrd", initrd), 2, "--initrd and --append go with --kernel")
    result = run("measure", "--snp", "--kernel", elf, "--json")
    assert result.exit_code == 2 and json.loads(result.stdout)["ok"] is False


# ---- verify-report --kernel ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def launched(psp_state, tmp_path_factory):
    """The PSP launches the kernel's SNP pages (with `quiet`, in 256M) and signs its reports."""
    d = tmp_path_factory.mktemp("snp-kernel")
    state = d / "psp-state.json"
    shutil.copy(psp_state, state)
    return Platform(str(state), d / "certs", pages=_pages("quiet"))


def _verify_report(tmp_path, report: bytes, chain, *extra):
    path = tmp_path / "report.bin"
    path.write_bytes(report)
    return run("verify-report", path, "--chain", chain, *extra)


def test_verify_report_accepts_the_kernel_launch_it_predicts(launched, files, tmp_path):
    """Scenario: the report the PSP signs for the kernel launched with `quiet` carries the
    measurement `measure --snp --kernel` predicts, and verify-report --kernel passes it."""
    kernel, initrd = files
    nonce = os.urandom(64)
    report = launched.report(nonce)
    result = _verify_report(tmp_path, report, launched.chain, "--kernel", kernel, "--initrd", initrd,
                            "--append", "quiet", "--policy", hex(SNP_POLICY_DEFAULT),
                            "--report-data", nonce.hex(), "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["measurement"] == _page_info_chain(_pages("quiet")).hex()
    assert {"VCEK -> report", "measurement", "policy", "report_data"} <= set(data["checks"])


def test_verify_report_refuses_another_command_line_initrd_or_memory(launched, files, tmp_path):
    """Scenario: the same signed report against the kernel with `quiet init=/bin/sh`, without
    its initrd or in 128M: each is exit 1 with one line naming the measurement."""
    kernel, initrd = files
    nonce = os.urandom(64)
    report = launched.report(nonce)
    args = ("--kernel", kernel, "--report-data", nonce.hex())
    for extra in (("--initrd", initrd, "--append", "quiet init=/bin/sh"), ("--append", "quiet"),
                  ("--initrd", initrd, "--append", "quiet", "--mem", "128M")):
        result = _verify_report(tmp_path, report, launched.chain, *args, *extra)
        _one_line(result, 1, "report REJECTED at measurement")


def test_a_flipped_byte_is_refused_by_the_signature(launched, files, tmp_path):
    kernel, initrd = files
    report = bytearray(launched.report(bytes(64)))
    report[0x90] ^= 1  # the first measurement byte
    result = _verify_report(tmp_path, bytes(report), launched.chain, "--kernel", kernel, "--initrd", initrd,
                            "--append", "quiet")
    _one_line(result, 1, "report REJECTED at VCEK -> report")


def test_verify_report_takes_one_expected_measurement(launched, files, tmp_path):
    kernel, initrd = files
    report = launched.report(bytes(64))
    hexmeas = "00" * 48
    for extra in (("--kernel", kernel, "--image", kernel), ("--kernel", kernel, "--measurement", hexmeas),
                  ("--image", kernel, "--measurement", hexmeas)):
        _one_line(_verify_report(tmp_path, report, launched.chain, *extra), 2,
                  "give at most one of --image, --kernel and --measurement")
    for extra in (("--measurement", hexmeas, "--initrd", initrd), ("--append", "quiet")):
        _one_line(_verify_report(tmp_path, report, launched.chain, *extra), 2,
                  "--initrd and --append go with --kernel")
    _one_line(_verify_report(tmp_path, report, launched.chain, "--kernel", kernel, "--cbitpos", "47"), 2,
              "C-bit at 39, not 47")
