"""`hv run` on bad images, runaway and crashing guests: one-line errors and documented statuses."""

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from elfmaker import elf
from hv.cli import main

HELLO = Path(__file__).resolve().parents[2] / "guests" / "hello.img"


@pytest.fixture
def run(tmp_path):
    runner = CliRunner()

    def invoke(image: bytes | Path, *args):
        path = image if isinstance(image, Path) else tmp_path / "guest.img"
        if not isinstance(image, Path):
            path.write_bytes(image)
        return runner.invoke(main, ["run", str(path), *args])
    return invoke


OK = b"\xf4"  # hlt


@pytest.mark.parametrize("image,message", [
    (elf([(0x100000, OK, 1)], 0x100000)[:40], "truncated ELF"),
    (elf([(0x100000, OK, 1)], 0x100000, machine=3), "not an x86-64 ELF"),
    (elf([(0x100000, OK, 1)], 0x100000, cls=1), "not an ELF64"),
    (elf([(0x100000, OK, 1)], 0x100000, etype=3), "not an executable ELF"),
    (elf([(0x100000, OK, 1)], 0x900000), "entry point 0x900000 is outside"),
    (elf([(0x100000, OK * 64, 64), (0x100020, OK, 1)], 0x100000), "overlapping segments"),
    (elf([(0x100000, OK, 0x10000000)], 0x100000), "past the end of guest memory"),
    (elf([(0x100000, OK * 8, 4)], 0x100000), "exceeds memory size"),
    (elf([(0x1000, OK, 1)], 0x1000), "below the image base"),
    (lambda: b"\x90" * (64 << 20), "flat image ends at"),
    (b"", "image is empty"),
], ids=["truncated", "i386", "elf32", "dyn", "entry", "overlap", "oversized", "filesz", "low",
        "flat-too-big", "empty"])
def test_bad_images_are_one_line_and_status_2(run, image, message):
    r = run(image() if callable(image) else image)
    assert r.exit_code == 2, r.output
    lines = [line for line in r.output.splitlines() if line]
    assert len(lines) == 1 and lines[0].startswith("hv: bad image:") and message in lines[0]


def test_bad_usage_is_status_2(run):
    assert run(HELLO, "--mem", "3M").exit_code == 2
    assert run(HELLO, "--mem", "lots").exit_code == 2
    assert run(HELLO, "--cbitpos", "60").exit_code == 2
    assert run(HELLO, "--owner-exec", "true").exit_code == 2


def test_runaway_guest_stops_at_timeout(run):
    r = run(b"\xeb\xfe", "--timeout", "0.3", "--json")  # jmp $
    assert r.exit_code == 124
    assert "timeout" in r.output
    summary = json.loads(r.stdout[r.stdout.index("{"):])
    assert summary["exit_reason"] == "timeout"


def test_runaway_guest_stops_at_instruction_budget(run):
    r = run(b"\x48\xff\xc0\xeb\xfb", "--max-insns", "50000", "--json")  # inc rax; jmp back
    assert r.exit_code == 124
    summary = json.loads(r.stdout[r.stdout.index("{"):])
    assert summary["exit_reason"] == "budget" and summary["instructions"] >= 50000


def test_triple_fault_is_reported_not_raised(run):
    r = run(b"\x90\x0f\x0b")  # nop; ud2 with no IDT
    assert r.exit_code == 125
    assert "SHUTDOWN" in r.output and "triple fault" in r.output
    assert "ud2" in r.output and "RIP=0000000000100001" in r.output


def test_debug_exit_code_is_hv_status(run):
    # mov al, 42; mov dx, 0x501; out dx, al
    r = run(bytes.fromhex("b02a66ba0105ee"))
    assert r.exit_code == 42


def test_json_summary_fields(run):
    r = run(HELLO, "--json")
    assert r.exit_code == 0
    s = json.loads(r.stdout)
    assert s["serial"] == "Hello from an hv guest!\n"
    assert s["exit_reason"] == "exit" and s["guest_exit_code"] == 0
    assert s["exits"]["IO"] > 0 and s["tlb_fills"] > 0 and s["instructions"] is None
    assert "launch" not in s


def test_version_and_help():
    r = CliRunner().invoke(main, ["--version"])
    assert r.exit_code == 0 and r.output.startswith("hv, version ")
    for cmd in (["--help"], ["run", "--help"], ["owner", "--help"], ["psp", "--help"]):
        r = CliRunner().invoke(main, cmd)
        assert r.exit_code == 0 and "Usage:" in r.output
