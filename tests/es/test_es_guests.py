"""Every standalone sample guest boots under `hv run --sev-es` and prints what it prints under
--sev (sevcheck reports the mode it sees); `--json` carries the same launch fields."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from hv.cli import main as hv_main

GUESTS = Path(__file__).resolve().parents[2] / "guests"
# The guests that run to completion on their own (service waits for a driving hypervisor).
STANDALONE = ["hello", "sevcheck", "secret", "compute", "memstress"]


@pytest.fixture
def hv_run(psp_state):
    runner = CliRunner(env={"HV_PSP_STATE": psp_state})

    def run(image: str, *options: str):
        return runner.invoke(hv_main, ["run", str(GUESTS / f"{image}.img"), *options], catch_exceptions=False)

    return run


@pytest.mark.slow
@pytest.mark.parametrize("image", STANDALONE)
def test_serial_output_is_the_same_under_sev_es(hv_run, image):
    """Scenario: the guest library's #VC handler makes the guest oblivious to SEV-ES."""
    sev = hv_run(image, "--sev", "-q", "--json")
    es = hv_run(image, "--sev-es", "-q", "--json")
    assert sev.exit_code == 0 and es.exit_code == 0, (sev.output, es.output)
    sev_out, es_out = json.loads(sev.stdout), json.loads(es.stdout)
    if image == "sevcheck":
        assert es_out["serial"] == sev_out["serial"].replace("mode: sev\n", "mode: sev-es\n").replace(
            "sev_status: 0x1\n", "sev_status: 0x3\n")
        assert "mode: sev-es" in es_out["serial"].splitlines()
    else:
        assert es_out["serial"] == sev_out["serial"]
    assert es_out["launch"].keys() == sev_out["launch"].keys()
    assert es_out["launch"]["policy"] & 0x4 and not sev_out["launch"]["policy"] & 0x4
    assert es_out["launch"]["digest"] != sev_out["launch"]["digest"]


def test_the_hypervisor_sees_ghcb_io_not_registers(hv_run):
    """Scenario: under SEV-ES the exits user space sees are the same I/O exits as under SEV."""
    es = json.loads(hv_run("secret", "--sev-es", "-q", "--json").stdout)
    sev = json.loads(hv_run("secret", "--sev", "-q", "--json").stdout)
    assert es["exits"] == sev["exits"]
