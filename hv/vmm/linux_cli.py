"""`hv run --kernel BZIMAGE [--initrd FILE] [--append CMDLINE]`: the CLI side of Linux guests.

The console is the terminal: when stdin is one, it is put in raw mode so every key (Ctrl-C too)
goes to the guest's serial port, and Ctrl-A x ends the run (status 130), as in QEMU's
-nographic console. Input that is not a terminal (a pipe, a file) is fed to the serial port as
it comes; /dev/null gives none.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import termios
import tty
from pathlib import Path

import click

from hv.boot.bzimage import BzImageError
from hv.boot.linux import KERNEL_DEFAULT_MEM
from hv.kvm.mode import Mode
from hv.vmm.gdbstub import DebuggerKilled, GdbError, GdbStub
from hv.vmm.hostfiles import TraceSink
from hv.vmm.linux import KernelConfig, KernelVmm
from hv.vmm.vmm import EXIT_USAGE

__all__ = ["KERNEL_DEFAULT_MEM", "KERNEL_MODES", "refuse_with_kernel", "run_kernel"]

KERNEL_MODES = (Mode.PLAIN, Mode.SEV, Mode.SEV_ES, Mode.SEV_SNP)


def refuse_with_kernel(given: dict[str, object]) -> None:
    """One usage error naming the first option that does not work with --kernel yet."""
    for option, value in given.items():
        if value:
            raise click.UsageError(f"{option} does not work with --kernel yet (a kernel runs "
                                   "plain or with --sev, --sev-es or --sev-snp, with --mem, --append, --initrd, "
                                   "--timeout, --max-insns, -q, --json, --dump-dram, --trace, "
                                   "--gdb, --policy, --session and --owner-exec)")


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        click.echo(f"hv: cannot read the {what} {path}: {e.strerror}", err=True)
        sys.exit(EXIT_USAGE)


@contextlib.contextmanager
def _raw_terminal(fd: int):
    try:
        saved = termios.tcgetattr(fd)
    except termios.error:
        yield
        return
    tty.setraw(fd)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _input_fd() -> int | None:
    """stdin's descriptor, or None when there is none (closed, or not a real file)."""
    try:
        return sys.stdin.fileno() if sys.stdin is not None else None
    except (OSError, ValueError):  # io.UnsupportedOperation is both
        return None


def _writer(stream):
    def write(data: bytes) -> None:
        stream.write(data)
        stream.flush()
    return write


_HEX_FIELDS = ("rip", "cr2", "port", "value", "error_code")


def _tracer(sink: TraceSink):
    """JSON Lines, one event per line (docs/linux.md): addresses and values in hex."""
    def emit(ev: str, **fields) -> None:
        event: dict[str, object] = {"ev": ev}
        for key, value in fields.items():
            event[key] = f"{value:#x}" if key in _HEX_FIELDS and isinstance(value, int) else value
        sink.write(json.dumps(event) + "\n")
    return emit


def _warn(message: str) -> None:
    click.echo(f"hv: {message}", err=True)


def run_kernel(kernel: str, initrd: str | None, append: str, mem: int, timeout: float | None,
               max_insns: int | None, quiet: bool, sigint_stops, trace_file: str | None = None,
               gdb: str | None = None, gdb_wait: bool = False, mode: Mode = Mode.PLAIN,
               **launch):
    """Build and run the kernel VMM; BzImageError becomes one line and status 2. Returns the
    VMM and its RunResult (the caller reports, dumps and exits as for any guest)."""
    data = _read(kernel, "kernel")
    initrd_data = _read(initrd, "initrd") if initrd else None
    stdin_fd = _input_fd()
    interactive = stdin_fd is not None and os.isatty(stdin_fd)
    out = None if quiet else _writer(getattr(sys.stdout, "buffer", sys.stdout))
    config = KernelConfig(kernel=data, initrd=initrd_data, append=append, mem_size=mem,
                          timeout=timeout, max_insns=max_insns, serial_out=out, input_fd=stdin_fd,
                          kernel_name=Path(kernel).name, mode=mode, **launch)
    try:
        vmm = KernelVmm(config)
    except BzImageError as e:
        click.echo(f"hv: {kernel}: {e}", err=True)
        sys.exit(EXIT_USAGE)
    sink = TraceSink.open(trace_file) if trace_file else None
    if sink is not None:
        vmm.cpu.trace = _tracer(sink)
    stub = None
    vmm.running = True
    result = None
    try:
        vmm.load()
        if gdb:
            try:
                stub = GdbStub(vmm, gdb, _warn, wait=gdb_wait)
            except GdbError as e:
                raise click.UsageError(str(e)) from None
            vmm.debug_hook = stub.on_exit
            stub.listen()
            _warn(f"gdb stub listening on 127.0.0.1:{stub.port}")
            if gdb_wait:
                stub.wait_attach()
        with sigint_stops(vmm), (_raw_terminal(stdin_fd) if interactive else contextlib.nullcontext()):
            result = vmm.run(load=False)
    except DebuggerKilled as e:  # `k` in gdb: status 0, as QEMU's stub does
        _warn("terminated by the debugger")
        raise SystemExit(0) from e
    finally:
        vmm.running = False
        if stub is not None:
            stub.finish(result.exit_code if result else 0,
                        result is not None and result.exit_reason in ("panic", "shutdown"))
        if sink is not None:
            if result is not None:
                sink.write(json.dumps({"ev": "end", "exit_reason": result.exit_reason,
                                       "exit_code": result.exit_code}) + "\n")
            sink.close()
            if sink.error is not None:
                click.echo(f"hv: --trace {trace_file} is incomplete: {sink.error.strerror}", err=True)
    if interactive and out is not None:
        out(b"\r\n")
    return vmm, result
