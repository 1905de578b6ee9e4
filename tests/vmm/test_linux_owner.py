"""`hv run --kernel K --sev|--sev-es --session S --owner-exec "python -m hv.owner.exec --kernel
..."`: the guest owner predicts the launch digest from the files it expects (kernel, initrd, the
command line after hv's own) and refuses any other launch. A refusal is status 3 and one line on
stderr, and the guest never runs; the owner expecting exactly this launch lets it go on.

The kernel is a synthetic bzImage whose code is INT3 bytes: with no IDT yet, its first
instruction ends the run at once with a triple fault (status 125, "shutdown"). `--trace` shows
whether the guest ran at all: a run writes its last event, "end", and under SEV the #BP at the
kernel's entry before it (an SEV-ES guest's exceptions are not the hypervisor's to see)."""

from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from hv.cli import main
from tests.boot.test_bzimage import synthetic

REPO = Path(__file__).resolve().parents[2]
POLICY = {"sev": "0x1", "sev-es": "0x5"}  # the launch's: the default NODBG, and ES with it
APPEND = "quiet"


@pytest.fixture
def files(tmp_path):
    """The launch's kernel, initrd and secret, and another kernel and initrd."""
    paths = {name: tmp_path / name for name in ("kernel", "other-kernel", "initrd", "other-initrd",
                                                 "secret")}
    paths["kernel"].write_bytes(bytes(synthetic()))
    paths["other-kernel"].write_bytes(bytes(synthetic(kernel_bytes=0x1000)))
    paths["initrd"].write_bytes(b"the initrd hv runs " * 64)
    paths["other-initrd"].write_bytes(b"the initrd the owner expects " * 64)
    paths["secret"].write_bytes(b"for this kernel only")
    return paths


@pytest.fixture
def hv(psp_state, tmp_path, monkeypatch):
    """hv(mode, owner options) -> (result, trace events): `hv run --kernel` of the launch's
    files under `mode` with an owner session made for it and `python -m hv.owner.exec` with
    `owner` options after --tk and --secret."""
    monkeypatch.setenv("PYTHONPATH", str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    runner = CliRunner(env={"HV_PSP_STATE": psp_state})
    certs = tmp_path / "certs"
    assert runner.invoke(main, ["psp", "export", "-o", str(certs)]).exit_code == 0
    sessions = {}
    for mode, policy in POLICY.items():
        sessions[mode] = tmp_path / f"session-{mode}"
        r = runner.invoke(main, ["owner", "session", str(certs / "pdh.cert"), "--policy", policy,
                                 "-o", str(sessions[mode])])
        assert r.exit_code == 0, r.output

    def run(mode: str, *owner: str, files):
        trace = tmp_path / f"trace-{mode}-{len(list(tmp_path.glob('trace-*')))}.jsonl"
        command = shlex.join([sys.executable, "-m", "hv.owner.exec", "--tk",
                              str(sessions[mode] / "tmp_tk.bin"), "--secret", str(files["secret"]),
                              *owner])
        result = runner.invoke(main, [
            "run", "--kernel", str(files["kernel"]), "--initrd", str(files["initrd"]),
            "--append", APPEND, f"--{mode}", "--session", str(sessions[mode]),
            "--owner-exec", command, "--timeout", "30", "--json", "-q", "--trace", str(trace)])
        events = [json.loads(line) for line in trace.read_text().splitlines()] if trace.exists() else []
        return result, events

    return run


@pytest.mark.parametrize("mode", ["sev", "sev-es"])
@pytest.mark.parametrize("expects", ["another kernel", "another initrd", "another append"])
def test_an_owner_expecting_another_launch_refuses_it_before_the_guest_runs(hv, files, mode, expects):
    """Scenario: the owner expects another kernel, another initrd or another --append; the
    measurement the PSP gives for this launch does not match, the owner refuses, and hv ends with
    status 3 and one line saying so: no summary, no trace event (the guest never ran)."""
    owner = {"kernel": files["kernel"], "initrd": files["initrd"], "append": APPEND}
    if expects == "another kernel":
        owner["kernel"] = files["other-kernel"]
    elif expects == "another initrd":
        owner["initrd"] = files["other-initrd"]
    else:
        owner["append"] = "quiet init=/bin/sh"
    result, events = hv(mode, "--kernel", str(owner["kernel"]), "--initrd", str(owner["initrd"]),
                        "--append", owner["append"], files=files)
    assert result.exit_code == 3, (result.exit_code, result.output, result.exception)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("hv: launch failed: the guest owner refused the launch: "), lines[0]
    assert "launch measurement does not match" in lines[0], lines[0]
    assert result.stdout == ""
    assert events == []


@pytest.mark.parametrize("mode", ["sev", "sev-es"])
def test_the_owner_expecting_this_launch_lets_it_go_on(hv, files, mode):
    """Scenario: the owner names exactly this kernel, initrd and --append (its default --mem is
    the kernel default, 256M, and without --policy it expects the SEV-ES digest of an ES launch):
    the launch finishes and the guest runs, to the synthetic kernel's triple fault at its entry."""
    result, events = hv(mode, "--kernel", str(files["kernel"]), "--initrd", str(files["initrd"]),
                        "--append", APPEND, files=files)
    assert result.exit_code == 125, (result.output, result.exception)
    summary = json.loads(result.stdout)
    assert summary["exit_reason"] == "shutdown" and "triple fault" in summary["message"]
    assert summary["launch"]["mode"] == mode and summary["launch"]["policy"] == int(POLICY[mode], 16)
    entry = 0x1000000 + 0x200  # pref_address + 0x200: the 64-bit entry
    end = {"ev": "end", "exit_reason": "shutdown", "exit_code": 125}
    if mode == "sev":
        assert events == [{"ev": "exception", "vector": 3, "rip": f"{entry + 1:#x}"}, end]  # a trap
    else:
        assert events == [end]
