"""The lab's judge: it alone holds the ground truth, and it alone decides an attack's outcome.

Each trial makes a fresh secret of random bytes, launches the guests that hold it, and hands the
attack a `Trial`: a way to launch those guests, never the secret. The attack returns Findings
(hv.attacks.findings); `verdict` compares them with the secret by fixed rules:

- a claim of recovered bytes counts only with at least 64 bits (MIN_BITS), and only if they are
  the secret's own leading bytes;
- raw material the hypervisor read wins if a 16-byte window of the secret, or the secret in hex
  (as the guests print it), is in it;
A kernel trial (judge_kernel) has a fixed ground truth instead: the marker file of the initramfs
it boots (/etc/hv-secret, tools/linux.py), which the judge reads from the initrd itself. A
register trial against a kernel (judge_kernel_registers, A04) has the guest's RIP, RSP and CR3 at
its last exit, which the judge reads from the core itself after the run (the hardware, not the
vCPU interface the hypervisor and the attack use). A trial against a kernel's memory
(judge_kernel_replay, A05; judge_kernel_remap, A07) has the guest's own plaintext: at each
checkpoint the attack names (KernelLab.checkpoint) the judge takes a digest of every page as the
core computes on it, and decides from those whether the effect the attack was after reached the
guest (the page it replayed held its old plaintext again after the guest ran on; the page it
remapped held the other page's plaintext), never from what the attack claims.

- a dump whose honest control is missing, a guest that did not finish without a defence that
  stopped it, an effect seen in a guest that did not finish, a "wrong" guess that was right by
  chance, and an exception out of the experiment are all `error` cells: no verdict at all, never
  a "failed" that would read as a defence.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Callable

from unicorn import x86_const as X

from hv.attacks.evidence import find_all, find_windows, hexs
from hv.attacks.findings import Findings
from hv.attacks.kernel_lab import KernelFiles, KernelLab
from hv.attacks.lab import Lab
from hv.attacks.outcome import Outcome
from hv.vmm.initramfs import SECRET_PATH, InitramfsError, initrd_file

__all__ = ["MIN_BITS", "RAN", "REGISTERS_AT_EXIT", "REMAP", "REPLAY", "SAVED", "SECRET_SIZE",
           "GroundTruth", "KernelTrial", "Trial", "judge", "judge_kernel", "judge_kernel_registers",
           "judge_kernel_remap", "judge_kernel_replay", "kernel_truth", "verdict"]

MIN_BITS = 64          # the fewest recovered bits the judge compares: a guess wins one time in 2^64
SECRET_SIZE = 32       # bytes of the guests' secret (guests/service.c's SECRET_LEN)
# judge_kernel_registers' ground truth: these registers at the kernel's last exit, 8 bytes each,
# little-endian, in this order (what an attack's recovered bytes are compared with).
REGISTERS_AT_EXIT = ("rip", "rsp", "cr3")
_CORE_IDS = {"rip": X.UC_X86_REG_RIP, "rsp": X.UC_X86_REG_RSP, "cr3": X.UC_X86_REG_CR3}
# The checkpoints of the kernel memory attacks (KernelLab.checkpoint): A05 saves the ciphertext
# (SAVED), is about to write it back over one page (REPLAY, its GPA) and looks at the next exit
# (RAN); A07 is about to remap page X onto page Y's host page (REMAP, X and Y) and looks at the
# next exit (RAN). REPLAY and REMAP come before the act: the judge sees the page as it was.
SAVED, REPLAY, REMAP, RAN = "saved", "replay", "remap", "ran"
_PAGE = 0x1000


class GroundTruth:
    """One trial's secret: random bytes, new each trial, seen by the judge and the guest only."""

    __slots__ = ("secret",)

    def __init__(self, secret: bytes | None = None):
        self.secret = os.urandom(SECRET_SIZE) if secret is None else bytes(secret)
        if len(self.secret) * 8 < MIN_BITS:
            raise ValueError(f"a ground truth of {len(self.secret) * 8} bits cannot be judged")


