"""The guest owner's defaults match the hypervisor's, and --json answers on stdout even on failure.

A session made without --policy must open at LAUNCH_START of a plain `hv run --sev` (both default
to 0x1, NODBG), and `hv owner verify` without --policy must accept that launch's measurement."""

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from hv.cli import main

GUESTS = Path(__file__).resolve().parents[2] / "guests"


@pytest.fixture
def hv(psp_state, tmp_path):
    state = tmp_path / "psp.json"
    shutil.copy(psp_state, state)
    runner = CliRunner()

    def invoke(*args):
        return runner.invoke(main, [*map(str, args)], env={"HV_PSP_STATE": str(state)})
    return invoke


def test_session_run_and_verify_agree_without_any_policy(hv, tmp_path):
    """Scenario: the README's path with no --policy anywhere: session, run, verify."""
    certs, session = tmp_path / "certs", tmp_path / "session"
    assert hv("psp", "export", "-o", certs).exit_code == 0
    r = hv("owner", "session", certs / "pdh.cert", "-o", session, "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["policy"] == 0x1
    r = hv("run", GUESTS / "secret.img", "--sev", "--session", session, "-q", "--json")
    assert r.exit_code == 0, r.output  # LAUNCH_START took the session: the policies agree
    launch = json.loads(r.stdout)["launch"]
    assert launch["policy"] == 0x1
    r = hv("owner", "verify", "--tk", session / "tmp_tk.bin", "--image", GUESTS / "secret.img",
           "--measurement", launch["measurement"], "--mnonce", launch["mnonce"],
           "--api-major", launch["api_major"], "--api-minor", launch["api_minor"],
           "--build", launch["build"], "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["ok"] is True
    # The same measurement under the old default (policy 0) does not match: the default matters.
    r = hv("owner", "verify", "--tk", session / "tmp_tk.bin", "--image", GUESTS / "secret.img",
           "--measurement", launch["measurement"], "--mnonce", launch["mnonce"],
           "--api-major", launch["api_major"], "--api-minor", launch["api_minor"],
           "--build", launch["build"], "--policy", "0")
    assert r.exit_code == 1


def test_measure_defaults_to_the_run_policy(hv):
    image = GUESTS / "secret.img"
    default = hv("owner", "measure", image, "--json")
    assert default.exit_code == 0 and json.loads(default.stdout)["policy"] == 0x1
    assert default.stdout == hv("owner", "measure", image, "--policy", "0x1", "--json").stdout


def test_verify_report_json_on_a_rejected_report(hv, tmp_path):
    """Scenario: `verify-report --json` printed nothing on stdout when the report was rejected."""
    certs = tmp_path / "certs"
    assert hv("psp", "export", "-o", certs).exit_code == 0
    report = tmp_path / "report.bin"
    report.write_bytes(bytes(range(256)) * 4 + bytes(160))  # 1184 bytes that no VCEK signed
    r = hv("owner", "verify-report", report, "--chain", certs, "--json")
    assert r.exit_code == 1
    answer = json.loads(r.stdout)
    assert answer["ok"] is False and "REJECTED" in answer["error"]
    assert r.stderr.strip() == f"hv owner: {answer['error']}"


def test_bad_input_under_json_is_json_too(hv, tmp_path):
    r = hv("owner", "verify-report", tmp_path / "missing.bin", "--chain", tmp_path, "--json")
    assert r.exit_code == 2
    assert json.loads(r.stdout)["ok"] is False and len(r.stderr.strip().splitlines()) == 1


def test_a_failed_chain_prints_one_json_object(hv, tmp_path):
    """verify-chain reports each link itself before failing: no second object is added."""
    certs = tmp_path / "certs"
    assert hv("psp", "export", "-o", certs).exit_code == 0
    pdh = bytearray((certs / "pdh.cert").read_bytes())
    pdh[0x420] ^= 1  # in R of the PEK's signature (slot 1 at 0x414: usage, algo, R, S)
    (certs / "pdh.cert").write_bytes(bytes(pdh))
    r = hv("owner", "verify-chain", certs, "--json")
    assert r.exit_code == 1
    answer = json.loads(r.stdout)  # exactly one object: a second would not parse
    assert answer["ok"] is False and any(not link["ok"] for link in answer["links"])
