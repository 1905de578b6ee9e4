"""Debian's stock kernel under `hv run --kernel`: to the busybox init and power-off, a panic,
and the interactive shell through a pseudo-terminal (docs/linux.md)."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import shutil
import subprocess
import time

import pytest

from hv.vmm.linux import EXIT_PANIC, EXIT_REBOOT, PLATFORM_CMDLINE

pytestmark = [pytest.mark.linux, pytest.mark.slow]
BOOT_LIMIT = 240  # seconds; a boot takes about 30 here


def _run_json(hv_command, kernel_files, append: str, *extra: str) -> tuple[int, dict]:
    kernel, initrd = kernel_files
    proc = subprocess.run([*hv_command, "run", "--kernel", str(kernel), "--initrd", str(initrd),
                           "--append", append, "--json", "--timeout", str(BOOT_LIMIT), *extra],
                          stdin=subprocess.DEVNULL, capture_output=True, timeout=BOOT_LIMIT + 60)
    return proc.returncode, json.loads(proc.stdout)


def test_the_kernel_boots_to_init_and_powers_off(hv_command, kernel_files, tmp_path):
    trace = tmp_path / "trace.jsonl"
    status, summary = _run_json(hv_command, kernel_files, "hv.init=poweroff", "--trace", str(trace))
    serial = summary["serial"]
    assert status == 0 and summary["exit_reason"] == "poweroff", summary["message"]
    assert "Linux version 6.1." in serial
    assert "hv-init: user space is up" in serial and "hv-init: powering off" in serial
    assert serial.index("Run /init") < serial.index("hv-init: user space is up")
    launch = summary["launch"]
    assert launch["cmdline"] == f"{PLATFORM_CMDLINE} hv.init=poweroff"
    assert launch["platform_cmdline"] == PLATFORM_CMDLINE
    # A kernel lives on interrupts, page faults and system calls: none may be missing.
    assert launch["interrupts_injected"] > 50 and launch["page_faults"] > 50
    assert launch["syscalls"] > 50
    # The trace holds the same events, one per line, and the end.
    events = [json.loads(line) for line in trace.read_text().splitlines()]
    kinds = [e["ev"] for e in events]
    assert kinds.count("syscall") == launch["syscalls"]
    assert kinds.count("interrupt") == launch["interrupts_injected"]
    assert kinds.count("exception") == launch["exceptions"]
    assert {"ev": "io", "port": "0x3f8", "size": 1, "dir": "out", "value": hex(ord("h"))} in events
    assert events[-1] == {"ev": "end", "exit_reason": "poweroff", "exit_code": 0}


def test_a_kernel_without_an_init_panics_with_its_status(hv_command, kernel_files):
    status, summary = _run_json(hv_command, kernel_files, "rdinit=/no-such-init init=/no-such-init")
    assert status == EXIT_PANIC and summary["exit_reason"] == "panic"
    assert "Kernel panic - not syncing" in summary["serial"]
    assert "hv-init" not in summary["serial"]


def _read_until(fd: int, pattern: bytes, seen: bytearray, deadline: float) -> None:
    while not re.search(pattern, bytes(seen)):
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no {pattern!r} on the console; its end: {bytes(seen[-400:])!r}")
        ready, _, _ = select.select([fd], [], [], min(left, 1.0))
        if ready:
            try:
                seen += os.read(fd, 4096)
            except OSError:  # the terminal's other side closed: hv ended
                raise AssertionError(f"hv ended before {pattern!r}: {bytes(seen[-400:])!r}")


def test_the_interactive_shell_answers_through_a_pseudo_terminal(hv_command, kernel_files):
    kernel, initrd = kernel_files
    controller, terminal = pty.openpty()
    proc = subprocess.Popen([*hv_command, "run", "--kernel", str(kernel), "--initrd", str(initrd),
                             "--timeout", str(BOOT_LIMIT)],
                            stdin=terminal, stdout=terminal, stderr=subprocess.PIPE)
    os.close(terminal)
    seen = bytearray()
    deadline = time.monotonic() + BOOT_LIMIT
    try:
        _read_until(controller, rb"hv-init: user space is up", seen, deadline)
        _read_until(controller, rb"/ # ", seen, deadline)  # busybox sh's prompt
        os.write(controller, b"echo $((6 * 7))-answer\r")
        _read_until(controller, rb"42-answer", seen, deadline)
        os.write(controller, b"reboot -f\r")
        status = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(controller)
    assert status == EXIT_REBOOT, proc.stderr.read().decode()


@pytest.mark.skipif(shutil.which("gdb") is None, reason="gdb is not installed: the stub is tested with the real debugger")
def test_gdb_stops_at_the_entry_and_at_the_decompressed_kernel(hv_command, kernel_files, tmp_path):
    # With nokaslr the decompressor jumps to the kernel at its link-time physical address,
    # 16 MiB: a breakpoint there is the first instruction of the decompressed vmlinux.
    kernel, initrd = kernel_files
    proc = subprocess.Popen([*hv_command, "run", "--kernel", str(kernel), "--initrd", str(initrd),
                             "--append", "nokaslr", "-q", "--gdb", "tcp::0", "-S",
                             "--timeout", str(BOOT_LIMIT)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        line = proc.stderr.readline().decode()
        port = int(re.search(r"listening on 127\.0\.0\.1:(\d+)", line).group(1))
        gdb = subprocess.run(
            ["gdb", "-nx", "-batch", "-ex", f"target remote 127.0.0.1:{port}",
             "-ex", "info registers rip rsi", "-ex", "stepi", "-ex", "info registers rip",
             "-ex", "break *0x1000000", "-ex", "continue", "-ex", "info registers rip", "-ex", "kill"],
            capture_output=True, text=True, timeout=BOOT_LIMIT, cwd=tmp_path)
        status = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    rips = [int(v, 16) for v in re.findall(r"^rip\s+(0x[0-9a-f]+)", gdb.stdout, re.M)]
    assert rips[0] == 0x1000200, gdb.stdout + gdb.stderr  # the 64-bit entry: load address + 0x200
    assert re.search(r"^rsi\s+0x9000\b", gdb.stdout, re.M)  # boot_params
    assert rips[1] != rips[0]  # stepi ran one instruction
    assert rips[2] == 0x1000000 and "Breakpoint 1" in gdb.stdout
    assert status == 0  # killed by the debugger, as QEMU's stub ends


def test_memmap_maps_a_kernel_after_its_run(hv_command, kernel_files, tmp_path):
    kernel, initrd = kernel_files
    png = tmp_path / "map.png"
    proc = subprocess.run([*hv_command, "memmap", "--kernel", str(kernel), "--initrd", str(initrd),
                           "--append", "hv.init=poweroff", "--timeout", str(BOOT_LIMIT),
                           "-o", str(png), "--json"],
                          stdin=subprocess.DEVNULL, capture_output=True, timeout=BOOT_LIMIT + 60)
    out = json.loads(proc.stdout)
    assert proc.returncode == 0 and out["exit_reason"] == "poweroff"
    assert out["pages"] == 256 << 8 and out["counts"]["plain"] == out["pages"]  # 256 MiB, all mapped
    # The kernel's own text is data for the hypervisor too: a plain guest hides nothing.
    assert any(r["dram"] == r["guest"] != "const" for r in out["runs"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
