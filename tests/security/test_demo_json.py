"""`hv demo --json`: the demo's story as one object a script can check."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from hv.cli import main

pytestmark = [pytest.mark.security, pytest.mark.slow]

S, F = "succeeded", "failed"
MODES = ["plain", "sev", "sev-es", "sev-snp"]
VERDICTS = {"A04": [S, S, F, F], "A07": [S, S, S, F], "A14": [S, S, S, S]}   # as in the matrix


def test_demo_json_holds_every_boot_attack_and_the_attestation_step():
    """Scenario: each boot says what the hypervisor found, each attack its verdict, and the
    SEV-SNP boot that its report was verified and its secret released; stdout is only JSON."""
    r = CliRunner().invoke(main, ["demo", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert set(out) == {"boots", "attacks", "wall_time"}
    boots = {b["mode"]: b for b in out["boots"]}
    assert list(boots) == MODES
    for mode, b in boots.items():
        assert b["run"] and b["guest_has_secret"], b
        assert b["dump_bytes"] == 16 << 20 and b["marker_found_at"]       # the honest control
        assert (b["outcome"], bool(b["secret_found_at"])) == (
            ("secret found", True) if mode == "plain" else ("secret hidden", False))
        assert ("attestation" in b) == (mode == "sev-snp")
    # the plain guest's secret page holds the secret in the clear: the first 16 bytes are it
    assert bytes.fromhex(boots["plain"]["secret_page_sample"]) == bytes.fromhex(boots["plain"]["secret"])[:16]
    att = boots["sev-snp"]["attestation"]
    assert att["report_verified"] is True and att["secret_released"] is True, att
    assert att["reports"] >= 1 and len(bytes.fromhex(att["launch_digest"])) == 48
    got = {(c["attack"], c["mode"]): c for c in out["attacks"]}
    assert set(got) == {(a, m) for a in VERDICTS for m in MODES}
    for (a, m), c in got.items():
        assert c["outcome"] == VERDICTS[a][MODES.index(m)], c
        assert c["evidence"] and "\n" not in c["evidence"]
