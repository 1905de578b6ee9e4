#!/usr/bin/env python3
"""Run a guest image on bare Unicorn: the baseline hv's own overhead is measured against.

No MMU of ours, no nested paging, no memory controller, no exits: guest memory is mapped flat
(guest-virtual = guest-physical, Unicorn's own paging off, its default TLB), the image segments
and the boot information page are copied in, and trivial IN/OUT hooks answer the UART's status
register, collect what the guest prints and stop at the exit port. The guest therefore executes
the same instruction stream as under `hv run` (apart from the few CPUID/MSR answers at start-up),
so the time of this run is what Unicorn alone costs for it.

A second baseline, `StopResumeGuest`, is Unicorn's own exit path: a code hook on each OUT that
moves RIP past it and stops emulation, and a Python loop that resumes. That is the least any exit
can cost in a hypervisor built on Unicorn, and hv's exit round trip is reported as a multiple of
it (tools/bench.py, goal 5).

    python tools/bare_unicorn.py guests/compute.img [--mem 64M]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from unicorn import UC_ARCH_X86, UC_HOOK_CODE, UC_HOOK_INSN, UC_MODE_64, UC_PROT_ALL, Uc
from unicorn import x86_const as X

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from hv import boot  # noqa: E402  (image parsing and the boot ABI, pure functions)

__all__ = ["BareGuest", "StopResumeGuest", "exit_loop_image", "EXIT_PORT", "UART_PORT", "main"]

UART_PORT = 0x3F8
UART_LSR = UART_PORT + 5
LSR_THRE_TEMT = 0x60  # transmitter empty: the guest's putc never waits
EXIT_PORT = 0x501
UNTIL = 1 << 63  # never reached; emulation ends only by emu_stop


class BareGuest:
    """One guest image on a fresh Unicorn, ready to `run()`; setup is kept out of the timing."""

    def __init__(self, image: bytes, mem_size: int = 64 << 20):
        self.loaded = boot.parse_image(image, mem_size)
        self.serial = bytearray()
        self.exit_code: int | None = None
        self.uc = _flat_machine(image, mem_size, self.loaded.entry)
        self.uc.hook_add(UC_HOOK_INSN, self._on_in, None, 1, 0, X.UC_X86_INS_IN)
        self.uc.hook_add(UC_HOOK_INSN, self._on_out, None, 1, 0, X.UC_X86_INS_OUT)

    def _on_in(self, _uc, port, _size, _user):
        return LSR_THRE_TEMT if port == UART_LSR else 0

    def _on_out(self, uc, port, _size, value, _user):
        if port == UART_PORT:
            self.serial.append(value & 0xFF)
        elif port == EXIT_PORT:
            self.exit_code = value
            uc.emu_stop()

    def run(self) -> float:
        """Run to the guest's exit; return the seconds spent inside Unicorn."""
        t0 = time.perf_counter()
        self.uc.emu_start(self.loaded.entry, UNTIL)
        return time.perf_counter() - t0


class StopResumeGuest:
    """Unicorn's bare exit path: stop at every OUT and resume from Python, nothing more.

    A code hook on each OUT moves RIP past it and calls emu_stop; `run()` restarts emulation at
    the address the hook left, until the OUT to the exit port. The hook reads no register: the
    port and value are the VMM's business, and what is measured here is only what Unicorn
    itself charges to leave and re-enter emulation. Timestamps of the resumes give the
    per-exit cost.
    """

    def __init__(self, image: bytes, out_addrs: dict[int, int], mem_size: int = 64 << 20,
                 exit_addr: int | None = None):
        self.loaded = boot.parse_image(image, mem_size)
        self.finished = False  # the OUT at exit_addr (the exit port) was reached
        self.exits = 0
        self.stamps: list[float] = []
        self.uc = _flat_machine(image, mem_size, self.loaded.entry)
        self._lengths = out_addrs
        self._exit_addr = max(out_addrs) if exit_addr is None else exit_addr
        self._resume = self.loaded.entry
        for addr in out_addrs:
            self.uc.hook_add(UC_HOOK_CODE, self._on_out, None, addr, addr)

    def _on_out(self, uc, addr, _size, _user):
        self.exits += 1
        if addr == self._exit_addr:
            self.finished = True
        self._resume = addr + self._lengths[addr]
        uc.reg_write(X.UC_X86_REG_RIP, self._resume)
        uc.emu_stop()

    def run(self) -> float:
        """Stop and resume at every OUT until the exit OUT; return the total seconds."""
        stamp = self.stamps.append
        clock = time.perf_counter
        t0 = clock()
        while not self.finished:
            self.uc.emu_start(self._resume, UNTIL)
            stamp(clock())
        return clock() - t0


