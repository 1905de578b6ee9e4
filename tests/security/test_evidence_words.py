"""Evidence lines are sentences a person reads: what the hypervisor did and what happened, with
no Python repr in them (no b'...', no \\x escapes, no ExitClass(field=...))."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import hv.attacks
from hv.attacks import a04_registers, a07_severed, a14_page_faults, a15_launch_injection
from hv.attacks.evidence import text_of
from hv.attacks.lab import Stop, describe_exit
from hv.kvm import MemoryFault, exits as K

pytestmark = pytest.mark.security

REPR = re.compile(r"(?<![\w])b['\"]|\\x[0-9a-f]{2}|\b[A-Z]\w*\(\w+=")


def test_the_repr_pattern_catches_what_the_evidence_used_to_show():
    for old in ["RBX=b'90442256' (the secret)", "RBX=b'i\\xd4\\xbe' (not the secret)",
                "guest crash: FailEntry(detail='VMSA integrity check failed')",
                "guest fault: MemoryFault(gpa=0x10a000, write=False, fetch=False)"]:
        assert REPR.search(old), old


def test_text_of():
    assert text_of(b"53b51bcb") == '"53b51bcb"'
    assert text_of(b"i\xd4\xbe\xbd") == "hex 69d4bebd"
    assert text_of(b'say "x"') == "hex 73617920227822"
    assert text_of(b"") == "no bytes"


@pytest.mark.parametrize("exit_,words", [
    (K.FailEntry("VMSA integrity check failed: the saved guest state was modified"),
     "VMRUN failed: VMSA integrity check failed: the saved guest state was modified"),
    (K.Shutdown("triple fault: exception 6 (#UD) at RIP 0x100002"), "triple fault: exception 6 (#UD) at RIP 0x100002"),
    (K.Shutdown(), "triple fault: shutdown"),
    (K.SystemEvent("reason 3"), "the guest asked to be terminated: reason 3"),
    (K.InternalError("no handler"), "the hypervisor could not handle an exit: no handler"),
    (K.Mmio(0xfee00000, 4, True), "an MMIO write of GPA 0xfee00000 that no device backs"),
    (MemoryFault(0x10a000, write=True, fetch=False), "a nested page fault on the guest's write of GPA "
                                                     "0x10a000, raised by the nested page table"),
    (K.Intr(), "the run was stopped from outside (interrupted)"),
    (K.Hypercall(12), "an unexpected HYPERCALL exit"),
])
def test_exits_the_lab_cannot_handle_are_described_in_words(exit_, words):
    assert describe_exit(exit_) == words
    stop = Stop("crash", detail=describe_exit(exit_), exit=exit_)
    assert stop.describe() == f"guest crashed: {words}"
    assert not REPR.search(stop.describe())


@pytest.mark.parametrize("mode", ["plain", "sev", "sev-es", "sev-snp"])
def test_register_attack_says_what_the_hypervisor_did(mode):
    """Scenario: A04's evidence names the read of RBX and what the RIP write did, in words."""
    out = a04_registers.run(mode)
    assert not REPR.search(out.evidence), out.evidence
    if mode in ("plain", "sev"):
        # 8 random bytes read as quoted text when all happen to be printable (evidence.text_of)
        assert re.fullmatch(r"the hypervisor read RBX at the exit: 0x[0-9a-f]{16} \(the bytes "
                            r"(hex [0-9a-f]{16}|\"[\x20-\x7e]{8}\")\); "
                            r"it set RIP to debug_shell \(0x[0-9a-f]+\) and the guest ran it and exited 0x42; "
                            r"the 64 recovered bits are the secret's", out.evidence), out.evidence
    else:
        assert re.match(r"the hypervisor read RBX from the encrypted VMSA: 0x[0-9a-f]{16} \(the bytes "
                        r"(hex [0-9a-f]{16}|\"[\x20-\x7e]{8}\")\); ", out.evidence), out.evidence
        assert out.evidence.endswith("; the 64 recovered bits are not the secret's; no 16-byte window of "
                                     "the 32-byte secret in the guest's console"), out.evidence
    if mode == "sev-es":
        assert ("its RIP write was refused: VMRUN failed the VMSA integrity check "
                "(the saved guest state was modified), so the guest never ran again;") in out.evidence
    if mode == "sev-snp":
        assert re.search(r"its RIP write was refused \(RMP: host write to page 0x[0-9a-f]+, which is "
                         r"assigned to ASID \d+\); the guest ran on: guest exited with status 0x0; ", out.evidence)


@pytest.mark.parametrize("attack,mode,words", [
    (a07_severed, "sev-snp", "got no answer; the guest's read of GPA"),
    (a07_severed, "sev", "; the 256 recovered bits are the secret's"),
    (a14_page_faults, "sev", "(the bytes hex "),
    (a15_launch_injection, "sev-es", "guest crashed: triple fault"),
], ids=["A07-sev-snp", "A07-sev", "A14-sev", "A15-sev-es"])
def test_other_evidence_has_no_repr(attack, mode, words):
    out = attack.run(mode)
    assert words in out.evidence, out.evidence
    assert not REPR.search(out.evidence), out.evidence


def test_no_attack_formats_evidence_with_repr():
    """The attack modules build evidence lines: none may format a value with !r or repr()."""
    src = Path(hv.attacks.__file__).parent
    for path in [*src.glob("a[0-9][0-9]_*.py"), src / "lab.py", src / "snoop.py", src / "evidence.py",
                 src / "verdict.py", src / "findings.py"]:
        text = path.read_text()
        assert "!r}" not in text and "repr(" not in text, path.name
