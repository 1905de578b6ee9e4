"""What a new user meets first: one mode at a time, usage errors in one line with status 2, secrets
checked before the launch, `hv memmap --json`, SEV-SNP in `hv ok`, a crash report that names the
faulting address, and a word on stderr when a new platform identity is made."""

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from elfmaker import elf
from hv.cli import main

GUESTS = Path(__file__).resolve().parents[2] / "guests"


@pytest.fixture
def hv(psp_state, tmp_path):
    state = tmp_path / "psp.json"
    shutil.copy(psp_state, state)
    runner = CliRunner()

    def invoke(*args, state_file=state):
        return runner.invoke(main, [*map(str, args)], env={"HV_PSP_STATE": str(state_file)})
    return invoke


def one_line(r) -> str:
    lines = [line for line in r.stderr.splitlines() if line]
    assert len(lines) == 1, r.stderr
    return lines[0]


@pytest.mark.parametrize("flags,named", [
    (("--sev-snp", "--sev-es"), "--sev-es and --sev-snp"),
    (("--sev-es", "--sev-snp"), "--sev-es and --sev-snp"),
    (("--sev", "--sev-snp"), "--sev and --sev-snp"),
    (("--sev", "--sev-es", "--sev-snp"), "--sev and --sev-es and --sev-snp"),
])
def test_two_modes_are_refused_not_downgraded(hv, flags, named):
    """Scenario: `--sev-snp --sev-es` used to run SEV-ES, the last flag winning; now nothing runs."""
    r = hv("run", GUESTS / "hello.img", *flags)
    assert r.exit_code == 2 and r.stdout == ""
    line = one_line(r)
    assert line.startswith("hv: ") and named in line and "exclude each other" in line


def test_memmap_refuses_two_modes_too(hv):
    r = hv("memmap", GUESTS / "hello.img", "--sev", "--sev-es")
    assert r.exit_code == 2 and "--sev and --sev-es exclude each other" in one_line(r)


