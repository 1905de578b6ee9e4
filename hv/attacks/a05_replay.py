"""A05: memory replay (Hetzelt & Buhren, VEE 2017).

SEV and SEV-ES encrypt without integrity or freshness: the ciphertext of a block depends only on
the key, the host physical address and the plaintext. A hypervisor that saves a page's
ciphertext and writes it back later makes the guest read the old value, cleanly decrypted. Here
the page holds the service's wrong-PIN counter: replaying it gives unlimited PIN guesses. Only
SEV-SNP's RMP (the owner alone may write a private page) stops it: the
hypervisor's write-back faults and changes nothing.

Against a kernel (`run_kernel`, hv.attacks.kernel_lab) there is no counter to find without
symbols, so the replay is of whatever page the boot rewrote (hv.attacks.kernel_pages): the
hypervisor saves the ciphertext of all guest RAM when the kernel starts its init; at the init's
first console line it reads it again and keeps the pages whose ciphertext changed (written since)
and looks private; at the init's second line it keeps those unchanged since (quiet: rolling one
back is least likely to crash the boot) and writes the saved ciphertext back over the highest of
them. At the next exit, after the guest ran on it, it reads the page: if it still holds what was
written (the guest did not touch it), it writes the newer ciphertext back too, so the boot goes on
as it was and reaches its power-off (a real attacker would not care; the lab needs a finished run
to judge). The judge looks at the page's plaintext in the core at each of those exits
(hv.attacks.verdict.judge_kernel_replay). Plain: the write-back is plaintext the core computes on,
so the rollback trivially takes. SEV and SEV-ES: the guest decrypts the old ciphertext cleanly (no
integrity, no freshness). SEV-SNP: the host port refuses the write (RmpViolation).
"""

from __future__ import annotations

import os

import numpy as np

from hv.attacks.findings import Findings
from hv.attacks.kernel_lab import KernelFiles, KernelLab
from hv.attacks.kernel_pages import (PAGE, Timeline, changed, ciphertext_like, never_written,
                                     read_page, read_pages)
from hv.attacks.lab import OP_CHECK_PIN, Request
from hv.attacks.outcome import Outcome
from hv.attacks.verdict import RAN, REPLAY, SAVED, KernelTrial, Trial, judge, judge_kernel_replay
from hv.hw.addr import GPA
from hv.kvm import RmpViolation

__all__ = ["ID", "NAME", "PAPER", "PRIMITIVES", "TRIES", "run", "run_kernel", "wrong_pin"]

ID = "A05"
NAME = "memory replay"
PAPER = "Hetzelt & Buhren, Security Analysis of Encrypted Virtual Machines, VEE 2017"
PRIMITIVES = ("T", "X", "R", "W")

WRONG, LOCKED = 1, 2
TRIES = 5  # the guest locks after 3 wrong PINs (guests/service.c, MAX_TRIES)


def wrong_pin() -> int:
    """A PIN the hypervisor guesses: random, so wrong but for one chance in 2^32 (which the judge
    checks against the truth: a right guess voids the run)."""
    return int.from_bytes(os.urandom(4), "little")


def _attack(trial: Trial) -> Findings:
    pin = wrong_pin()
    log: list[tuple[int, int]] = []
    refused: list[str] = []

    with trial.lab("service") as lab:
        page = GPA(lab.symbols["pin_state"])  # the guest maps its image at GVA = GPA

        def script():
            saved = lab.vm.read_gpa(page, 0x1000)           # the counter's ciphertext at t0
            for _ in range(2):
                r = yield Request(OP_CHECK_PIN, pin)
                log.append((r.status, r.value))
            try:
                lab.vm.write_gpa(page, saved)                # replay
            except RmpViolation as e:                        # SNP: only the guest writes its pages
                refused.append(str(e))
            for _ in range(TRIES - 2):
                r = yield Request(OP_CHECK_PIN, pin)
                log.append((r.status, r.value))

        lab.launch()
        stop = lab.run(script())
    counts = ", ".join(f"{'locked' if s == LOCKED else v}" for s, v in log)
    replayed = len(log) == TRIES and log[2] == (WRONG, 1) and all(s == WRONG for s, _ in log)
    if replayed:
        story = (f"wrong-PIN counter after each try: {counts}; replaying the page's old "
                 f"ciphertext (GPA {page:#x}) reset it, {TRIES} wrong PINs and no lockout")
    else:
        why = f"the write-back was refused ({refused[0]})" if refused else "the replay did not take"
        story = f"wrong-PIN counter after each try: {counts or 'none'}; {why}"
    return Findings(story, achieved=replayed, completed=len(log) == TRIES and stop.reason == "exit",
                    defence=f"RMP: {refused[0]}" if refused else "",
                    guesses=(pin.to_bytes(4, "little"),))


