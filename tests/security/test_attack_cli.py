"""The attack lab's command line: one mode per run, a legend for the primitive codes, the
matrix's progress on stderr, and shell completion. Attacks are stand-ins here where the test is
about the command line, not the attack."""

from __future__ import annotations

import json
import types

import pytest
from click.testing import CliRunner

from hv.attacks import ATTACKS, a04_registers, registry
from hv.attacks.cli import attack
from hv.attacks.outcome import Outcome
from hv.attacks.registry import PRIMITIVE_CODES
from hv.cli import main

pytestmark = pytest.mark.security


@pytest.fixture
def fake_a04(monkeypatch):
    """A04 that records the mode it was asked for instead of booting a guest."""
    asked = []

    def run(mode):
        asked.append(mode)
        return Outcome("A04", mode, "failed", f"stand-in run against {mode}")

    monkeypatch.setattr(a04_registers, "run", run)
    return asked


@pytest.mark.parametrize("flags", [["--sev-snp", "--sev-es"], ["--sev", "--sev-snp"],
                                   ["--sev-es", "--sev"], ["--sev", "--sev-es", "--sev-snp"]])
def test_run_refuses_two_modes(fake_a04, flags):
    """Scenario: `--sev-snp --sev-es` used to attack SEV-ES (the last flag won), a downgrade
    reported under the mode asked for; two modes are now bad usage, and nothing runs."""
    r = CliRunner().invoke(main, ["attack", "run", "A04", *flags])
    assert r.exit_code == 2, r.output
    assert "exclude each other" in r.output
    assert all(f in r.output for f in set(flags))
    assert fake_a04 == []
    assert CliRunner().invoke(attack, ["run", "A04", *flags]).exit_code == 2


@pytest.mark.parametrize("flags,mode", [([], "plain"), (["--sev"], "sev"), (["--sev-es"], "sev-es"),
                                        (["--sev-snp"], "sev-snp"), (["--sev-snp", "--sev-snp"], "sev-snp")])
def test_run_takes_one_mode(fake_a04, flags, mode):
    r = CliRunner().invoke(main, ["attack", "run", "a4", *flags, "--json"])
    assert r.exit_code == 0, r.output
    assert fake_a04 == [mode] and json.loads(r.output)["mode"] == mode


def test_every_primitive_code_is_explained():
    """Scenario: a newcomer sees `[T M]` or `[Phys R]` and finds each code in the legend of
    `hv attack list`, its --help and its --json."""
    used = {p for a in ATTACKS for p in a.PRIMITIVES}
    assert used == set(PRIMITIVE_CODES)
    runner = CliRunner()
    listed = runner.invoke(main, ["attack", "list"])
    helped = runner.invoke(main, ["attack", "list", "--help"])
    as_json = json.loads(runner.invoke(main, ["attack", "list", "--json"]).output)
    assert listed.exit_code == helped.exit_code == 0
    assert "[Phys R]" in listed.output and "[T M]" in listed.output
    for code, meaning in PRIMITIVE_CODES.items():
        line = f"  {code:<5} {meaning}"
        assert line in listed.output.splitlines()
        assert line in helped.output
    assert as_json["primitive_codes"] == PRIMITIVE_CODES


def _stand_in(attack_id: str, broken: str = ""):
    def run(mode):
        if mode == broken:
            return Outcome(attack_id, mode, "error", f"stand-in {mode}: the experiment broke")
        return Outcome(attack_id, mode, "n/a" if mode == "plain" else "failed", f"stand-in {mode}")

    return types.SimpleNamespace(ID=attack_id, NAME="stand-in", run=run)


