"""Boot every committed sample guest through the `hv run` CLI and check what it prints and returns.

Expected values are computed here independently of the guests: SHA-256 digests with hashlib, the
memstress checksum with numpy. The compute result was computed by a host build of the same
recurrence (guests/README.md records it).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from hv.cli import main as hv_main

REPO = Path(__file__).resolve().parents[2]
GUESTS = REPO / "guests"
DEFAULT_SECRET = b"HV-DEFAULT-SECRET-0123456789abcd"
SHARED_MARKER = b"HV-SHARED-MARKER"
COMPUTE_RESULT = 0x4B91198C5846F759

pytestmark = [pytest.mark.slow]


@pytest.fixture
def hv_run(tmp_path):
    """`hv run guests/<image>.img OPTIONS` in-process; returns click's Result (exit_code, stdout).

    The PSP keeps its platform identity in a state file: point it into the test's directory so no
    test reads or writes the user's own.
    """
    runner = CliRunner(env={"HV_PSP_STATE": str(tmp_path / "psp-state.json")})

    def run(image: str, *options: str):
        args = ["run", str(GUESTS / f"{image}.img"), *options]
        return runner.invoke(hv_main, args, catch_exceptions=False)

    return run


def lines(result) -> list[str]:
    return result.stdout.splitlines()


def memstress_checksum(passes: int = 4, working_set: int = 16 << 20) -> int:
    """The checksum guests/memstress.c documents, vectorised."""
    k = np.arange(working_set // 8, dtype=np.uint64)
    words = np.zeros_like(k)
    mul, inc = np.uint64(0x5851F42D4C957F2D), np.uint64(0x14057B7EF767814F)
    for p in range(passes):
        words = words * mul + ((k << np.uint64(8)) | np.uint64(p)) + inc
    mixed = words ^ (words >> np.uint64(31))
    return int(np.sum(mixed * (np.uint64(2) * k + np.uint64(1)), dtype=np.uint64))


def digest_line(secret: bytes) -> str:
    return f"secret-sha256: {hashlib.sha256(secret).hexdigest()}"


def test_hello_prints_its_greeting_and_exits_0(hv_run):
    """Scenario: the smallest guest boots, writes to the UART and exits through port 0x501."""
    result = hv_run("hello")
    assert result.exit_code == 0, result.output
    assert "Hello from an hv guest!" in lines(result)


def test_hello_run_report_in_json(hv_run):
    """Scenario: a script reads the guest's serial output and status from `hv run --json`."""
    result = hv_run("hello", "--json")
    assert result.exit_code == 0, result.output
    text = result.stdout
    start = text.find("{")
    assert start >= 0, text
    report, _end = json.JSONDecoder().raw_decode(text[start:])
    assert report["exit_code"] == 0
    assert report["serial"] == "Hello from an hv guest!\n"


def test_sevcheck_reports_plain_mode_without_sev(hv_run):
    """Scenario: an unencrypted guest sees SEV_STATUS 0, whatever CPUID advertises."""
    result = hv_run("sevcheck")
    assert result.exit_code == 0, result.output
    out = lines(result)
    assert "mode: plain" in out
    assert "sev_status: 0x0" in out
    assert any(re.fullmatch(r"c-bit: (none|\d+)", line) for line in out), out


def test_secret_prints_the_digest_of_the_default_secret(hv_run):
    """Scenario: with no launch secret the guest hashes its documented built-in default."""
    result = hv_run("secret")
    assert result.exit_code == 0, result.output
    assert [line for line in lines(result) if line.startswith("secret-sha256: ")] == [digest_line(DEFAULT_SECRET)]


def test_secret_hashes_an_injected_secret(hv_run, tmp_path):
    """Scenario: a secret handed to the VM at GPA 0x9000 is what the guest hashes."""
    secret = bytes(range(256)) * 3
    (tmp_path / "secret.bin").write_bytes(secret)
    result = hv_run("secret", "--secret-file", str(tmp_path / "secret.bin"))
    assert result.exit_code == 0, result.output
    assert digest_line(secret) in lines(result)


def test_compute_prints_the_known_answer(hv_run):
    """Scenario: a register-only loop of ~1e9 instructions runs to its exact result."""
    result = hv_run("compute")
    assert result.exit_code == 0, result.output
    assert f"compute: {COMPUTE_RESULT:#018x}" in lines(result)


def test_memstress_keeps_private_memory_across_16384_exits(hv_run):
    """Scenario: 4 passes over 16 MiB with an exit after every page lose no write."""
    result = hv_run("memstress", "--mem", "64M")
    assert result.exit_code == 0, result.output
    assert f"memstress: {memstress_checksum():#018x}" in lines(result)


def test_memstress_refuses_too_little_memory(hv_run):
    """Scenario: with 16 MiB the guest says why and exits 1 instead of running off the end."""
    result = hv_run("memstress", "--mem", "16M")
    assert result.exit_code == 1, result.output
    assert any(line.startswith("memstress: needs at least 32 MiB") for line in lines(result))


@pytest.mark.parametrize("cbitpos", [47, 51])
def test_sevcheck_reports_sev_mode_under_sev(hv_run, cbitpos):
    """Scenario: an SEV guest detects SEV from SEV_STATUS and reads the C-bit position from CPUID."""
    result = hv_run("sevcheck", "--sev", "--cbitpos", str(cbitpos))
    assert result.exit_code == 0, result.output
    out = lines(result)
    assert "mode: sev" in out
    assert f"c-bit: {cbitpos}" in out
    assert "sev_status: 0x1" in out


def test_secret_runs_encrypted_with_the_same_digest(hv_run):
    """Scenario: under SEV the guest shares one page and still computes the same digest."""
    result = hv_run("secret", "--sev")
    assert result.exit_code == 0, result.output
    assert digest_line(DEFAULT_SECRET) in lines(result)


def test_memstress_runs_encrypted(hv_run):
    """Scenario: private pages written between 16384 exits survive the encryption round trips."""
    result = hv_run("memstress", "--sev")
    assert result.exit_code == 0, result.output
    assert f"memstress: {memstress_checksum():#018x}" in lines(result)


@pytest.mark.security
@pytest.mark.parametrize("mode", ["plain", "sev"])
def test_hypervisor_view_holds_the_marker_but_the_secret_only_in_plain(hv_run, tmp_path, mode):
    """Scenario: the hypervisor reads the guest's memory; the shared marker is always there, the
    secret only when the guest runs unencrypted (the honest control)."""
    dump = tmp_path / "dram.bin"
    options = ["--dump-dram", str(dump), "-q"] + (["--sev"] if mode == "sev" else [])
    result = hv_run("secret", *options)
    assert result.exit_code == 0, result.output
    dram = dump.read_bytes()
    assert SHARED_MARKER in dram
    if mode == "plain":
        assert dram.count(DEFAULT_SECRET) >= 4  # .rodata, stack, heap and static copies
    else:
        assert DEFAULT_SECRET not in dram
