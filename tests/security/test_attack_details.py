"""Evidence that can be checked against ground truth, and the variants the matrix leaves out."""

from __future__ import annotations

import json
import re

import pytest
from click.testing import CliRunner

from hv.attacks import (a01_dump, a02_cold_boot, a05_replay, a07_severed, a09_sevurity, a13_undeserved,
                        a14_page_faults, a15_launch_injection, a16_debug_policy)
from hv.attacks.cli import attack
from hv.attacks.demo import demo
from hv.attacks.tweak_solver import Unsolvable, recover_constants
from hv.hw.machine import Machine, MachineConfig, TweakMode

pytestmark = pytest.mark.security


@pytest.mark.parametrize("mode", [TweakMode.XE_LINEAR, TweakMode.XEX_LINEAR])
def test_sevurity_recovers_the_machines_tweak_constants(mode):
    """Scenario: with only its own SME key the hypervisor learns every tweak constant DRAM uses."""
    machine = Machine(MachineConfig(dram_size=24 << 20, tweak=mode))
    got = recover_constants(machine.hypervisor_port().host, mode)
    truth = machine.tweak_constants()
    assert sorted(got) == list(range(4, (24 << 20).bit_length()))
    assert got == {bit: truth[bit] for bit in got}


def test_sevurity_finds_no_linear_tweak_on_a_random_tweak_part():
    """Scenario: Zen 2's random per-boot tweak leaves nothing to solve."""
    with pytest.raises(Unsolvable):
        machine = Machine(MachineConfig(dram_size=24 << 20, tweak=TweakMode.XEX_RANDOM))
        recover_constants(machine.hypervisor_port().host, TweakMode.XEX_RANDOM)
    assert a09_sevurity.run("sev", tweak_mode=TweakMode.XEX_RANDOM).outcome == "failed"


def test_sevurity_plants_code_on_an_xe_part():
    out = a09_sevurity.run("sev", tweak_mode=TweakMode.XE_LINEAR)
    assert out.outcome == "succeeded", out.evidence
    assert "never locked" in out.evidence


@pytest.mark.parametrize("mode", ["plain", "sev"])
def test_cold_boot_finds_nothing_under_tsme(mode):
    """Scenario: with transparent SME even a plain VM's DRAM cells are ciphertext."""
    out = a02_cold_boot.run(mode, tsme=True)
    assert out.outcome == "failed", out.evidence
    assert "TSME" in out.evidence


def test_dump_evidence_names_where_the_secret_and_the_control_are():
    plain, sev = a01_dump.run("plain"), a01_dump.run("sev")
    assert re.search(r"the secret is in the dump at GPA 0x9000", plain.evidence)
    assert "no 16-byte window" in sev.evidence
    assert "HV-SHARED-MARKER at GPA" in sev.evidence   # the honest control leaks
    assert sev.findings["control"] is True and sev.findings["seen"] == [{"what": "the dump", "bytes": 16 << 20}]


def test_controlled_channel_prints_the_recovered_secret():
    out = a14_page_faults.run("sev")
    assert out.outcome == "succeeded"
    assert re.search(r"the branch pages spell 0x[0-9a-f]{16} \(the bytes hex [0-9a-f]{16}\); "
                     r"the 64 recovered bits are the secret's$", out.evidence), out.evidence
    assert out.findings["recovered_bits"] == 64


def test_cli_list_run_and_matrix_json(monkeypatch):
    runner = CliRunner()
    listed = json.loads(runner.invoke(attack, ["list", "--json"]).output)
    assert [a["attack"] for a in listed["attacks"]][:3] == ["A01", "A02", "A03"]
    r = runner.invoke(attack, ["run", "A16", "--sev", "--json"])
    assert r.exit_code == 0 and json.loads(r.output)["outcome"] == "failed"
    assert runner.invoke(attack, ["run", "A99"]).exit_code == 2
    from hv.attacks import registry
    from hv.attacks import a03_dma, a16_debug_policy
    monkeypatch.setattr(registry, "ATTACKS", (a03_dma, a16_debug_policy))
    monkeypatch.setattr(registry.run_matrix, "__defaults__", (("plain", "sev", "sev-es"), (a03_dma, a16_debug_policy), None))
    r = runner.invoke(attack, ["matrix", "--json"])
    cells = json.loads(r.stdout)["cells"]   # progress goes to stderr
    assert {(c["attack"], c["mode"]) for c in cells} >= {("A03", "plain"), ("A03", "sev"), ("A16", "sev")}
    assert all(set(c) == {"attack", "mode", "outcome", "evidence", "findings"} for c in cells)