class Trial:
    """What an attack gets from the lab for one run: the mode, and guests that hold the secret.

    The secret goes from here into the guest launch (through the VMM, which plays the guest
    owner); the attack's code never reads it (tests/security/test_attack_boundaries.py)."""

    __slots__ = ("mode", "_truth")

    def __init__(self, mode: str, truth: GroundTruth):
        self.mode = mode
        self._truth = truth

    def lab(self, image: str, **options) -> Lab:
        """A Lab running `image` in this trial's mode, its secret the trial's (hv.attacks.lab)."""
        return Lab(image, self.mode, secret=self._truth.secret, **options)


class KernelTrial:
    """What an attack gets for one run against a kernel: the mode, and the kernel to boot. The
    marker it looks for is in the initrd, which goes to the VMM untouched; the attack's code
    never reads it out."""

    __slots__ = ("mode", "_files", "_booted")

    def __init__(self, mode: str, files: KernelFiles,
                 booted: Callable[[KernelLab], None] | None = None):
        self.mode = mode
        self._files = files
        self._booted = booted  # the judge's: told of every lab made (judge_kernel_registers)

    def lab(self, **options) -> KernelLab:
        """A KernelLab booting this trial's kernel in its mode (hv.attacks.kernel_lab)."""
        lab = KernelLab(self._files, self.mode, **options)
        if self._booted is not None:
            self._booted(lab)
        return lab


def kernel_truth(initrd: bytes) -> GroundTruth:
    """The initramfs's marker file as a ground truth; InitramfsError (one line) without it."""
    text = initrd_file(initrd, SECRET_PATH)
    if text is None:
        raise InitramfsError(f"the initrd holds no /{SECRET_PATH}, the file the lab looks for "
                             "(python tools/linux.py fetch builds one that does)")
    return GroundTruth(text)


def _broke(e: BaseException) -> str:
    words = " ".join(str(e).split()) or "no message"
    return f"the experiment broke: {type(e).__name__}: {words[:300]}"


def judge(attack_id: str, mode: str, experiment: Callable[[Trial], Findings],
          truth: GroundTruth | None = None) -> Outcome:
    """Run `experiment` as one trial and judge what it found against the trial's secret."""
    truth = truth or GroundTruth()
    return _judged(attack_id, mode, lambda: (experiment(Trial(mode, truth)), truth.secret))


def judge_kernel(attack_id: str, mode: str, files: KernelFiles,
                 experiment: Callable[[KernelTrial], Findings]) -> Outcome:
    """Run `experiment` against `files`' kernel and judge it against the initramfs's marker.
    An initrd without the marker raises InitramfsError before anything runs."""
    truth = kernel_truth(files.initrd)
    return _judged(attack_id, mode, lambda: (experiment(KernelTrial(mode, files)), truth.secret))


def judge_kernel_registers(attack_id: str, mode: str, files: KernelFiles,
                           experiment: Callable[[KernelTrial], Findings]) -> Outcome:
    """Run `experiment` against `files`' kernel and judge it against the guest's registers at its
    last exit (REGISTERS_AT_EXIT), read from the core after the run. The experiment boots one
    kernel, which must reach its init's power-off; anything else has no verdict."""
    booted: list[KernelLab] = []

    def trial() -> tuple[Findings, bytes]:
        found = experiment(KernelTrial(mode, files, booted.append))
        return found, _registers_at_last_exit(booted)

    return _judged(attack_id, mode, trial,
                   "the judge read RIP, RSP and CR3 from the core itself at that exit")


def _registers_at_last_exit(booted: list[KernelLab]) -> bytes:
    """RIP, RSP and CR3 as the core (hv.hw.oscpu) holds them where the run stopped: at its last
    exit, read below every view a hypervisor has (under SEV-ES the part keeps them in the
    encrypted VMSA, which only the CPU reads)."""
    if len(booted) != 1:
        raise RuntimeError(f"the experiment booted {len(booted)} kernels; the judge reads one's registers")
    lab = booted[0]
    if lab.result is None or lab.result.exit_reason != "poweroff":
        raise RuntimeError("the kernel did not run to its power-off, so its last exit is no fixed point")
    core = lab.vmm.cpu
    return b"".join(core.reg(_CORE_IDS[n]).to_bytes(8, "little") for n in REGISTERS_AT_EXIT)