def run(mode: str) -> Outcome:
    return judge(ID, mode, _attack)


class _KernelReplay:
    """The replay against a kernel, step by step (see the module's docstring)."""

    def __init__(self, lab: KernelLab):
        self.lab = lab
        self.timeline = Timeline(lab, self.step)  # the exit hook: calls step() when due
        self.saved: np.ndarray | None = None   # all of RAM's ciphertext at the save
        self.written: np.ndarray | None = None  # ... at the init's first line
        self.candidates: list[int] = []
        self.quiet = 0
        self.page: int | None = None
        self.newer = b""
        self.refused = ""
        self.restored = False

    def step(self, n: int) -> bool:
        lab = self.lab
        if n == 0:
            self.saved = read_pages(lab)
            lab.checkpoint(SAVED)
        elif n == 1:
            assert self.saved is not None
            self.written = now = read_pages(lab)
            mask = changed(self.saved, now) & ~never_written(self.saved)
            if lab.mode.encrypted:  # a shared page's bytes are the hypervisor's anyway
                mask &= ciphertext_like(self.saved) & ciphertext_like(now)
            self.candidates = np.flatnonzero(mask).tolist()
        elif n == 2:
            assert self.saved is not None and self.written is not None
            quiet = [p for p in self.candidates
                     if np.array_equal(read_page(lab, p), self.written[p])]
            self.quiet = len(quiet)
            if not quiet:
                return True
            self.page = page = quiet[-1]
            self.newer = self.written[page].tobytes()
            lab.checkpoint(REPLAY, page * PAGE)
            try:
                lab.vm.write_gpa(GPA(page * PAGE), self.saved[page].tobytes())
            except RmpViolation as e:   # SNP: only the guest writes its pages
                self.refused = str(e)
        else:
            assert self.saved is not None and self.page is not None
            lab.checkpoint(RAN, self.page * PAGE)
            if not self.refused and np.array_equal(read_page(lab, self.page), self.saved[self.page]):
                lab.vm.write_gpa(GPA(self.page * PAGE), self.newer)
                self.restored = True
            return True
        return False

    def story(self) -> str:
        if self.saved is None:
            return "the kernel never started its init: nothing was saved"
        # a plain guest's DRAM is its plaintext: the same steps, other words
        data, pages = ("ciphertext", "private pages") if self.lab.mode.encrypted else ("bytes", "pages")
        at = self.timeline.at
        head = (f"saved the {data} of the kernel's {self.saved.nbytes >> 20} MiB when it started its "
                f"init (exit {at[0]})")
        if len(at) < 3:
            return f"{head}; the init never printed two lines after that"
        if self.page is None:
            return (f"{head}; of the {len(self.candidates)} {pages} written by the init's first "
                    "line, none stayed quiet until its second: nothing to replay")
        head += (f"; at the init's second line (exit {at[2]}), of the {self.quiet} {pages} written "
                 f"by its first and quiet since, wrote the saved {data} back over the highest, "
                 f"GPA {self.page * PAGE:#x}")
        if self.refused:
            return f"{head}: refused ({self.refused})"
        return head + (f" and, an exit later, the newer {data} again" if self.restored else
                       "; the guest had rewritten it by the next exit")


def _attack_kernel(trial: KernelTrial) -> Findings:
    replay = _KernelReplay(trial.lab())
    ended = replay.timeline.run()
    return Findings("; ".join(filter(None, (replay.story(), ended))), completed=not ended,
                    defence=replay.refused)  # "RMP: host write to page ..." under SNP


def run_kernel(mode: str, files: KernelFiles) -> Outcome:
    return judge_kernel_replay(ID, mode, files, _attack_kernel)
