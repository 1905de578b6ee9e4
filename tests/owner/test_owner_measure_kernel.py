"""`hv owner measure --kernel` and `verify --kernel`: the SEV and SEV-ES launch digest of a Linux
kernel, its initrd and its whole command line, from the files alone; every misuse is one line,
status 2."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest
from click.testing import CliRunner

import sevwire as sw
from hv.boot import kernel_launch_digest, kernel_launch_regions, kernel_launch_vmsa, kernel_plan
from hv.owner.cli import owner
from tests.boot.test_bzimage import MiB, synthetic
from tests.owner.test_owner_respond import run_exec

KERNEL = bytes(synthetic())
INITRD = b"only the initramfs holds this\n" * 100
PLATFORM = "console=ttyS0 tsc_early_khz=2000000 panic=-1"


def run(*args):
    return CliRunner().invoke(owner, [str(a) for a in args])


@pytest.fixture
def files(tmp_path):
    (tmp_path / "bzImage").write_bytes(KERNEL)
    (tmp_path / "initrd").write_bytes(INITRD)
    return tmp_path / "bzImage", tmp_path / "initrd"


def _one_line_error(result, text: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and text in lines[0], result.stderr


def test_measure_prints_the_digest_of_the_encrypted_plan_in_256m_by_default(files):
    kernel, initrd = files
    result = run("measure", "--kernel", kernel, "--initrd", initrd, "--append", "rdinit=/init")
    assert result.exit_code == 0, result.output
    plan = kernel_plan(KERNEL, INITRD, "rdinit=/init", 256 * MiB, encrypted=True)
    assert result.stdout.strip() == kernel_launch_digest(plan).hex()


def test_json_names_the_inputs_the_c_bit_the_command_line_and_the_regions(files):
    kernel, initrd = files
    result = run("measure", "--kernel", kernel, "--initrd", initrd, "--append", "quiet", "--mem", "64M", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["kernel"] == str(kernel) and data["initrd"] == str(initrd)
    assert data["mem_size"] == 64 * MiB and data["cbitpos"] == 39 and data["policy"] == 1
    assert data["vmsas"] == 0
    assert data["cmdline"] == f"{PLATFORM} quiet"
    plan = kernel_plan(KERNEL, INITRD, "quiet", 64 * MiB, encrypted=True)
    assert data["digest"] == kernel_launch_digest(plan).hex()
    assert [r["gpa"] for r in data["regions"]] == [gpa for gpa, _ in plan.writes]
    assert [r["len"] for r in data["regions"]] == [-(-len(d) // 16) * 16 for _, d in plan.writes]
    alone = json.loads(run("measure", "--kernel", kernel, "--json").stdout)
    assert alone["initrd"] is None and alone["cmdline"] == PLATFORM and alone["mem_size"] == 256 * MiB


def test_the_digest_follows_the_kernel_the_initrd_and_the_append_string(files, tmp_path):
    kernel, initrd = files
    base = run("measure", "--kernel", kernel, "--initrd", initrd, "--append", "quiet").stdout
    other = tmp_path / "other"
    other.write_bytes(INITRD.replace(b"this", b"that"))
    assert run("measure", "--kernel", kernel, "--initrd", other, "--append", "quiet").stdout != base
    assert run("measure", "--kernel", kernel, "--initrd", initrd, "--append", "loud").stdout != base
    assert run("measure", "--kernel", kernel, "--initrd", initrd, "--append", "quiet", "--mem", "128M").stdout != base
    other.write_bytes(KERNEL[:-1] + b"\x90")
    assert run("measure", "--kernel", other, "--initrd", initrd, "--append", "quiet").stdout != base
    assert run("measure", "--kernel", kernel, "--initrd", initrd, "--append", "quiet", "--mem", "256M",
               "--cbitpos", "39").stdout == base


def test_exactly_one_of_image_and_kernel(files):
    kernel, initrd = files
    _one_line_error(run("measure", kernel, "--kernel", kernel), "give IMAGE or --kernel, not both")
    _one_line_error(run("measure"), "give IMAGE or --kernel")
    _one_line_error(run("measure", kernel, "--initrd", initrd), "--initrd and --append go with --kernel")
    _one_line_error(run("measure", kernel, "--append", "quiet"), "--initrd and --append go with --kernel")


def test_bad_kernels_and_options_are_one_line_and_status_2(files, tmp_path):
    kernel, initrd = files
    elf = tmp_path / "vmlinux"
    elf.write_bytes(b"\x7fELF" + bytes(4096))
    _one_line_error(run("measure", "--kernel", elf), f"kernel {elf}: not a bzImage")
    _one_line_error(run("measure", "--kernel", tmp_path / "none"), "no such file")
    _one_line_error(run("measure", "--kernel", kernel, "--initrd", tmp_path / "none"), "initrd")
    _one_line_error(run("measure", "--kernel", kernel, "--mem", "1M"), "too small for the kernel")
    _one_line_error(run("measure", "--kernel", kernel, "--cbitpos", "47"), "C-bit at 39, not 47")
    result = run("measure", "--kernel", elf, "--json")
    assert result.exit_code == 2 and json.loads(result.stdout)["ok"] is False


def test_verify_recomputes_a_kernel_launch_and_refuses_another_command_line(files, tmp_path):
    """Scenario: a measurement of the kernel with `quiet` passes; the same kernel with another
    command line, or another initrd, fails (status 1)."""
    kernel, initrd = files
    tk = bytes(range(32))
    (tmp_path / "tk.bin").write_bytes(tk)
    digest = kernel_launch_digest(kernel_plan(KERNEL, INITRD, "quiet", 256 * MiB, encrypted=True))
    msg = bytes([4, 0, 24, 15]) + (1).to_bytes(4, "little") + digest + bytes(16)  # policy 0x1
    meas = hmac.new(tk[16:], msg, hashlib.sha256).hexdigest()
    args = ["verify", "--measurement", meas, "--mnonce", "00" * 16, "--tk", tmp_path / "tk.bin",
            "--api-major", 0, "--api-minor", 24, "--build", 15, "--kernel", kernel, "--initrd", initrd]
    assert run(*args, "--append", "quiet").exit_code == 0
    assert run(*args, "--append", "init=/bin/sh").exit_code == 1
    assert run(*args[:-2], "--append", "quiet").exit_code == 1  # no initrd
    _one_line_error(run(*args, "--digest", digest.hex()), "exactly one of --digest, --image and --kernel")
    _one_line_error(run(*args[:-4], "--digest", digest.hex(), "--initrd", initrd),
                    "--initrd and --append go with --kernel")


def test_owner_exec_answers_the_expected_kernel_launch_only(files, tmp_path):
    """Scenario: `hv run --kernel ... --sev --owner-exec` asks the owner; the owner's exec with
    --kernel/--initrd/--append releases the secret for that launch and refuses one whose
    command line differs (status 1)."""
    kernel, initrd = files
    tk, mnonce = bytes(range(32)), bytes(16)

    def request(append: str) -> str:
        digest = kernel_launch_digest(kernel_plan(KERNEL, INITRD, append, 256 * MiB, encrypted=True))
        meas = sw.launch_measure(tk[16:], 0, 24, 15, 1, digest, mnonce)
        return json.dumps({"measurement": meas.hex(), "mnonce": mnonce.hex(), "policy": 1,
                           "api_major": 0, "api_minor": 24, "build": 15})

    args = ("--kernel", str(kernel), "--initrd", str(initrd), "--append", "quiet")
    proc = run_exec(tmp_path, tk, request("quiet"), *args)
    assert proc.returncode == 0 and "header" in json.loads(proc.stdout), proc.stderr
    proc = run_exec(tmp_path, tk, request("init=/bin/sh"), *args)
    assert proc.returncode == 1 and "refuse" in json.loads(proc.stdout)
    proc = run_exec(tmp_path, tk, request("quiet"), "--kernel", str(kernel), "--digest", "00" * 32)
    assert proc.returncode == 2 and "exactly one of --image, --digest and --kernel" in proc.stderr
    proc = run_exec(tmp_path, tk, request("quiet"), "--digest", "00" * 32, "--append", "quiet")
    assert proc.returncode == 2 and "--initrd and --append go with --kernel" in proc.stderr


# ---- SEV-ES: the initial VMSA after the memory ------------------------------------------------------


def _es_digest(append: str) -> bytes:
    """SHA-256 over the launch regions, then the kernel's initial VMSA page."""
    plan = kernel_plan(KERNEL, INITRD, append, 256 * MiB, encrypted=True)
    h = hashlib.sha256()
    for _gpa, data in kernel_launch_regions(plan):
        h.update(data)
    h.update(kernel_launch_vmsa(plan))
    return h.digest()