def test_demo_explains_itself():
    r = CliRunner().invoke(demo, [])
    assert r.exit_code == 0, r.output
    assert "found the secret in plaintext" in r.output        # plain
    assert "no 16 bytes of the secret anywhere" in r.output     # SEV
    assert "shared marker is readable" in r.output              # the honest control
    assert "[sev-snp] the guest's secret is" in r.output        # released after attestation
    assert re.search(r"A07 SEVered \[sev-snp\]: failed", r.output), r.output
    assert re.search(r"A14 page-fault controlled channel \[sev-snp\]: succeeded", r.output), r.output
    # the SNP attestation step in the flow, then one table with the modes side by side
    assert "attestation: the guest sent its owner a signed report (launch digest" in r.output
    assert "verified, so it released the secret" in r.output
    assert "the SHA-256 of the secret it got: it matches" in r.output
    table = r.output[r.output.index("Side by side"):]
    for row in (r"plain\s+SEV\s+SEV-ES\s+SEV-SNP",
                r"secret in the dump\s+found\s+not found\s+not found\s+not found",
                r"shared page read\s+yes\s+yes\s+yes\s+yes",
                r"secret delivered\s+by hv\s+LAUNCH_SECRET\s+LAUNCH_SECRET\s+released",
                r"attestation report\s+-\s+-\s+-\s+verified",
                r"A04 registers\s+succeeded\s+succeeded\s+failed\s+failed",
                r"A07 remapping\s+succeeded\s+succeeded\s+succeeded\s+failed",
                r"A14 page faults\s+succeeded\s+succeeded\s+succeeded\s+succeeded"):
        assert re.search(row, table), (row, table)


@pytest.mark.parametrize("attack", [a05_replay, a07_severed, a09_sevurity], ids=lambda a: a.ID)
def test_snp_stops_the_integrity_attacks_in_the_rmp(attack):
    """Scenario: under SEV-SNP the replay, the remap and the block move each fail, and it is the
    reverse map table that stops them (a fault the evidence names), not some other breakage."""
    out = attack.run("sev-snp")
    assert out.outcome == "failed"
    assert "RMP" in out.evidence, out.evidence


def test_snp_launch_attacks_end_at_the_owner():
    """Scenario: a permuted or extended SNP launch runs, but the owner sees the digest in the
    report and releases nothing; the injected stub itself did run (the evidence says so)."""
    permuted = a13_undeserved.run("sev-snp")
    assert permuted.outcome == "failed" and "no secret" in permuted.evidence, permuted.evidence
    injected = a15_launch_injection.run("sev-snp")
    assert injected.outcome == "failed", injected.evidence
    assert "write faulted" in injected.evidence and " ran and no secret reached it" in injected.evidence


@pytest.mark.parametrize("mode,policy", [("sev", 0x0), ("sev-snp", 0x30000 | 1 << 19)])
def test_debug_policy_abuse_works_when_the_owner_allows_debugging(mode, policy):
    """Scenario: the same attack that fails under NODBG / DEBUG clear gets the secret when the
    policy allows debugging (the control that shows the failure is the policy's doing)."""
    out = a16_debug_policy.run(mode, policy=policy)
    assert out.outcome == "succeeded", out.evidence



def test_a_guest_looping_without_exits_ends_the_labs_run(monkeypatch):
    """Scenario: an attack makes the guest run code that loops without an exit (A15's stub
    decrypted to garbage can); the lab's run ends at its wall-clock limit instead of never."""
    from hv.attacks import lab as lab_module
    from hv.hw.addr import GPA

    monkeypatch.setattr(lab_module, "RUN_LIMIT", 0.5)
    with lab_module.Lab("service", "plain") as lab:
        lab.launch()
        lab.vm.write_gpa(GPA(lab.vmm.loaded.entry), b"\xeb\xfe")  # jmp $
        stop = lab.run()
    assert stop.reason == "stopped" and "still running after 0.5 s" in stop.detail