def test_one_mode_given_twice_is_still_one_mode(hv):
    r = hv("run", GUESTS / "hello.img", "--sev", "--sev", "-q", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["launch"]["mode"] == "sev"


@pytest.mark.parametrize("args,prefix,text", [
    (("run", "IMG", "--bogus"), "hv: ", "No such option '--bogus'"),
    (("run",), "hv: ", "Missing argument 'IMAGE'"),
    (("run", "IMG", "--mem", "lots"), "hv: ", "--mem"),
    (("run", "IMG", "-S"), "hv: ", "-S needs --gdb"),
    (("nosuch",), "hv: ", "No such command 'nosuch'"),
    (("--bogus",), "hv: ", "No such option '--bogus'"),
    (("memmap",), "hv: ", "Missing argument 'IMAGE'"),
    (("ok", "--bogus"), "hv: ", "No such option '--bogus'"),
    (("psp", "import"), "hv psp: ", "Missing argument 'PEK_CERT'"),
    (("psp", "oca-sign", "x.csr"), "hv psp: ", "Missing option '--oca-key'"),
    (("owner", "verify"), "hv owner: ", "Missing option"),
    (("owner", "measure", "IMG", "--snp", "--bogus"), "hv owner: ", "No such option '--bogus'"),
    (("attack", "run"), "hv attack: ", "Missing argument"),
])
def test_usage_errors_are_one_line_and_status_2(hv, args, prefix, text):
    """Scenario: click's three lines (usage, hint, error) become the one line the README promises,
    named like the command group's own errors, with where to look for help."""
    r = hv(*(str(GUESTS / "hello.img") if a == "IMG" else a for a in args))
    assert r.exit_code == 2, r.output
    line = one_line(r)
    assert line.startswith(prefix) and text in line and "--help'" in line, line
    assert "Usage:" not in r.output and "Error:" not in r.output


def test_help_still_shows_usage(hv):
    r = hv("run", "--help")
    assert r.exit_code == 0 and "Usage:" in r.stdout


@pytest.mark.parametrize("mode", [(), ("--sev",), ("--sev-snp",)], ids=["plain", "sev", "sev-snp"])
@pytest.mark.parametrize("size", [0, 4097])
def test_a_secret_that_does_not_fit_is_bad_usage_in_every_mode(hv, tmp_path, mode, size):
    """Scenario: an empty or oversized --secret-file was a launch failure (3), a baffling one about
    contiguous guest ranges, or (plain, empty) silently no secret at all."""
    secret = tmp_path / "s.bin"
    secret.write_bytes(b"s" * size)
    r = hv("run", GUESTS / "secret.img", *mode, "--secret-file", secret, "-q")
    assert r.exit_code == 2, r.output
    line = one_line(r)
    assert line.startswith("hv: ") and f"holds {size} bytes" in line and "1..4096" in line


def test_a_full_page_secret_still_runs(hv, tmp_path):
    secret = tmp_path / "s.bin"
    secret.write_bytes(b"s" * 4096)
    r = hv("run", GUESTS / "secret.img", "--secret-file", secret, "-q", "--json")
    assert r.exit_code == 0, r.output


def test_secret_file_with_session_is_bad_usage(hv, tmp_path):
    """Scenario: only the owner holds a session's transport keys; hv cannot package the secret."""
    secret = tmp_path / "s.bin"
    secret.write_bytes(b"my secret")
    session = tmp_path / "session"
    session.mkdir()
    r = hv("run", GUESTS / "secret.img", "--sev", "--session", session, "--secret-file", secret)
    assert r.exit_code == 2 and "--secret-file cannot go with --session" in one_line(r)
    r = hv("run", GUESTS / "secret.img", "--sev", "--owner-exec", "true", "--secret-file", secret)
    assert r.exit_code == 2 and "not both" in one_line(r)


def test_memmap_json_lists_every_run(hv, tmp_path):
    png = tmp_path / "map.png"
    r = hv("memmap", GUESTS / "secret.img", "--sev", "--json", "-o", png)
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["mode"] == "sev" and out["pages"] == 16384 and out["png"] == str(png) and png.exists()
    assert sum(run["pages"] for run in out["runs"]) == out["pages"]
    assert sum(out["counts"].values()) == out["pages"] and out["counts"]["private"] > 0
    first = out["runs"][0]
    assert set(first) == {"gpa", "end", "pages", "mapping", "dram_entropy", "dram", "guest_entropy", "guest"}
    ends = [run["gpa"] for run in out["runs"][1:]]
    assert ends == [run["end"] + 1 for run in out["runs"][:-1]]  # contiguous, in GPA order
    # Private pages are ciphertext in DRAM: near 8 bits per byte where the guest holds zeros.
    assert any(run["mapping"] == "private" and run["dram"] == "random" and run["guest"] == "const"
               for run in out["runs"])


def test_ok_says_sev_snp_is_supported(hv):
    """Scenario: `hv ok` showed "[ SKIP ] SEV-SNP supported (EAX bit 4)" while --sev-snp worked."""
    r = hv("ok")
    assert r.exit_code == 0, r.output
    assert "[ PASS ]     - SEV-SNP supported (EAX bit 4)" in r.stdout
    assert "SKIP ]     - SEV-SNP" not in r.stdout


def test_a_crash_on_a_page_fault_reports_the_faulting_address_in_cr2(hv, tmp_path):
    """Scenario: a load from an unmapped address, no IDT: the triple fault's report showed CR2=0."""
    code = bytes.fromhex("48a1") + (0x40001234).to_bytes(8, "little") + b"\xf4"  # mov rax, [moffs64]
    image = tmp_path / "fault.img"
    image.write_bytes(elf([(0x100000, code, len(code))], 0x100000))
    r = hv("run", image)
    assert r.exit_code == 125
    assert "#PF" in r.stderr and "CR2=0x40001234" in r.stderr, r.stderr


def test_a_new_platform_identity_is_announced_with_its_path(hv, tmp_path):
    """Scenario: a typo in HV_PSP_STATE made a new identity in silence; every exported certificate
    stopped matching. The first command says so; the next one, on the same file, does not."""
    typo = tmp_path / "pps-state.json"
    r = hv("psp", "status", "--json", state_file=typo)
    assert r.exit_code == 0, r.output
    line = one_line(r)
    assert line.startswith("hv psp: ") and str(typo) in line and "new platform identity" in line
    json.loads(r.stdout)  # stdout stays machine-readable
    r = hv("psp", "status", state_file=typo)
    assert r.exit_code == 0 and r.stderr == ""


def test_an_existing_state_file_is_used_without_a_word(hv):
    r = hv("run", GUESTS / "hello.img", "--sev", "-q")
    assert r.exit_code == 0 and r.stderr == ""


def test_a_plain_guest_needs_no_platform_identity(hv, tmp_path):
    """A plain guest never boots the PSP: no state file is made, so nothing is announced."""
    state = tmp_path / "none.json"
    r = hv("run", GUESTS / "hello.img", state_file=state)
    assert r.exit_code == 0 and r.stderr == "" and not state.exists()