def _flat_machine(image: bytes, mem_size: int, entry: int) -> Uc:
    """Unicorn in 64-bit mode with guest memory identity-mapped and the guest loaded at entry."""
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.mem_map(0, mem_size, UC_PROT_ALL)
    for gpa, data in boot.image_regions(image, mem_size):
        uc.mem_write(gpa, data)
    uc.mem_write(boot.BOOT_INFO_GPA, boot.boot_info(mem_size, 0))
    uc.reg_write(X.UC_X86_REG_RSP, boot.BOOT_STACK_TOP)
    uc.reg_write(X.UC_X86_REG_RSI, boot.BOOT_INFO_GPA)
    uc.reg_write(X.UC_X86_REG_RIP, entry)
    return uc


# The exit-loop guest: `count` writes of one byte to the UART data port, then exit status 0.
#   mov ecx, count; mov dx, 0x3f8; mov al, 'x'
#   1: out dx, al; dec ecx; jnz 1b
#   xor eax, eax; mov dx, 0x501; out dx, eax; hlt
_LOOP_OUT = 13  # offset of the `out dx, al` in the loop
_EXIT_OUT = 24  # offset of the `out dx, eax` at the end


def exit_loop_image(count: int) -> tuple[bytes, dict[int, int]]:
    """A flat guest that exits `count` times through the UART; returns (image, {OUT address: length}).

    Flat images load at IMAGE_BASE and need nothing from the boot ABI, so hv runs the same bytes
    in a plain VM and bare Unicorn runs them flat: only the exit path differs.
    """
    if not 1 <= count < 1 << 31:
        raise ValueError("count must be a positive 31-bit number")
    code = (b"\xb9" + count.to_bytes(4, "little")   # mov ecx, count
            + b"\x66\xba\xf8\x03"                   # mov dx, 0x3f8
            + b"\xb0\x78"                           # mov al, 'x'
            + b"\x90\x90"                           # padding: the loop starts at offset 13
            + b"\xee"                               # out dx, al
            + b"\xff\xc9"                           # dec ecx
            + b"\x75\xfb"                           # jnz -5 (to the out)
            + b"\x31\xc0"                           # xor eax, eax
            + b"\x66\xba\x01\x05"                   # mov dx, 0x501
            + b"\xef"                               # out dx, eax
            + b"\xf4")                              # hlt
    assert code[_LOOP_OUT] == 0xEE and code[_EXIT_OUT] == 0xEF
    base = boot.IMAGE_BASE
    return code, {base + _LOOP_OUT: 1, base + _EXIT_OUT: 1}


def _size(text: str) -> int:
    units = {"K": 10, "M": 20, "G": 30}
    text = text.strip().upper()
    if text and text[-1] in units:
        return int(text[:-1]) << units[text[-1]]
    return int(text, 0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Run a guest image on bare Unicorn (flat memory, no hv).")
    ap.add_argument("image", type=Path)
    ap.add_argument("--mem", type=_size, default=64 << 20, help="guest memory (default 64M)")
    args = ap.parse_args(argv)
    guest = BareGuest(args.image.read_bytes(), args.mem)
    seconds = guest.run()
    sys.stdout.write(guest.serial.decode("utf-8", "replace"))
    print(f"[bare unicorn: exit {guest.exit_code}, {seconds:.3f} s]", file=sys.stderr)
    return 0 if guest.exit_code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
