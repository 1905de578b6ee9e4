"""Ctrl-C (SIGINT) stops `hv run` at once with status 130, keeping what the guest wrote."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time

import pytest
from click.testing import CliRunner

from hv.cli import main
from hv.vmm import EXIT_INTERRUPTED, Vmm, VmmConfig


def _say(text: bytes) -> bytes:
    """mov dx, 0x3f8; mov al, c; out dx, al for each byte."""
    return b"".join(bytes.fromhex("66baf803") + bytes((0xB0, c)) + b"\xee" for c in text)


SPIN = _say(b"ready\n") + b"\xeb\xfe"  # then jmp $
POST_THEN_SPIN = (_say(b"ready\n")
                  + bytes.fromhex("b910270000" "e680" "ffc9" "75fa")  # 10000 x out 0x80, al
                  + b"\xeb\xfe")


def _hv_run(tmp_path, image: bytes, *args: str) -> subprocess.Popen:
    path = tmp_path / "guest.img"
    path.write_bytes(image)
    return subprocess.Popen([sys.executable, "-m", "hv", "run", str(path), *args], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _interrupt(p: subprocess.Popen) -> tuple[bytes, bytes, float]:
    t0 = time.monotonic()
    p.send_signal(signal.SIGINT)
    try:
        out, err = p.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate()
        pytest.fail("hv run was still running 20 s after SIGINT")
    return out, err, time.monotonic() - t0


def test_sigint_stops_a_spinning_guest_with_status_130(tmp_path):
    """Scenario: a guest prints a line and spins in `jmp $`; Ctrl-C ends hv at once."""
    p = _hv_run(tmp_path, SPIN)
    assert p.stdout.readline() == b"ready\n"
    out, err, took = _interrupt(p)
    assert p.returncode == EXIT_INTERRUPTED == 130, err
    assert took < 3, took
    assert out == b""  # nothing more, nothing lost: the line came before
    assert err.decode().splitlines() == ["hv: guest stopped: interrupted"]


def test_sigint_with_json_still_prints_the_summary(tmp_path):
    """Scenario: `hv run --json --trace` of a guest that makes 10000 exits, then spins; Ctrl-C
    once it runs (its trace has reached the file). The summary and the trace's end are written."""
    trace = tmp_path / "trace.jsonl"
    p = _hv_run(tmp_path, POST_THEN_SPIN, "--json", "--trace", str(trace))
    deadline = time.monotonic() + 60
    while not (trace.exists() and trace.stat().st_size):
        assert p.poll() is None and time.monotonic() < deadline, p.communicate()
        time.sleep(0.05)
    out, err, took = _interrupt(p)
    assert p.returncode == 130, err
    assert took < 3, took
    summary = json.loads(out)
    assert summary["exit_reason"] == "interrupted" and summary["exit_code"] == 130
    assert summary["serial"] == "ready\n" and summary["exits"]["INTR"] == 1
    end = json.loads(trace.read_text().splitlines()[-1])
    assert end == {"ev": "end", "exit_reason": "interrupted", "exit_code": 130}


def test_interrupt_from_another_thread_ends_the_run():
    """Scenario: a script running a guest through the Python API stops it from a thread."""
    ready = threading.Event()
    vmm = Vmm(VmmConfig(image=SPIN, timeout=30, serial_out=lambda b: b == b"\n" and ready.set()))
    stopper = threading.Thread(target=lambda: ready.wait(30) and vmm.interrupt())
    stopper.start()
    result = vmm.run()
    stopper.join()
    assert (result.exit_reason, result.exit_code, result.serial) == ("interrupted", 130, "ready\n")
    assert not vmm.running


def test_interrupt_before_the_run_stops_it_before_the_first_instruction():
    vmm = Vmm(VmmConfig(image=SPIN, timeout=30))
    vmm.interrupt()
    result = vmm.run()
    assert (result.exit_reason, result.exit_code, result.serial) == ("interrupted", 130, "")


def test_ctrl_c_while_loading_is_status_130(tmp_path, monkeypatch):
    """Scenario: Ctrl-C before the guest runs (Python code: KeyboardInterrupt) is one line, 130."""
    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(Vmm, "load", interrupted)
    path = tmp_path / "guest.img"
    path.write_bytes(SPIN)
    before = signal.getsignal(signal.SIGINT)  # Python's default, or SIG_IGN under a background job
    r = CliRunner().invoke(main, ["run", str(path)])
    assert r.exit_code == 130 and r.output == "hv: interrupted\n"
    assert signal.getsignal(signal.SIGINT) is before  # the handler hv put in place is gone
