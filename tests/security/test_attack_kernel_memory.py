"""A05 (replay) and A07 (SEVered) against a kernel, without booting Linux: the judge decides from
the core's own plaintext at the attack's checkpoints, never from the attack's claim; the console
times the attacks' looks; what the hypervisor tells from ciphertext alone. The judges run over
test_attack_kernel's tiny kernel (its one exit is its power-off), plain, where the hypervisor's
host writes are the plaintext the core computes on, so each rule can be shown both ways. The
real boots, SEV against SEV-SNP, are in the Linux tier (tests/linux_boot/test_attack_kernel.py).
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from hv.attacks import a07_severed
from hv.attacks.findings import Findings
from hv.attacks.kernel_pages import INIT_STARTS, Timeline, changed, ciphertext_like, never_written
from hv.attacks.verdict import (RAN, REMAP, REPLAY, SAVED, KernelTrial, judge_kernel_remap,
                                judge_kernel_replay)
from hv.hw.addr import GPA
from tests.security.test_attack_kernel import tiny_kernel

pytestmark = pytest.mark.security

MEM = 32 << 20
X, Y = 0x1800000, 0x1801000  # pages the tiny kernel never touches
OLD, NEW, THIRD = (bytes([b]) * 0x1000 for b in (0x11, 0x22, 0x33))


def _experiment(at_exit):
    """Boot the tiny kernel (plain, 32 MiB) with X and Y holding OLD and NEW, and call
    `at_exit(lab)` at its one exit."""
    def run(trial: KernelTrial) -> Findings:
        lab = trial.lab(mem_size=MEM)
        lab.vm.write_gpa(GPA(X), OLD)
        lab.vm.write_gpa(GPA(Y), NEW)
        result = lab.run(lambda _vmm: at_exit(lab))
        return Findings("stand-in", completed=result.exit_reason == "poweroff")
    return run


def _replay(*writes: bytes, skip: str = ""):
    """At the exit: SAVED, then each write over X (the first plays the guest's, the rest the
    hypervisor's), REPLAY after the first, RAN after the last."""
    def at_exit(lab):
        lab.checkpoint(SAVED)
        for i, data in enumerate(writes):
            lab.vm.write_gpa(GPA(X), data)
            name = REPLAY if i == 0 else RAN
            if name != skip:
                lab.checkpoint(name, X)
    return _experiment(at_exit)


@pytest.mark.parametrize("writes,outcome,words", [
    ((NEW, OLD), "succeeded", "the guest ran on the plaintext of the save"),
    ((NEW, NEW), "failed", "the guest still held the newer plaintext"),
    ((NEW, THIRD), "error", "the guest rewrote GPA 0x1800000 before the judge looked again"),
    ((OLD, OLD), "error", "held the same plaintext at the save and at the replay"),
], ids=["rolled-back", "not-rolled-back", "rewritten", "nothing-to-show"])
def test_the_replay_judge_reads_the_page_in_the_core(writes, outcome, words):
    """Scenario: the replay took only if the page held its saved plaintext again after having
    held another; a page the guest rewrote or never changed gives no verdict."""
    out = judge_kernel_replay("A05", "plain", tiny_kernel(), _replay(*writes))
    assert out.outcome == outcome, out.evidence
    assert words in out.evidence
    if outcome != "error":
        assert "the judge hashed GPA 0x1800000's plaintext in the core at each checkpoint" in out.evidence


def test_the_replay_judge_needs_every_checkpoint():
    out = judge_kernel_replay("A05", "plain", tiny_kernel(), _replay(NEW, OLD, skip=RAN))
    assert out.outcome == "error" and "never reached its ran checkpoint" in out.evidence
    assert out.evidence.endswith("(the attack: stand-in)")


def _remap(write_x: bytes | None, x: int = X, y: int = Y):
    def at_exit(lab):
        lab.checkpoint(REMAP, x, y)
        if write_x is not None:
            lab.vm.write_gpa(GPA(x), write_x)
        lab.checkpoint(RAN, x, y)
    return _experiment(at_exit)


@pytest.mark.parametrize("write_x,outcome,words", [
    (NEW, "succeeded", "GPA 0x1800000 held GPA 0x1801000's plaintext"),
    (None, "failed", "GPA 0x1800000 still held its own plaintext"),
    (THIRD, "error", "the guest rewrote GPA 0x1800000"),
], ids=["remapped", "kept", "rewritten"])
def test_the_remap_judge_compares_the_two_pages_in_the_core(write_x, outcome, words):
    out = judge_kernel_remap("A07", "plain", tiny_kernel(), _remap(write_x))
    assert out.outcome == outcome, out.evidence
    assert words in out.evidence


def test_the_remap_judge_refuses_two_pages_it_cannot_tell_apart():
    both_unwritten = _remap(None, x=0x1802000, y=0x1803000)
    out = judge_kernel_remap("A07", "plain", tiny_kernel(), both_unwritten)
    assert out.outcome == "error" and "held the same plaintext" in out.evidence


def test_a07_against_a_plain_kernel_is_not_applicable():
    """Scenario: a plain kernel's memory is the hypervisor's to read; remapping it decrypts
    nothing, and the plain core follows no nested table: n/a, without a boot."""
    out = a07_severed.run_kernel("plain", tiny_kernel())
    assert out.outcome == "n/a" and "following no nested page table" in out.evidence


# -- what the hypervisor tells from ciphertext and its console ----------------------------------------------
def test_pages_are_told_apart_by_their_bytes_alone():
    rng = np.random.default_rng(7)
    pages = np.stack([np.frombuffer(os.urandom(0x1000), np.uint8),        # ciphertext
                      np.zeros(0x1000, np.uint8),                          # never written
                      np.frombuffer(b"kernel data\0\0\0\0\0" * 256, np.uint8),
                      np.tile(rng.integers(0, 256, 16, dtype=np.uint8), 256)])  # one block 256 times
    assert ciphertext_like(pages).tolist() == [True, False, False, False]
    assert never_written(pages).tolist() == [False, True, False, False]
    later = pages.copy()
    later[2, 5] ^= 1
    assert changed(pages, later).tolist() == [False, False, True, False]


class _Console:
    """A lab whose console the test writes; the UART keeps a 64-byte tail."""

    def __init__(self):
        self.out = b""

    def console(self) -> tuple[int, bytes]:
        return len(self.out), self.out[-64:]


def test_the_timeline_steps_at_the_init_and_its_first_two_lines_then_every_exit():
    lab = _Console()
    steps = Timeline(lab, lambda n: n == 4)
    feed = [b"[ 1.0] booting\n[ 2.0] Run /in", b"it as init process\n", b"", b"hv-init: user spa",
            b"ce is up\n", b"", b"hv-init: powering off\n", b"", b"", b"", b""]
    for chunk in feed:
        lab.out += chunk
        steps(None)
    # exit 2 saw the cue line (cut in two by the chunks); 5 the first line after it, 7 the second
    assert steps.at == [2, 5, 7, 8, 9] and steps.done
