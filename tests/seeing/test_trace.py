"""`hv run --trace`: every line is JSON, and its counts are the run's own `--json` summary; a run
without --trace installs no tracing at all."""

import json
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner

from hv.cli import main
from hv.vmm import Vmm, VmmConfig
from seeing_support import HELLO, SECRET


def traced_run(psp_state, tmp_path, image, *args):
    trace = tmp_path / "trace.jsonl"
    r = CliRunner(env={"HV_PSP_STATE": psp_state}).invoke(
        main, ["run", str(image), "--json", "--trace", str(trace), *args])
    summary = json.loads(r.stdout[r.stdout.index("{"):])
    events = [json.loads(line) for line in trace.read_text().splitlines()]  # each line parses
    return r, summary, events


@pytest.mark.parametrize("image,args", [(HELLO, ()), (HELLO, ("--sev",)), (SECRET, ("--sev",))],
                         ids=["plain", "sev", "sev-secret"])
def test_trace_counts_equal_the_summary(psp_state, tmp_path, image, args):
    r, summary, events = traced_run(psp_state, tmp_path, image, *args)
    assert r.exit_code == 0, r.output
    kinds = Counter(e["ev"] for e in events)
    exits = Counter(e["reason"] for e in events if e["ev"] == "exit")
    assert dict(exits) == summary["exits"]
    assert kinds["fill"] == summary["tlb_fills"] > 0
    assert kinds["decrypt"] == summary["pages_decrypted"]
    assert kinds["encrypt"] == summary["pages_encrypted"]
    assert events[-1] == {"ev": "end", "exit_reason": "exit", "exit_code": 0}
    if args:
        assert summary["pages_decrypted"] > 0
        cmds = [e["cmd"] for e in events if e["ev"] == "psp"]
        assert cmds.index("LAUNCH_START") < cmds.index("LAUNCH_MEASURE") < cmds.index("LAUNCH_FINISH")
        assert all(e["status"] == "SUCCESS" for e in events if e["ev"] == "psp")
        fills = [e for e in events if e["ev"] == "fill"]
        assert {e["asid"] for e in fills} == {summary["launch"]["asid"]}
        assert any(e["c_bit"] for e in fills) and {e["access"] for e in fills} >= {"fetch", "read", "write"}
    if image == SECRET:
        shared = [e for e in events if e["ev"] == "fill" and not e["c_bit"]]
        assert shared, "the secret guest's shared page is filled with C=0"


def test_instruction_trace(psp_state, tmp_path):
    r, summary, events = traced_run(psp_state, tmp_path, HELLO, "--trace-insn")
    insns = [e for e in events if e["ev"] == "insn"]
    assert insns[0]["rip"] == "0x100000" and insns[0]["text"]
    assert all(e["bytes"] for e in insns)


def test_instruction_trace_of_a_nodbg_guest_has_no_bytes(psp_state, tmp_path):
    r, summary, events = traced_run(psp_state, tmp_path, HELLO, "--sev", "--trace-insn")
    insns = [e for e in events if e["ev"] == "insn"]
    assert insns and all(e["bytes"] == "" and e["text"] is None for e in insns)
    assert "NODBG" in r.stderr


def test_no_trace_means_no_tracing_installed():
    vmm = Vmm(VmmConfig(image=HELLO.read_bytes()))
    vmm.run()
    cpu = vmm.vcpu._cpu
    assert cpu.trace is None and cpu._mc.trace is None


def test_trace_insn_needs_trace():
    r = CliRunner().invoke(main, ["run", str(HELLO), "--trace-insn"])
    assert r.exit_code == 2 and "--trace-insn needs --trace" in r.output