class _Witness:
    """The judge's look at a kernel's memory at each checkpoint of one boot: a digest of every
    page as the core computes on it (its plaintext, below every view a hypervisor has)."""

    def __init__(self) -> None:
        self.seen: dict[str, tuple[tuple[int, ...], list[bytes]]] = {}

    def __call__(self, lab: KernelLab, name: str, gpas: tuple[int, ...]) -> None:
        ram = memoryview(lab.vmm.cpu.uc.mem_read(0, lab.mem_size))
        self.seen[name] = (gpas, [hashlib.blake2b(ram[a:a + _PAGE], digest_size=16).digest()
                                  for a in range(0, len(ram), _PAGE)])

    def gpas(self, *names: str) -> tuple[int, ...]:
        """The pages the attack named at the last of `names`; RuntimeError (no verdict) when it
        did not reach every one of them."""
        missing = [n for n in names if n not in self.seen]
        if missing:
            raise RuntimeError("the attack never reached its " + " and ".join(missing) + " checkpoint: "
                               "the judge has nothing to compare")
        return self.seen[names[-1]][0]

    def page(self, name: str, gpa: int) -> bytes:
        return self.seen[name][1][gpa // _PAGE]


def judge_kernel_replay(attack_id: str, mode: str, files: KernelFiles,
                        experiment: Callable[[KernelTrial], Findings]) -> Outcome:
    """A05 against a kernel: the effect is real if the page the attack wrote the saved
    ciphertext back to (REPLAY, named just before the write) held, once the guest ran on (RAN),
    the plaintext it held at the save (SAVED), having held another just before the write."""

    def rolled_back(w: _Witness) -> tuple[bool, str]:
        (gpa,) = w.gpas(SAVED, REPLAY)
        w.gpas(RAN)
        saved, before, after = (w.page(n, gpa) for n in (SAVED, REPLAY, RAN))
        if before == saved:
            raise RuntimeError(f"GPA {gpa:#x} held the same plaintext at the save and at the replay: "
                               "a rollback could not show")
        if after not in (saved, before):
            raise RuntimeError(f"the guest rewrote GPA {gpa:#x} before the judge looked again")
        where = f"the judge hashed GPA {gpa:#x}'s plaintext in the core at each checkpoint"
        if after == saved:
            return True, f"{where}: after the write-back the guest ran on the plaintext of the save"
        return False, f"{where}: after the write-back the guest still held the newer plaintext"

    return _judge_kernel_effect(attack_id, mode, files, experiment, rolled_back)


def judge_kernel_remap(attack_id: str, mode: str, files: KernelFiles,
                       experiment: Callable[[KernelTrial], Findings]) -> Outcome:
    """A07 against a kernel: the effect is real if guest page X, which the attack pointed at
    page Y's host page (REMAP: X, Y, named just before), held Y's plaintext once the guest ran
    on (RAN), the two having held different plaintexts before."""

    def remapped(w: _Witness) -> tuple[bool, str]:
        x, y = w.gpas(REMAP)
        w.gpas(RAN)
        own, wanted = w.page(REMAP, x), w.page(REMAP, y)
        if own == wanted:
            raise RuntimeError(f"GPAs {x:#x} and {y:#x} held the same plaintext: the judge could not "
                               "tell a remap")
        now = w.page(RAN, x)
        where = f"the judge hashed the plaintext of GPAs {x:#x} and {y:#x} in the core"
        if now in (wanted, w.page(RAN, y)):
            return True, f"{where}: once the guest ran on, GPA {x:#x} held GPA {y:#x}'s plaintext"
        if now == own:
            return False, f"{where}: once the guest ran on, GPA {x:#x} still held its own plaintext"
        raise RuntimeError(f"the guest rewrote GPA {x:#x} before the judge looked again")

    return _judge_kernel_effect(attack_id, mode, files, experiment, remapped)


def _judge_kernel_effect(attack_id: str, mode: str, files: KernelFiles,
                         experiment: Callable[[KernelTrial], Findings],
                         effect: Callable[[_Witness], tuple[bool, str]]) -> Outcome:
    """Run `experiment` against `files`' kernel with a witness on its one boot; `effect` reads
    the witness into whether the effect reached the guest, and the words for how the judge saw it."""
    witnesses: list[_Witness] = []
    how: list[str] = []

    def watch(lab: KernelLab) -> None:
        lab.witness = _Witness()
        witnesses.append(lab.witness)

    def trial() -> tuple[Findings, bytes]:
        found = experiment(KernelTrial(mode, files, watch))
        if found.na:
            return found, b""
        if len(witnesses) != 1:
            raise RuntimeError(f"the experiment booted {len(witnesses)} kernels; the judge watches one")
        try:
            took, words = effect(witnesses[0])
        except RuntimeError as e:  # no verdict: say what the attack did, then why
            raise RuntimeError(f"{e} (the attack: {found.story})" if found.story else str(e)) from e
        how.append(words)
        return dataclasses.replace(found, achieved=took), b""

    return _judged(attack_id, mode, trial, lambda: how[0] if how else "")


def _judged(attack_id: str, mode: str, experiment: Callable[[], tuple[Findings, bytes]],
            note: str | Callable[[], str] = "") -> Outcome:
    """Run `experiment` (its findings and the secret to judge them by) into one Outcome; `note`
    says where the judge's truth came from, when that is not the secret the trial made (a
    callable: known only once the experiment ran)."""
    try:
        found, secret = experiment()
    except Exception as e:  # noqa: BLE001 - any breakage becomes an error cell, in words
        return Outcome(attack_id, mode, "error", _broke(e))
    outcome, why = verdict(found, secret)
    note = note() if callable(note) else note
    why = f"{why} ({note})" if note else why
    evidence = f"{found.story}; {why}" if found.story else why
    return Outcome(attack_id, mode, outcome, evidence, found.to_json())


def _hits(data: bytes, secret: bytes) -> list[int]:
    return sorted(set(find_windows(data, secret)) | set(find_all(data, secret.hex().encode())))


def verdict(f: Findings, secret: bytes) -> tuple[str, str]:
    """(outcome, the judge's clause for the evidence line) for findings `f` against `secret`."""
    if f.na:
        return "n/a", f.na
    if any(g and secret.startswith(g) for g in f.guesses):
        return "error", "a guess offered as wrong was the secret by chance, so the run proves nothing"
    if f.control is False:
        return "error", "the honest control was not in what the hypervisor read: the read is broken, no verdict"
    bits = 8 * len(f.recovered)
    if f.recovered:
        if bits < MIN_BITS:
            return "error", f"only {bits} bits recovered; the judge compares at least {MIN_BITS}, no verdict"
        if secret.startswith(f.recovered):
            return "succeeded", f"the {bits} recovered bits are the secret's"
    for s in f.seen:
        hits = _hits(s.data, secret)
        if hits:
            return "succeeded", f"the secret is in {s.what} at {s.space} {hexs([s.base + h for h in hits])}"
    if f.achieved:
        if f.completed:
            return "succeeded", "the effect is real: the guest finished its run"
        return "error", "the effect was seen, but the guest did not finish its run: no verdict"
    if not f.completed and not f.defence:
        return "error", "the guest did not finish and no defence stopped the attack: the experiment broke"
    missed = []
    if f.recovered:
        missed.append(f"the {bits} recovered bits are not the secret's")
    if f.seen:
        missed.append(f"no 16-byte window of the {len(secret)}-byte secret in "
                      + " or ".join(s.what for s in f.seen))
    if f.achieved is False:
        missed.append("the effect did not happen")
    return "failed", "; ".join(missed) or "nothing of the secret reached the hypervisor"
