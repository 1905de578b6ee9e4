"""A05: memory replay (Hetzelt & Buhren, VEE 2017).

SEV and SEV-ES encrypt without integrity or freshness: the ciphertext of a block depends only on
the key, the host physical address and the plaintext. A hypervisor that saves a page's
ciphertext and writes it back later makes the guest read the old value, cleanly decrypted. Here
the page holds the service's wrong-PIN counter: replaying it gives unlimited PIN guesses. Only
SEV-SNP's RMP (the owner alone may write a private page) stops it: the
hypervisor's write-back faults and changes nothing.
"""

from __future__ import annotations

from hv.attacks.lab import OP_CHECK_PIN, Lab, Request
from hv.attacks.outcome import Outcome
from hv.attacks.secrets import fresh_secret
from hv.kvm import RmpViolation

__all__ = ["ID", "NAME", "PAPER", "PRIMITIVES", "run"]

ID = "A05"
NAME = "memory replay"
PAPER = "Hetzelt & Buhren, Security Analysis of Encrypted Virtual Machines, VEE 2017"
PRIMITIVES = ("T", "X", "R", "W")

WRONG, LOCKED = 1, 2


def run(mode: str) -> Outcome:
    secret = fresh_secret()
    wrong_pin = int.from_bytes(secret[:4], "little") ^ 0x5A5A5A5A
    log: list[tuple[int, int]] = []
    refused: list[str] = []

    with Lab("service", mode, secret=secret) as lab:
        page = lab.symbols["pin_state"]

        def script():
            saved = lab.vm.read_gpa(page, 0x1000)           # the counter's ciphertext at t0
            for _ in range(2):
                r = yield Request(OP_CHECK_PIN, wrong_pin)
                log.append((r.status, r.value))
            try:
                lab.vm.write_gpa(page, saved)                # replay
            except RmpViolation as e:                        # SNP: only the guest writes its pages
                refused.append(str(e))
            for _ in range(3):
                r = yield Request(OP_CHECK_PIN, wrong_pin)
                log.append((r.status, r.value))

        lab.launch()
        lab.run(script())
    counts = ", ".join(f"{'locked' if s == LOCKED else v}" for s, v in log)
    replayed = log[2] == (WRONG, 1) and all(s == WRONG for s, _ in log)
    if replayed:
        return Outcome(ID, mode, "succeeded",
                       f"wrong-PIN counter after each try: {counts}; replaying the page's old "
                       f"ciphertext (GPA {page:#x}) reset it, 5 wrong PINs and no lockout")
    why = f"the write-back was refused ({refused[0]})" if refused else "the replay did not take"
    return Outcome(ID, mode, "failed", f"wrong-PIN counter after each try: {counts}; {why}")