def test_measure_with_the_es_bit_covers_the_initial_vmsa(files):
    """Scenario: `--policy 0x5` gives the digest `hv run --kernel --sev-es` measures (regions,
    then one VMSA page), which is not the SEV one; under --snp the policy does not count."""
    kernel, initrd = files
    args = ("measure", "--kernel", kernel, "--initrd", initrd, "--append", "quiet")
    es = run(*args, "--policy", "0x5")
    assert es.exit_code == 0, es.output
    assert es.stdout.strip() == _es_digest("quiet").hex() != run(*args).stdout.strip()
    assert run(*args, "--policy", "NODBG|ES").stdout == es.stdout
    data = json.loads(run(*args, "--policy", "0x5", "--json").stdout)
    assert data["digest"] == _es_digest("quiet").hex() and data["vmsas"] == 1 and data["policy"] == 5
    assert run(*args, "--policy", "0x5", "--snp").stdout == run(*args, "--snp").stdout != es.stdout


def test_verify_with_the_es_bit_recomputes_an_sev_es_kernel_launch(files, tmp_path):
    """Scenario: an SEV-ES launch's measurement passes with --policy 0x5 and fails under the
    SEV digest (--policy 0x1) or another command line (status 1)."""
    kernel, initrd = files
    tk = bytes(range(32))
    (tmp_path / "tk.bin").write_bytes(tk)
    meas = sw.launch_measure(tk[16:], 0, 24, 15, 5, _es_digest("quiet"), bytes(16)).hex()
    args = ["verify", "--measurement", meas, "--mnonce", "00" * 16, "--tk", tmp_path / "tk.bin",
            "--api-major", 0, "--api-minor", 24, "--build", 15, "--kernel", kernel, "--initrd", initrd]
    ok = run(*args, "--append", "quiet", "--policy", "0x5", "--json")
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["digest"] == _es_digest("quiet").hex()
    assert run(*args, "--append", "quiet", "--policy", "0x1").exit_code == 1
    assert run(*args, "--append", "init=/bin/sh", "--policy", "0x5").exit_code == 1


