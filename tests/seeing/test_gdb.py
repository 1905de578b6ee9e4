"""The machine's real gdb against `hv run --gdb`: break in the secret guest, read its registers
and a private variable. Plaintext when nothing protects the guest or its policy allows debugging,
ciphertext (and a warning) under the default NODBG policy; registers of an SEV-ES guest only
through DBG_DECRYPT of its save area."""

import json
import re
import shutil
import subprocess
import tempfile

import pytest

from seeing_support import DEFAULT_SECRET, SECRET, HvWithStub, symbol

GDB = shutil.which("gdb")
pytestmark = pytest.mark.skipif(GDB is None, reason="gdb is not installed: the stub is tested with the real debugger")


def gdb_session(port: int, *commands: str) -> str:
    args = [GDB, "-nx", "-batch", str(SECRET), "-ex", f"target remote 127.0.0.1:{port}"]
    for c in commands:
        args += ["-ex", c]
    # gdb runs outside the checkout: should it ever crash, its core file must not land in the tree.
    p = subprocess.run(args, capture_output=True, text=True, timeout=60, cwd=tempfile.gettempdir())
    return p.stdout + p.stderr


def static_copy_bytes(output: str) -> bytes:
    """The 32 bytes of `x/32xb &static_copy`, as gdb printed them."""
    hexes = re.findall(r"<static_copy(?:\+\d+)?>:((?:[ \t]+0x[0-9a-f]{2})+)", output)
    return bytes(int(h, 16) for line in hexes for h in line.split())


def register(output: str, name: str) -> int:
    return int(re.search(rf"^{name}\s+(0x[0-9a-f]+)", output, re.M).group(1), 16)


SESSION = ("break sha256", "continue", "info registers rip rsi", "x/32xb (char *)&static_copy", "detach")


def run_session(psp_state, tmp_path, *mode: str):
    trace = tmp_path / "trace.jsonl"
    hv = HvWithStub(SECRET, [*mode, "--trace", str(trace)], psp_state, tmp_path)
    out = gdb_session(hv.port, *SESSION)
    status, err = hv.finish()
    events = [json.loads(line) for line in trace.read_text().splitlines()]
    # The tracer and the stub share the VMM's exit hook: the stop is in the trace, the run ends.
    assert any(e["ev"] == "exit" and e["reason"] == "INTR" for e in events)
    assert events[-1]["ev"] == "end" and events[-1]["exit_reason"] == "exit"
    return out, status, err


@pytest.mark.parametrize("mode", [(), ("--sev", "--policy", "0")], ids=["plain", "sev-debug-policy"])
def test_break_read_registers_and_private_plaintext(psp_state, tmp_path, mode):
    out, status, err = run_session(psp_state, tmp_path, *mode)
    assert "Breakpoint 1, " in out and "in sha256 ()" in out, out
    assert register(out, "rip") == symbol(SECRET, "sha256")
    assert register(out, "rsi") == len(DEFAULT_SECRET)  # sha256(src, len): the hypervisor sees it
    assert static_copy_bytes(out) == DEFAULT_SECRET
    assert status == 0, err          # detached: the guest ran on to its end
    assert "NODBG" not in err


def test_default_policy_shows_ciphertext_with_a_warning(psp_state, tmp_path):
    out, status, err = run_session(psp_state, tmp_path, "--sev")
    assert register(out, "rip") == symbol(SECRET, "sha256")
    assert register(out, "rsi") == len(DEFAULT_SECRET)  # SEV leaves the registers in the open
    data = static_copy_bytes(out)
    assert len(data) == 32 and data != DEFAULT_SECRET and data != bytes(32)
    assert err.count("forbids debugging (NODBG)") == 1
    assert status == 0, err


def test_sev_es_registers_only_through_a_debug_policy(psp_state, tmp_path):
    out, status, err = run_session(psp_state, tmp_path, "--sev-es", "--policy", "0")
    assert register(out, "rip") == symbol(SECRET, "sha256")
    assert register(out, "rsi") == len(DEFAULT_SECRET)
    assert static_copy_bytes(out) == DEFAULT_SECRET
    assert status == 0, err

    out, status, err = run_session(psp_state, tmp_path, "--sev-es")
    assert register(out, "rip") == 0 and register(out, "rsi") == 0
    assert static_copy_bytes(out) != DEFAULT_SECRET
    assert "registers are hidden" in err
    assert status == 0, err


def test_sev_snp_debugging_through_snp_dbg_decrypt(psp_state, tmp_path):
    """SEV-SNP: the VMSA and private memory through SNP_DBG_DECRYPT when the policy has DEBUG
    (bit 19); without it, hidden registers and ciphertext."""
    out, status, err = run_session(psp_state, tmp_path, "--sev-snp", "--policy", "0xb0000")
    assert register(out, "rip") == symbol(SECRET, "sha256")
    assert register(out, "rsi") == len(DEFAULT_SECRET)
    assert static_copy_bytes(out) == DEFAULT_SECRET
    assert status == 0, err

    out, status, err = run_session(psp_state, tmp_path, "--sev-snp")
    assert register(out, "rip") == 0 and register(out, "rsi") == 0
    assert static_copy_bytes(out) != DEFAULT_SECRET
    assert "registers are hidden" in err
    assert status == 0, err


def test_step_and_kill(psp_state, tmp_path):
    hv = HvWithStub(SECRET, [], psp_state, tmp_path)
    out = gdb_session(hv.port, "break sha256", "continue", "stepi", "info registers rip", "kill")
    status, err = hv.finish()
    rip = register(out, "rip")
    assert symbol(SECRET, "sha256") < rip <= symbol(SECRET, "sha256") + 15  # one instruction on
    assert "terminated by the debugger" in err and status == 0
