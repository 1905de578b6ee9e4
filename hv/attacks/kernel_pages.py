"""What a hypervisor can tell of a Linux guest's pages without its key, and when it looks.

A05 (replay) and A07 (SEVered) against a kernel need pages to act on, and the attacker has no
symbols (the lab's System.map is a placeholder) and, under SEV, no plaintext. What it has is
DRAM as its host port reads it (vm.read_gpa: every read is a coherence point, so what it reads is
current) and the guest's serial console, which its own UART emulates. From those:

- a page whose ciphertext changed between two looks was written in between (encryption is
  deterministic per host address), and one whose ciphertext then stayed is quiet: the guest is
  done with it for now, so acting on it is least likely to crash the boot;
- a page DRAM still holds as zeros was never written back, by the launch or the guest: memory the
  guest never used (the host gave it zeroed pages);
- a private page's ciphertext looks random (few zero bytes, no 16-byte block twice); a page the
  guest shares (its GHCB under SEV-ES, bounce buffers) holds its bytes as they are, which a
  replay or remap of them would prove nothing about. Under plain no page is ciphertext and the
  hypervisor knows it (it made the VM), so the test is skipped there.

The looks are timed by the console (Timeline): when the kernel starts its init ("Run /init as
init process"), at the init's first line and at its second (hv's initramfs: "hv-init: user
space is up", "hv-init: powering off"), then at every exit after that. Reading all of a 256 MiB
guest costs a few seconds, so the attacks read it whole at most twice and single pages after.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from hv.attacks.kernel_lab import KernelLab
from hv.hw.addr import GPA

__all__ = ["INIT_STARTS", "PAGE", "Timeline", "changed", "ciphertext_like", "never_written",
           "read_page", "read_pages"]

PAGE = 0x1000
INIT_STARTS = b"Run /init as init process"  # the kernel's line as it hands over to user space
_MOST_ZEROS = 64  # zero bytes in a page of random bytes: 16 expected, 64 is 12 deviations off


def read_pages(lab: KernelLab) -> np.ndarray:
    """All of guest RAM as DRAM holds it (ciphertext of private pages), one row per page."""
    return np.frombuffer(lab.vm.read_gpa(GPA(0), lab.mem_size), np.uint8).reshape(-1, PAGE)


def read_page(lab: KernelLab, page: int) -> np.ndarray:
    return np.frombuffer(lab.vm.read_gpa(GPA(page * PAGE), PAGE), np.uint8)


def changed(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per page: do the two looks differ?"""
    return (a != b).any(axis=1)


def never_written(pages: np.ndarray) -> np.ndarray:
    """Per page: still all zeros, as the host handed it over."""
    return np.logical_not(pages.any(axis=1))


def ciphertext_like(pages: np.ndarray) -> np.ndarray:
    """Per page: looks like ciphertext (few zero bytes, no 16-byte block twice)."""
    few_zeros = (pages == 0).sum(axis=1) < _MOST_ZEROS
    out = few_zeros.copy()
    for p in np.flatnonzero(few_zeros):
        blocks = pages[p].reshape(-1, 16)
        out[p] = len(np.unique(blocks, axis=0)) == len(blocks)
    return out


class Timeline:
    """An exit hook (KernelLab.run's on_exit) that calls `step(n)` at the exits the console
    times: n = 0 at the first exit after the kernel printed INIT_STARTS, 1 after the next line
    the console completed, 2 after the one after that, then 3, 4, ... at each following exit
    until `step` returns True (done)."""

    def __init__(self, lab: KernelLab, step: Callable[[int], bool]):
        self.lab = lab
        self.step = step
        self.exits = 0
        self.at: list[int] = []  # the exit number of each step taken
        self.done = False
        self._sent = 0           # console bytes taken in
        self._text = b""         # the console from INIT_STARTS on (before: its last bytes)
        self._start = -1         # where INIT_STARTS is in _text (-1: not printed yet)

    def run(self) -> str:
        """Boot the lab's kernel with this timeline at its exits: "" if it reached its power-off,
        else how it ended, in words."""
        result = self.lab.run(self)
        if result.exit_reason == "poweroff":
            return ""
        return f"the kernel did not power off: {result.exit_reason} {result.message}".rstrip()

    def __call__(self, _vmm) -> None:
        self.exits += 1
        if self.done:
            return
        n = len(self.at)
        if n < 3 and self._lines_after_start() < n:
            return
        self.at.append(self.exits)
        self.done = self.step(n)

    def _lines_after_start(self) -> int:
        """Lines the console completed after the one holding INIT_STARTS (-1: not yet)."""
        sent, tail = self.lab.console()
        if sent != self._sent:
            self._text += tail[len(tail) - min(sent - self._sent, len(tail)):]
            self._sent = sent
            if self._start < 0:
                self._start = self._text.find(INIT_STARTS)
                if self._start < 0:
                    self._text = self._text[-len(INIT_STARTS):]  # a cue cut in two still matches
        if self._start < 0:
            return -1
        return self._text.count(b"\n", self._start) - 1
