"""The judge's rules, one test each: the lab alone holds the secret, and a broken experiment is an
`error` cell, never a verdict. Each rule is checked on hand-made findings against a secret made
here, and the ones the issue names (a crashing guest in A09, a dump without its marker, fewer
than 64 recovered bits) also on real runs whose experiment is broken on purpose."""

from __future__ import annotations

import os

import pytest

from hv.attacks import a01_dump, a09_sevurity, a14_page_faults
from hv.attacks.findings import Findings, Seen
from hv.attacks.verdict import MIN_BITS, GroundTruth, judge, verdict

pytestmark = pytest.mark.security

SECRET = os.urandom(32)


@pytest.mark.parametrize("findings,outcome", [
    (Findings("read", recovered=SECRET[:8]), "succeeded"),                    # 64 bits, right
    (Findings("read", recovered=SECRET), "succeeded"),                        # 256 bits, right
    (Findings("read", recovered=SECRET[:7]), "error"),                        # 56 bits: too few to judge
    (Findings("read", recovered=SECRET[:2]), "error"),                        # A14's old 16 bits, even right
    (Findings("read", recovered=bytes(8)), "failed"),                         # 64 wrong bits, guest done
    (Findings("dump", seen=(Seen("d", b"x" * 99 + SECRET[3:19]),), control=True), "succeeded"),
    (Findings("dump", seen=(Seen("d", b"x" * 99 + SECRET.hex().encode()),), control=True), "succeeded"),
    (Findings("dump", seen=(Seen("d", b"x" * 99 + SECRET[:15]),), control=True), "failed"),  # 15 bytes
    (Findings("dump", seen=(Seen("d", SECRET),), control=False), "error"),    # no marker: broken read
    (Findings("effect", achieved=True), "succeeded"),
    (Findings("effect", achieved=True, completed=False), "error"),            # A09's crashed guest
    (Findings("effect", achieved=False, completed=False), "error"),           # crashed, no defence
    (Findings("effect", achieved=False, completed=False, defence="RMP fault"), "failed"),
    (Findings("effect", achieved=False), "failed"),
    (Findings("pins", achieved=True, guesses=(SECRET[:4],)), "error"),        # the "wrong" PIN was right
    (Findings("pins", achieved=True, guesses=(bytes(a ^ 0xFF for a in SECRET[:4]),)), "succeeded"),
    (Findings("", na="no such thing in this mode"), "n/a"),
], ids=["64-bits", "256-bits", "56-bits", "16-bits", "wrong-bits", "window", "hex", "15-bytes",
        "no-control", "effect", "effect-crashed", "crashed", "defence", "no-effect", "lucky-guess",
        "wrong-guess", "n/a"])
def test_each_rule(findings, outcome):
    got, why = verdict(findings, SECRET)
    assert got == outcome, why
    assert why and "\n" not in why


def test_the_judge_needs_at_least_64_bits():
    assert MIN_BITS == 64
    with pytest.raises(ValueError):
        GroundTruth(b"1234567")          # a ground truth too short to judge is refused


def test_a_broken_experiment_is_an_error_cell():
    """Scenario: the attack's code raises; the cell says so in one line, and has no findings."""
    def experiment(trial):
        raise RuntimeError("the guest never reached\nround 32")

    out = judge("A01", "sev", experiment)
    assert out.outcome == "error" and out.findings is None
    assert out.evidence == "the experiment broke: RuntimeError: the guest never reached round 32"


def test_a_crashing_guest_in_A09_is_an_error_cell(monkeypatch):
    """Scenario: the hypervisor writes a garbage block over lockout() instead of a `ret`. The guest
    crashes at its third wrong PIN, so "LOCKED" never appears: once a success, now an error."""
    def garbage(lab, constants, target):
        lab.vm.write_gpa(target, os.urandom(16))
        return target + 16, 0, ""

    monkeypatch.setattr(a09_sevurity, "_plant", garbage)
    for _attempt in range(6):
        out = a09_sevurity.run("sev")
        # Under SEV the guest runs the block decrypted with its own key: random code, which now
        # and then happens to run through harmlessly. Only a guest that crashed tests the rule.
        if not (out.findings and out.findings["completed"]):
            break
    assert out.outcome == "error", out.evidence
    assert out.findings["completed"] is False and out.findings["achieved"] is False
    assert "the guest did not finish and no defence stopped the attack" in out.evidence


def test_a_dump_without_its_marker_is_an_error_cell(monkeypatch):
    """Scenario: the hypervisor's read stops at 1 MiB, before the shared page. The plain guest's
    secret is in that first MiB, but with the honest control missing the read proves nothing."""
    monkeypatch.setattr(a01_dump, "_read", lambda lab: lab.vmm.dump_guest_memory()[:1 << 20])
    out = a01_dump.run("plain")
    assert out.outcome == "error", out.evidence
    assert "control HV-SHARED-MARKER NOT found" in out.evidence
    assert out.findings["control"] is False


def test_A14_recovers_64_bits_the_judge_compares():
    """Scenario: the page-fault channel reads 64 of the secret's bits, and the judge compares all
    64 with the truth; a constant guess would win one time in 2^64, not in 256."""
    out = a14_page_faults.run("plain")
    assert out.outcome == "succeeded", out.evidence
    assert out.findings["recovered_bits"] == 64
    assert out.evidence.endswith("the 64 recovered bits are the secret's")


def test_the_secret_is_random_bytes_new_each_trial():
    a, b = GroundTruth().secret, GroundTruth().secret
    assert len(a) == len(b) == 32 and a != b
    assert not all(0x20 <= x < 0x7F for x in a + b)   # not printable text (2^-64 chance of failing)