def test_matrix_reports_progress_on_stderr_and_only_the_result_on_stdout(monkeypatch):
    """Scenario: the matrix runs for minutes; each cell says it is done on stderr as it ends
    (a line each when stderr is no terminal), and stdout stays clean JSON."""
    fakes = (_stand_in("A01"), _stand_in("A16"))
    monkeypatch.setattr(registry.run_matrix, "__defaults__", (("plain", "sev", "sev-snp"), fakes, None))
    r = CliRunner().invoke(attack, ["matrix", "--json"])
    assert r.exit_code == 0, r.output
    assert len(json.loads(r.stdout)["cells"]) == 6
    lines = r.stderr.splitlines()
    assert [ln.split(" (")[0] for ln in lines] == [
        "[1/6] A01 plain: n/a", "[2/6] A01 sev: failed", "[3/6] A01 sev-snp: failed",
        "[4/6] A16 plain: n/a", "[5/6] A16 sev: failed", "[6/6] A16 sev-snp: failed"]
    assert all(ln.endswith(" s)") for ln in lines)


def test_matrix_shows_an_error_cell_as_such_and_exits_1(monkeypatch):
    """Scenario: one experiment broke. Its cell says "error" in the table and in --json (never a
    verdict), every other cell is still there, and the status is 1 with one line on stderr."""
    fakes = (_stand_in("A01", broken="sev-snp"), _stand_in("A16"))
    monkeypatch.setattr(registry.run_matrix, "__defaults__", (("plain", "sev-snp"), fakes, None))
    r = CliRunner().invoke(attack, ["matrix"])
    assert r.exit_code == 1, r.output
    *cells, last = r.stderr.splitlines()
    assert [ln.split(" (")[0] for ln in cells] == [
        "[1/4] A01 plain: n/a", "[2/4] A01 sev-snp: error", "[3/4] A16 plain: n/a",
        "[4/4] A16 sev-snp: failed"]
    assert last == "hv attack matrix: no verdict (the experiment broke) in A01 sev-snp"
    assert "hv attack matrix" in r.stdout and "[1/4]" not in r.stdout
    row = next(ln for ln in r.stdout.splitlines() if ln.startswith("│ A01"))
    assert [c.strip() for c in row.split("│")[2:4]] == ["n/a", "error"], row
    assert "A01 sev-snp: stand-in sev-snp: the experiment broke" in r.stdout
    j = CliRunner().invoke(attack, ["matrix", "--json"])
    assert j.exit_code == 1
    cells = {(c["attack"], c["mode"]): c["outcome"] for c in json.loads(j.stdout)["cells"]}
    assert cells == {("A01", "plain"): "n/a", ("A01", "sev-snp"): "error",
                     ("A16", "plain"): "n/a", ("A16", "sev-snp"): "failed"}


def test_run_of_a_broken_experiment_says_error_and_exits_1(monkeypatch):
    """Scenario: `hv attack run` of an experiment that broke prints its error cell, then exits 1."""
    monkeypatch.setattr(a04_registers, "run", _stand_in("A04", broken="sev").run)
    r = CliRunner().invoke(main, ["attack", "run", "A04", "--sev", "--json"])
    assert r.exit_code == 1
    assert json.loads(r.stdout)["outcome"] == "error"
    assert r.stderr.strip() == "hv attack: A04 sev: the experiment broke, no verdict"


def test_shell_completion_script_and_completions():
    """Scenario: README's `eval "$(_HV_COMPLETE=bash_source hv)"` gets a script, and the script's
    callback completes commands and the attack's mode flags."""
    runner = CliRunner()
    script = runner.invoke(main, [], prog_name="hv", env={"_HV_COMPLETE": "bash_source"})
    assert script.exit_code == 0
    assert "_hv_completion()" in script.output and "-F _hv_completion hv" in script.output
    for shell in ("zsh_source", "fish_source"):
        assert "_HV_COMPLETE" in runner.invoke(main, [], prog_name="hv", env={"_HV_COMPLETE": shell}).output

    def complete(words: str) -> list[str]:
        r = runner.invoke(main, [], prog_name="hv", env={
            "_HV_COMPLETE": "bash_complete", "COMP_WORDS": words, "COMP_CWORD": str(len(words.split()) - 1)})
        return [ln.split(",", 1)[1] for ln in r.output.splitlines()]

    assert complete("hv att") == ["attack"]
    assert set(complete("hv attack run A04 --sev-")) == {"--sev-es", "--sev-snp"}
