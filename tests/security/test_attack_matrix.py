"""The outcome matrix, cell by cell: each cell is a real run of the attack against a real guest.

Expected outcomes follow attacks.md (and the literature): an attack that beats SEV is expected to
succeed and is asserted as such. Every cell of every mode is asserted; none is skipped."""

from __future__ import annotations

import pytest

from hv.attacks import ATTACKS

pytestmark = [pytest.mark.security, pytest.mark.slow]

S, F, NA = "succeeded", "failed", "n/a"

EXPECTED = {                # plain, sev, sev-es, sev-snp
    "A01": (S, F, F, F),
    "A02": (S, F, F, F),    # host without TSME; with TSME see test_attack_details
    "A03": (S, F, F, F),
    "A04": (S, S, F, F),
    "A05": (S, S, S, F),    # SNP: the RMP refuses the hypervisor's write-back
    "A07": (S, S, S, F),    # SNP: the remapped access is an RMP nested page fault
    "A09": (NA, S, S, F),   # xex-linear part (Zen 1); xex-random see test_attack_details
    "A11": (S, S, S, S),    # deterministic encryption: only ciphertext hiding would stop it
    "A13": (NA, S, S, F),   # SNP: the page digest binds each page's GPA; the owner refuses
    "A14": (S, S, S, S),    # no memory-encryption mode hides page-granular accesses
    "A15": (S, F, F, F),
    "A16": (NA, F, F, F),
}
MODES = ("plain", "sev", "sev-es", "sev-snp")
CELLS = [(a, m) for a in ATTACKS for m in MODES]


def test_every_attack_has_expectations():
    assert {a.ID for a in ATTACKS} == set(EXPECTED)


@pytest.mark.parametrize("attack,mode", CELLS, ids=[f"{a.ID}-{m}" for a, m in CELLS])
def test_cell(attack, mode):
    """Scenario: a malicious hypervisor runs the attack; the outcome is the literature's."""
    out = attack.run(mode)  # every mode of the matrix runs: an unavailable mode is a failure
    want = EXPECTED[attack.ID][MODES.index(mode)]
    assert (out.attack, out.mode) == (attack.ID, mode)
    assert out.outcome == want, out.evidence
    assert out.evidence and "\n" not in out.evidence