def test_owner_exec_checks_the_es_digest_when_the_launch_has_the_es_bit(files, tmp_path):
    """Scenario: without --policy the owner's exec answers an SEV-ES launch of the kernel (policy
    0x5, VMSA measured) and an SEV one (0x1); a host that reports the SEV launch's measurement
    under the ES policy, or an ES launch with another command line, is refused; --policy 0x1
    refuses the ES launch."""
    kernel, initrd = files
    tk, mnonce = bytes(range(32)), bytes(16)
    sev = kernel_launch_digest(kernel_plan(KERNEL, INITRD, "quiet", 256 * MiB, encrypted=True))

    def request(digest: bytes, policy: int) -> str:
        meas = sw.launch_measure(tk[16:], 0, 24, 15, policy, digest, mnonce)
        return json.dumps({"measurement": meas.hex(), "mnonce": mnonce.hex(), "policy": policy,
                           "api_major": 0, "api_minor": 24, "build": 15})

    args = ("--kernel", str(kernel), "--initrd", str(initrd), "--append", "quiet")
    for digest, policy in ((_es_digest("quiet"), 5), (sev, 1)):
        proc = run_exec(tmp_path, tk, request(digest, policy), *args)
        assert proc.returncode == 0 and "header" in json.loads(proc.stdout), proc.stderr
    for digest, policy in ((sev, 5), (_es_digest("init=/bin/sh"), 5), (_es_digest("quiet"), 1)):
        proc = run_exec(tmp_path, tk, request(digest, policy), *args)
        assert proc.returncode == 1 and "refuse" in json.loads(proc.stdout)
    proc = run_exec(tmp_path, tk, request(_es_digest("quiet"), 5), *args, "--policy", "0x5")
    assert proc.returncode == 0, proc.stderr
    proc = run_exec(tmp_path, tk, request(_es_digest("quiet"), 5), *args, "--policy", "0x1")
    assert proc.returncode == 1 and "refuse" in json.loads(proc.stdout)
