"""The SEV-SNP launch of a Linux kernel: the CC blob, the validation stub, the pages measured and
the digest. Expected bytes and digests are rebuilt here from the boot protocol, the CC blob's
C declaration and the PAGE_INFO layout of the SNP firmware ABI, not taken from hv.boot."""

from __future__ import annotations

import hashlib
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path

import pytest

from hv.boot import kernel_plan, kernel_snp_launch_digest, kernel_snp_launch_pages
from tests.boot.test_bzimage import MiB, synthetic

REPO = Path(__file__).resolve().parents[2]
KERNEL = bytes(synthetic(kernel_bytes=0x3456))
INITRD = bytes(range(256)) * 40
MEM = 64 * MiB
NORMAL, VMSA, SECRETS, CPUID = 1, 2, 5, 6


def _plan(append: str = "quiet", initrd: bytes = INITRD, mem: int = MEM):
    return kernel_plan(KERNEL, initrd, append, mem, encrypted=True, snp=True)


def _page_info_digest(pages) -> bytes:
    """SHA-384 chain over PAGE_INFO (SNP ABI 56860, "PAGE_INFO Structure"): the current digest,
    the page's SHA-384 for NORMAL and VMSA pages (zeros for the others), length 0x70, the type,
    IMI 0, the VMPL permissions 0, the GPA."""
    ld = bytes(48)
    for gpa, contents, kind in pages:
        measured = hashlib.sha384(contents).digest() if kind in (NORMAL, VMSA) else bytes(48)
        info = ld + measured + struct.pack("<HBB4xQ", 0x70, kind, 0, gpa)
        assert len(info) == 0x70
        ld = hashlib.sha384(info).digest()
    return ld


def test_boot_params_point_at_a_cc_blob_naming_the_secrets_and_cpuid_pages():
    plan = _plan()
    writes = dict(plan.writes)
    bp = writes[0x9000]
    (blob_gpa,) = struct.unpack_from("<I", bp, 0x13C)  # boot_params.cc_blob_address
    magic, version, _r, secrets, secrets_len, _r1, cpuid, cpuid_len, _r2 = struct.unpack(
        "<IHHQIIQII", writes[blob_gpa][:40])
    assert magic == 0x45444D41 and version == 1  # "AMDE"
    assert (secrets_len, cpuid_len) == (4096, 4096)
    # and hdr.setup_data (0x250) is a one-node list: a SETUP_CC_BLOB (7) node naming the blob,
    # where Linux 6.1's decompressor looks for it
    (node,) = struct.unpack_from("<Q", bp, 0x250)
    page = writes[node & ~0xFFF]
    nxt, kind, length, address = struct.unpack_from("<QIII", page, node & 0xFFF)
    assert (nxt, kind, length, address) == (0, 7, 4, blob_gpa)
    kinds = {gpa: kind for gpa, _c, kind in kernel_snp_launch_pages(plan)}
    assert kinds[secrets] == SECRETS and kinds[cpuid] == CPUID
    # all three in the e820 map's reserved hole below 1 MiB, which the kernel leaves alone
    for gpa in (blob_gpa, secrets, cpuid):
        assert any(kind == 2 and a <= gpa and gpa + 4096 <= a + n for a, n, kind in plan.e820)


def test_a_plan_without_snp_has_no_cc_blob():
    plan = kernel_plan(KERNEL, INITRD, "quiet", MEM, encrypted=True)
    assert struct.unpack_from("<I", dict(plan.writes)[0x9000], 0x13C) == (0,)
    assert struct.unpack_from("<Q", dict(plan.writes)[0x9000], 0x250) == (0,)
    assert plan.start == plan.entry
    with pytest.raises(ValueError):
        kernel_snp_launch_pages(plan)


def test_the_vcpu_starts_in_the_stub_which_validates_all_memory_then_enters_the_kernel():
    plan = _plan()
    assert plan.start != plan.entry
    stub = dict(plan.writes)[plan.start]
    mem_end, entry = struct.unpack_from("<QQ", stub, len(stub) - 16)
    assert (mem_end, entry) == (MEM, 0x1000000 + 0x200)  # pref_address + the 64-bit entry
    assert b"\xf2\x0f\x01\xff" in stub  # PVALIDATE
    vmsa = kernel_snp_launch_pages(plan)[-1][1]
    # the save area's RIP at 0x178, RSI at 0x330, SEV_FEATURES at 0x3B0 (AMD APM vol. 2,
    # table B-4): the stub, boot_params, SNPActive
    for off, value in ((0x178, plan.start), (0x330, 0x9000), (0x3B0, 1)):
        assert struct.unpack_from("<Q", vmsa, off) == (value,)


def test_the_stub_bytes_are_the_assembled_source():
    if not (shutil.which("as") and shutil.which("objcopy")):
        pytest.skip("binutils (as, objcopy) are not installed")
    src = REPO / "guests" / "linux" / "snp-validate.S"
    with tempfile.TemporaryDirectory() as d:
        obj, raw = Path(d) / "s.o", Path(d) / "s.bin"
        subprocess.run(["as", "--64", "-o", str(obj), str(src)], check=True)
        subprocess.run(["objcopy", "-O", "binary", "-j", ".text", str(obj), str(raw)], check=True)
        assembled = raw.read_bytes()
    stub = dict(_plan().writes)[_plan().start]
    assert stub[:-16] == assembled[:-16] and assembled[-16:] == bytes(16)


def test_the_digest_is_the_page_info_chain_over_the_launched_pages():
    plan = _plan()
    pages = kernel_snp_launch_pages(plan)
    writes = dict(plan.writes)
    # every byte of every write is in a launched page, the pages are whole and NORMAL, then the
    # secrets and CPUID pages, then the VMSA at its fixed GPA
    by_gpa = {gpa: contents for gpa, contents, kind in pages if kind == NORMAL}
    for gpa, data in writes.items():
        for off in range(0, len(data), 4096):
            a = gpa + off
            page = by_gpa[a & ~0xFFF]
            n = min(len(data) - off, 4096 - (a & 0xFFF))
            assert page[a & 0xFFF:(a & 0xFFF) + n] == data[off:off + n]
    assert [kind for _g, _c, kind in pages[-3:]] == [SECRETS, CPUID, VMSA]
    assert pages[-1][0] == 0xFFFFFFFFF000
    assert kernel_snp_launch_digest(plan) == _page_info_digest(pages)


def test_the_cpuid_pages_contents_are_not_measured_and_every_file_is():
    plan = _plan()
    base = kernel_snp_launch_digest(plan)
    pages = kernel_snp_launch_pages(plan, cpuid_page=b"\x01" * 4096)
    assert _page_info_digest(pages) == base
    assert kernel_snp_launch_digest(_plan(append="quiet loglevel=3")) != base
    assert kernel_snp_launch_digest(_plan(initrd=INITRD[:-1] + b"\x00")) != base
    assert kernel_snp_launch_digest(_plan(mem=2 * MEM)) != base  # the e820 map and the stub
