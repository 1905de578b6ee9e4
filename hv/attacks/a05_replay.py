"""A05: memory replay (Hetzelt & Buhren, VEE 2017).

SEV and SEV-ES encrypt without integrity or freshness: the ciphertext of a block depends only on
the key, the host physical address and the plaintext. A hypervisor that saves a page's
ciphertext and writes it back later makes the guest read the old value, cleanly decrypted. Here
the page holds the service's wrong-PIN counter: replaying it gives unlimited PIN guesses. Only
SEV-SNP's RMP (the owner alone may write a private page) stops it: the
hypervisor's write-back faults and changes nothing.
"""

from __future__ import annotations

import os

from hv.attacks.findings import Findings
from hv.attacks.lab import OP_CHECK_PIN, Request
from hv.attacks.outcome import Outcome
from hv.attacks.verdict import Trial, judge
from hv.hw.addr import GPA
from hv.kvm import RmpViolation

__all__ = ["ID", "NAME", "PAPER", "PRIMITIVES", "TRIES", "run", "wrong_pin"]

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
