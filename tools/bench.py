#!/usr/bin/env python3
"""hv's performance goals, measured side by side in one run.

The machines hv is developed on are small and shared, so an absolute time says little: another
job can halve it. What holds up is a *ratio* of two things measured close together. Every figure
here is therefore the median of per-round ratios, where a round runs each side once, back to
back, in an order that rotates from round to round (so neither side always goes first); the
spread (lowest and highest round) shows how much the machine disturbed the run. Absolute times
are printed for context only, never compared with a threshold.

  1 compute   encrypted vs plain guest, compute-bound loop (guests/compute.img), run phase only
  2 unicorn   hv (plain) vs bare Unicorn on the same loop (tools/bare_unicorn.py)
  3 memstress encrypted vs plain guest rewriting 16 MiB with an exit per page
  4 engine    AesEngine.encrypt_into on 64 MiB vs `openssl speed -evp aes-128-ecb`
  5 exit      one OUT -> UART -> resume round trip in hv vs Unicorn's bare stop-and-resume
  6 launch    LAUNCH_UPDATE_DATA of 64 MiB through the PSP vs 1 / (1/aes + 1/sha256), both
              from `openssl speed`: what encrypting and measuring the data in one pass at
              OpenSSL's speed would cost
  7 linux     `hv run` of Debian's kernel (build/linux/, `python tools/linux.py fetch`) to the
              busybox init's line and power-off vs QEMU TCG booting the same kernel, initrd and
              command line (hv's PLATFORM_CMDLINE and hv.init=poweroff), whole processes timed;
              without QEMU hv's time is reported alone (`--install-qemu` installs Debian's
              qemu-system-x86 with apt-get)
  8 linux-sev the same boot in `hv run --sev` vs `hv run` (plain),
  9           in `hv run --sev-es` vs plain, and
 10           in `hv run --sev-snp` vs plain: one bench (`--only linux-sev`) that boots plain, SEV,
              SEV-ES and SEV-SNP in every round, so the ratios share their plain boots; each boot
              counts only if the kernel's "Memory Encryption Features active" line names its mode

    python tools/bench.py            # full run, about twelve minutes (most of it rows 7 to 10)
    python tools/bench.py --quick    # fewer rounds
    python tools/bench.py --only linux --install-qemu   # the Linux boot alone, QEMU installed first
    python tools/bench.py --json     # JSON on stdout (the table goes to stderr)
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import math
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

TOOLS = Path(__file__).resolve().parent
REPO = TOOLS.parent
for _p in (str(REPO), str(TOOLS)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import numpy as np  # noqa: E402

import bare_unicorn  # noqa: E402
import linux as linux_tool  # noqa: E402
from hv import boot  # noqa: E402
from hv.hw.engine import AesEngine, KeySlotPort, TweakMode  # noqa: E402
from hv.kvm.sev import SevDevice, SevGuest  # noqa: E402
from hv.vmm.linux import PLATFORM_CMDLINE  # noqa: E402
from hv.vmm.vmm import Vmm, VmmConfig  # noqa: E402

__all__ = [
    "BenchError", "Goal", "Outcome", "Plan", "GOALS", "PLANS",
    "guest_run_seconds", "bare_run_seconds", "EngineBench", "LaunchBench",
    "openssl_throughput", "parse_openssl_mr", "hv_exit_seconds", "bare_exit_seconds",
    "launch_bound", "interleave", "summarize", "run_benchmarks", "format_table", "main",
    "linux_files", "hv_boot_command", "qemu_boot_command", "boot_seconds", "install_qemu",
    "LINUX_FEATURES", "encryption_features",
]

GUESTS = REPO / "guests"
MIB = 1 << 20
OPENSSL_BLOCK = 16384  # the column of `openssl speed` compared against: large buffers
LINUX_DIR = linux_tool.DEFAULT_OUT
QEMU = "qemu-system-x86_64"
QEMU_PACKAGE = "qemu-system-x86"  # the Debian package that holds qemu-system-x86_64
BOOT_TIMEOUT = 600.0  # seconds for one boot to power off (hv takes about 30 here)
# What the kernel says it found, by hv's mode: the rest of its line "Memory Encryption Features
# active: ..." (arch/x86/mm/mem_encrypt.c), which it prints only when it found any.
LINUX_FEATURES: dict[str, str | None] = {
    "plain": None, "sev": "AMD SEV", "sev-es": "AMD SEV SEV-ES",
    "sev-snp": "AMD SEV SEV-ES SEV-SNP"}
_FEATURES_LINE = re.compile(r"Memory Encryption Features active: ([^\r\n]*)")


class BenchError(RuntimeError):
    """A measurement could not be taken (a guest failed, openssl is missing ...)."""


# -- goals and plans ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Goal:
    key: str
    title: str
    ratio: str          # how the ratio is formed, for the table
    target: float
    higher_is_better: bool = True
    aim: float | None = None  # a further goal beyond the bound `target`, reported beside it

    def met(self, value: float, target: float | None = None) -> bool:
        target = self.target if target is None else target
        return value >= target if self.higher_is_better else value <= target

    @property
    def text(self) -> str:
        bound = f"{'>=' if self.higher_is_better else '<='} {self.target:g}"
        return bound if self.aim is None else f"{bound} (aim {self.aim:g})"


GOALS = {g.key: g for g in (
    Goal("compute", "compute loop, encrypted vs plain", "plain / sev time", 0.95),
    Goal("unicorn", "compute loop, hv plain vs bare Unicorn", "bare / hv time", 0.90),
    Goal("memstress", "memstress, encrypted vs plain", "plain / sev time", 0.50),
    Goal("engine", "engine xex-random vs openssl aes-128-ecb", "engine / openssl B/s", 0.25),
    Goal("exit", "exit round trip, hv vs bare stop+resume", "hv / bare per exit", 2.0,
         higher_is_better=False),
    Goal("launch", "LAUNCH_UPDATE_DATA vs aes+sha256 bound", "psp / bound B/s", 0.50),
    Goal("linux", "Linux boot to init and power-off, hv vs QEMU TCG", "hv / qemu time", 4.0,
         higher_is_better=False, aim=2.0),
    Goal("linux-sev", "Linux boot, hv under SEV vs plain", "sev / plain time", 1.25,
         higher_is_better=False, aim=1.1),
    Goal("linux-sev-es", "Linux boot, hv under SEV-ES vs plain", "sev-es / plain time", 2.0,
         higher_is_better=False),
    Goal("linux-sev-snp", "Linux boot, hv under SEV-SNP vs plain", "sev-snp / plain time", 2.0,
         higher_is_better=False),
)}


@dataclass(frozen=True)
class Plan:
    """How much work a run does: rounds per benchmark and sizes."""

    guest_rounds: int
    memstress_rounds: int
    crypto_rounds: int
    exit_rounds: int
    exits: int
    bulk_bytes: int = 64 * MIB
    openssl_seconds: int = 1
    window: float = 1.0  # seconds each engine / launch figure averages over, as openssl does
    linux_rounds: int = 2  # each a boot in hv and one in QEMU: about 35 s here
    linux_sev_rounds: int = 3  # each a plain, an SEV and an SEV-ES boot: about 2 minutes here


PLANS = {
    # The compute guest runs a quarter of a second: short enough for one burst of a neighbour to
    # skew a round, cheap enough to run many rounds.
    "quick": Plan(guest_rounds=5, memstress_rounds=1, crypto_rounds=2, exit_rounds=3, exits=5000,
                  window=0.3, linux_rounds=1, linux_sev_rounds=1),
    "full": Plan(guest_rounds=15, memstress_rounds=5, crypto_rounds=5, exit_rounds=7, exits=20000),
}


@dataclass
class Outcome:
    """One goal's result: per-round ratios and, for context, per-side absolute figures.

    No ratios and a `note` saying why: the goal was not measured (its inputs are missing, or the
    side compared against is not installed); `samples` may still hold the side that ran.
    """

    goal: Goal
    ratios: list[float]
    context: dict[str, str] = field(default_factory=dict)
    samples: dict[str, list[float]] = field(default_factory=dict)  # raw per-round figures
    note: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.ratios) if self.ratios else math.nan

    @property
    def met(self) -> bool:
        return bool(self.ratios) and self.goal.met(self.median)

    @property
    def aim_met(self) -> bool | None:
        """Whether the further goal is met too (None: the goal has none, or was not measured)."""
        if self.goal.aim is None or not self.ratios:
            return None
        return self.goal.met(self.median, self.goal.aim)

    @property
    def goal_in_spread(self) -> bool:
        """The goal lies between the worst and best round: the verdict could flip on a rerun."""
        return bool(self.ratios) and min(self.ratios) <= self.goal.target <= max(self.ratios)

    def to_json(self) -> dict:
        figures = (dict.fromkeys(("median", "min", "max", "met")) if not self.ratios else
                   {"median": round(self.median, 4), "min": round(min(self.ratios), 4),
                    "max": round(max(self.ratios), 4), "met": self.met})
        return {"key": self.goal.key, "title": self.goal.title, "ratio": self.goal.ratio,
                "goal": self.goal.text, **figures, "aim_met": self.aim_met,
                "ratios": [round(r, 4) for r in self.ratios], "note": self.note,
                "goal_in_spread": self.goal_in_spread, "context": self.context,
                "samples": {k: [float(f"{x:.6g}") for x in v] for k, v in self.samples.items()}}


# -- the measured sides -------------------------------------------------------------------------

_psp_dir: tempfile.TemporaryDirectory | None = None


def psp_state() -> str:
    """The PSP's non-volatile state file shared by every encrypted VM of this run.

    A PSP without one manufactures a new chip identity (two RSA-4096 keys, seconds) at every
    boot; one emulated chip for the whole run keeps that out of the bench's wall time. It never
    touches a timed phase either way.
    """
    global _psp_dir
    if _psp_dir is None:
        _psp_dir = tempfile.TemporaryDirectory(prefix="hv-bench-psp-")
    return os.path.join(_psp_dir.name, "psp-nv.json")


def guest_run_seconds(image: bytes, vm_type: str = "plain", mem_size: int = 64 * MIB,
                      check: Callable[[str], bool] | None = None) -> tuple[float, str]:
    """Seconds of one guest's run phase (after load or launch); returns (seconds, serial).

    The launch is excluded on purpose: it is measured separately (goal 6) and would otherwise
    hide what encryption costs while the guest runs.
    """
    vmm = Vmm(VmmConfig(image=image, vm_type=vm_type, mem_size=mem_size,
                        psp_state=None if vm_type == "plain" else psp_state()))
    try:
        vmm.load()
        result = vmm.run(load=False)
    finally:
        vmm.close()
    if result.exit_reason != "exit" or result.guest_exit_code != 0:
        raise BenchError(f"{vm_type} guest did not exit cleanly: {result.exit_reason} "
                         f"{result.guest_exit_code} {result.message}")
    if check is not None and not check(result.serial):
        raise BenchError(f"{vm_type} guest printed {result.serial!r}")
    return result.wall_time, result.serial


def bare_run_seconds(image: bytes, mem_size: int = 64 * MIB) -> tuple[float, str]:
    """Seconds of the same image on bare Unicorn (flat memory, trivial port hooks)."""
    guest = bare_unicorn.BareGuest(image, mem_size)
    seconds = guest.run()
    if guest.exit_code != 0:
        raise BenchError(f"bare Unicorn run ended with exit code {guest.exit_code}")
    return seconds, guest.serial.decode("utf-8", "replace")


def _rate_over(window: float, nbytes: int, once: Callable[[], None]) -> float:
    """Bytes per second of `once()` (which handles `nbytes`), repeated for at least `window` s.

    `openssl speed` averages over its whole run; averaging ours over a similar stretch lets a
    noisy neighbour disturb both sides alike instead of hitting one short call.
    """
    done = 0
    t0 = time.perf_counter()
    while True:
        once()
        done += nbytes
        elapsed = time.perf_counter() - t0
        if elapsed >= window:
            return done / elapsed


class EngineBench:
    """Bulk encryption through the engine with buffers allocated once, outside the timing.

    The first call also sizes the engine's own scratch buffers and fills its tweak cache for the
    range, so every timed call sees the steady state of pages moved again and again (a guest's
    working set); a page's first move after power-on also pays for computing its tweak.
    """

    def __init__(self, mode: TweakMode, nbytes: int, spa: int = 16 * MIB, window: float = 0.0):
        self.nbytes = nbytes
        self.window = window
        self.spa = spa
        self.engine = AesEngine(15, mode)
        KeySlotPort(self.engine).program_key(1, os.urandom(16))
        self.src = np.frombuffer(os.urandom(nbytes), dtype=np.uint8)
        self.dst = np.empty_like(self.src)
        self.engine.encrypt_into(1, spa, self.src, self.dst)

    def __call__(self) -> float:
        """Bytes per second of encrypt_into over the whole buffer."""
        return _rate_over(self.window, self.nbytes,
                          lambda: self.engine.encrypt_into(1, self.spa, self.src, self.dst))


class LaunchBench:
    """LAUNCH_UPDATE_DATA over a whole VM, as KVM issues it, after LAUNCH_START and ACTIVATE.

    One guest context is reused: each call re-encrypts and re-measures the same range (the
    guest stays in LUPDATE), which is the same work as a first pass over fresh plaintext. A
    first untimed pass touches every page, so the host's page faults on fresh memory are not
    counted as the PSP's time.
    """

    def __init__(self, nbytes: int, window: float = 0.0):
        self.window = window
        if nbytes <= 0 or nbytes % 4096:
            raise ValueError("LAUNCH_UPDATE_DATA is timed over whole pages")
        self.nbytes = nbytes
        image = (GUESTS / "hello.img").read_bytes()
        mem = max(nbytes, boot.MIN_MEM)
        self.vmm = Vmm(VmmConfig(image=image, vm_type="sev", mem_size=mem, psp_state=psp_state()))
        dev = SevDevice(self.vmm.kvm)
        dev.ensure_init(es=True)
        self.guest = SevGuest(self.vmm.vm, dev, policy=0x1)
        self.guest.launch_start()
        self.vmm.vm.write_gpa(0, os.urandom(min(nbytes, MIB)))
        self.guest.launch_update_data(0, nbytes)

    def __call__(self) -> float:
        """Bytes per second of LAUNCH_UPDATE_DATA over the VM's memory."""
        return _rate_over(self.window, self.nbytes,
                          lambda: self.guest.launch_update_data(0, self.nbytes))

    def close(self) -> None:
        self.vmm.close()


def parse_openssl_mr(text: str, block: int = OPENSSL_BLOCK) -> float:
    """Bytes per second for `block`-byte buffers from `openssl speed -mr` output.

    The machine-readable form has a header `+H:size:size...` and one `+F:n:name:v:v...` line per
    algorithm with bytes per second in the same column order.
    """
    sizes = None
    for line in text.splitlines():
        if line.startswith("+H:"):
            sizes = [int(s) for s in line[3:].split(":") if s]
        elif line.startswith("+F:") and sizes is not None:
            values = line.split(":")[3:]
            if block in sizes and len(values) >= len(sizes):
                return float(values[sizes.index(block)])
    raise BenchError(f"no {block}-byte figure in the openssl speed output")


def openssl_throughput(algorithm: str, seconds: int = 1, block: int = OPENSSL_BLOCK) -> float:
    """Bytes per second of `openssl speed -evp algorithm` on `block`-byte buffers, wall clock.

    -elapsed makes openssl divide by wall time, as every other figure here does.
    """
    exe = shutil.which("openssl")
    if exe is None:
        raise BenchError("openssl is not installed: the engine and launch goals need `openssl speed`")
    cmd = [exe, "speed", "-mr", "-elapsed", "-seconds", str(seconds), "-bytes", str(block),
           "-evp", algorithm]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds * 10 + 30)
    if p.returncode != 0:
        raise BenchError(f"{' '.join(cmd)} failed: {p.stderr.strip()[-200:]}")
    return parse_openssl_mr(p.stdout, block)


def launch_bound(aes: float, sha: float) -> float:
    """Throughput of encrypting and hashing every byte, one after the other, at these speeds."""
    return 1.0 / (1.0 / aes + 1.0 / sha)


def hv_exit_seconds(count: int) -> float:
    """Median seconds between consecutive exits of a guest doing nothing but UART writes.

    Timestamps are taken in hv's run loop (the on_exit seam), so each interval is one full round
    trip: exit to user space, the UART emulation, re-entry and the guest's next OUT.
    """
    image, _outs = bare_unicorn.exit_loop_image(count)
    stamps: list[float] = []
    clock = time.perf_counter
    vmm = Vmm(VmmConfig(image=image, on_exit=lambda _vmm, _e: stamps.append(clock())))
    try:
        vmm.load()
        result = vmm.run(load=False)
    finally:
        vmm.close()
    if result.guest_exit_code != 0 or len(result.serial) != count:
        raise BenchError(f"exit-loop guest: {result.exit_reason}, {len(result.serial)} bytes out")
    return _median_interval(stamps)


def bare_exit_seconds(count: int) -> float:
    """Median seconds between resumes of bare Unicorn stopping at every OUT of the same guest."""
    image, outs = bare_unicorn.exit_loop_image(count)
    guest = bare_unicorn.StopResumeGuest(image, outs)
    guest.run()
    if not guest.finished or guest.exits != count + 1:
        raise BenchError(f"bare stop-and-resume: {guest.exits} exits, finished: {guest.finished}")
    return _median_interval(guest.stamps)


def _median_interval(stamps: list[float]) -> float:
    if len(stamps) < 3:
        raise BenchError("too few exits to time")
    return statistics.median(b - a for a, b in zip(stamps, stamps[1:]))


def linux_files(linux_dir: Path = LINUX_DIR) -> tuple[Path, Path] | None:
    """The kernel and initrd `python tools/linux.py fetch` writes; None when either is missing."""
    kernel, initrd = linux_dir / "vmlinuz", linux_dir / "initrd.cpio.gz"
    return (kernel, initrd) if kernel.is_file() and initrd.is_file() else None


def hv_boot_command(kernel: Path, initrd: Path, mode: str = "plain") -> list[str]:
    """`hv run` to the init's power-off, console silenced: the summary (with the serial) as JSON.
    `mode` is a key of LINUX_FEATURES; an encrypted one adds its flag (--sev, --sev-es)."""
    flags = [] if mode == "plain" else [f"--{mode}"]
    return [sys.executable, "-m", "hv", "run", "--kernel", str(kernel), "--initrd", str(initrd),
            "--append", linux_tool.POWEROFF_PARAM, "-q", "--json", *flags]


def qemu_boot_command(qemu: str, kernel: Path, initrd: Path) -> list[str]:
    """QEMU TCG on the same kernel, initrd and command line as hv_boot_command: hv's platform
    options first, as hv puts them, then the user's."""
    return [qemu, "-accel", "tcg", "-m", "256M", "-nographic", "-no-reboot",
            "-kernel", str(kernel), "-initrd", str(initrd),
            "-append", f"{PLATFORM_CMDLINE} {linux_tool.POWEROFF_PARAM}"]


def encryption_features(console: str) -> str | None:
    """The memory encryption the kernel reports on its console ("AMD SEV" ...); None: none."""
    found = _FEATURES_LINE.search(console)
    return None if found is None else found.group(1).strip()


def boot_seconds(argv: list[str], what: str, console: Callable[[str], str] = lambda out: out,
                 timeout: float = BOOT_TIMEOUT, features: str | None = None) -> float:
    """Wall seconds of one boot, from starting the process to its exit (stdin: /dev/null).

    A boot counts only if the process exits with status 0 and its console (`console` takes it
    from the standard output) shows the init's line and, as the kernel's report of memory
    encryption, `features` (None: no report); anything else is a BenchError, never a time. The
    features check keeps an encrypted row from timing a boot that silently ran unencrypted.
    """
    t0 = time.perf_counter()
    try:
        p = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise BenchError(f"{what} did not power off within {timeout:.0f} s") from None
    seconds = time.perf_counter() - t0
    out = p.stdout.decode("utf-8", "replace")
    if p.returncode != 0:
        tail = (p.stderr.decode("utf-8", "replace").strip() or out.strip())[-300:]
        raise BenchError(f"{what} exited with status {p.returncode}: {tail}")
    try:
        text = console(out)
    except (ValueError, KeyError, TypeError) as e:
        raise BenchError(f"{what}: unreadable output ({e})") from None
    if linux_tool.INIT_MARKER not in text:
        raise BenchError(f"{what} exited without printing {linux_tool.INIT_MARKER!r}")
    found = encryption_features(text)
    if found != features:
        raise BenchError(f"{what}: the kernel reported memory encryption {found or 'none'}, "
                         f"expected {features or 'none'}")
    return seconds


def _hv_serial(out: str) -> str:
    return json.loads(out)["serial"]


def _hv_boot(hv_command: Callable[..., list[str]], kernel: Path, initrd: Path,
             mode: str = "plain") -> Callable[[], float]:
    """One interleaved side: a boot of `hv run` in `mode`, its kernel reporting that mode."""
    argv = hv_command(kernel, initrd, mode)
    what = "hv run" if mode == "plain" else f"hv run --{mode}"
    return lambda: boot_seconds(argv, what, _hv_serial, features=LINUX_FEATURES[mode])


def install_qemu(log: Callable[[str], None] = print) -> str:
    """Install Debian's qemu-system-x86 with apt-get (after apt-get update if the first attempt
    fails) unless QEMU is on PATH already; the path of qemu-system-x86_64."""
    found = shutil.which(QEMU)
    if found:
        return found
    apt = shutil.which("apt-get")
    if apt is None:
        raise BenchError(f"no apt-get here: install {QEMU} with the system's package manager")
    sudo = ["sudo"] if os.geteuid() != 0 and shutil.which("sudo") else []
    install = [*sudo, apt, "install", "-y", QEMU_PACKAGE]
    for attempt in ([install], [[*sudo, apt, "update"], install]):
        for cmd in attempt:
            log(" ".join(cmd))
            ok = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=sys.stderr).returncode == 0
            if not ok:
                break
        found = shutil.which(QEMU)
        if ok and found:
            return found
    raise BenchError(f"`{' '.join(install)}` did not install {QEMU}")


# -- rounds and ratios ----------------------------------------------------------------------------

def interleave(sides: dict[str, Callable[[], float]], rounds: int,
               progress: Callable[[str], None] | None = None) -> dict[str, list[float]]:
    """Run every side once per round, rotating the order; return each side's values by round.

    Garbage is collected before each call so one side's leftovers are not paid by the next.
    """
    names = list(sides)
    out: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            gc.collect()
            out[name].append(sides[name]())
            if progress is not None:
                progress(f"round {r + 1}/{rounds} {name}")
    return out


def summarize(goal: Goal, num: list[float], den: list[float], context: dict[str, str],
              samples: dict[str, list[float]] | None = None) -> Outcome:
    """Per-round ratios num[i] / den[i] against `goal`."""
    if len(num) != len(den) or not num:
        raise BenchError("ratios need the same, non-zero number of rounds on both sides")
    return Outcome(goal, [a / b for a, b in zip(num, den)], context, dict(samples or {}))


def _fmt_s(values: list[float]) -> str:
    v = statistics.median(values)
    return f"{v * 1e6:.1f} us" if v < 1e-3 else f"{v:.3f} s"


def _fmt_rate(values: list[float]) -> str:
    return f"{statistics.median(values) / 1e6:.0f} MB/s"


# -- the benchmarks -------------------------------------------------------------------------------

def bench_compute(plan: Plan, progress=None, image_path: Path = GUESTS / "compute.img",
                  expect: str = "compute: 0x") -> list[Outcome]:
    """Goals 1 and 2 share their plain runs: plain, sev and bare run in every round.

    All three must print the same line (starting with `expect`): the same instruction stream.
    """
    image = image_path.read_bytes()
    serials: set[str] = set()

    def side(fn):
        def run():
            seconds, serial = fn()
            serials.add(serial)
            return seconds
        return run

    times = interleave({
        "plain": side(lambda: guest_run_seconds(image, "plain")),
        "sev": side(lambda: guest_run_seconds(image, "sev")),
        "bare": side(lambda: bare_run_seconds(image)),
    }, plan.guest_rounds, progress)
    if len(serials) != 1 or not next(iter(serials)).startswith(expect):
        raise BenchError(f"{image_path.name} printed different results: {sorted(serials)}")
    ctx = {k: _fmt_s(v) for k, v in times.items()}
    return [summarize(GOALS["compute"], times["plain"], times["sev"], ctx, times),
            summarize(GOALS["unicorn"], times["bare"], times["plain"], ctx, times)]


def bench_memstress(plan: Plan, progress=None, image_path: Path = GUESTS / "memstress.img",
                    expect: str = "memstress: 0x") -> list[Outcome]:
    image = image_path.read_bytes()
    ok = (lambda s: s.startswith(expect))
    times = interleave({
        "plain": lambda: guest_run_seconds(image, "plain", 32 * MIB, ok)[0],
        "sev": lambda: guest_run_seconds(image, "sev", 32 * MIB, ok)[0],
    }, plan.memstress_rounds, progress)
    ctx = {k: _fmt_s(v) for k, v in times.items()}
    return [summarize(GOALS["memstress"], times["plain"], times["sev"], ctx, times)]


def bench_crypto(plan: Plan, progress=None) -> list[Outcome]:
    """Goals 4 and 6 share their `openssl speed -evp aes-128-ecb` rounds."""
    n = plan.bulk_bytes
    engines = {m.value: EngineBench(m, n, window=plan.window) for m in TweakMode}
    launch = LaunchBench(n, window=plan.window)
    try:
        sides: dict[str, Callable[[], float]] = {f"engine {k}": e for k, e in engines.items()}
        sides["openssl aes-128-ecb"] = lambda: openssl_throughput("aes-128-ecb", plan.openssl_seconds)
        sides["openssl sha256"] = lambda: openssl_throughput("sha256", plan.openssl_seconds)
        sides["launch_update_data"] = launch
        rates = interleave(sides, plan.crypto_rounds, progress)
    finally:
        launch.close()
    aes, sha = rates["openssl aes-128-ecb"], rates["openssl sha256"]
    bound = [launch_bound(a, s) for a, s in zip(aes, sha)]
    ctx = {k: _fmt_rate(v) for k, v in rates.items()}
    ctx["aes+sha256 bound"] = _fmt_rate(bound)
    engine_ctx = {k: v for k, v in ctx.items() if k.startswith(("engine", "openssl aes"))}
    for mode in ("xe-linear", "xex-linear"):
        ratios = [e / a for e, a in zip(rates[f"engine {mode}"], aes)]
        engine_ctx[f"{mode} / openssl"] = f"{statistics.median(ratios):.3f}"
    launch_ctx = {k: v for k, v in ctx.items() if not k.startswith("engine")}
    return [summarize(GOALS["engine"], rates["engine xex-random"], aes, engine_ctx, rates),
            summarize(GOALS["launch"], rates["launch_update_data"], bound, launch_ctx, rates)]


def bench_exit(plan: Plan, progress=None) -> list[Outcome]:
    times = interleave({
        "hv": lambda: hv_exit_seconds(plan.exits),
        "bare": lambda: bare_exit_seconds(plan.exits),
    }, plan.exit_rounds, progress)
    ctx = {f"{k} per exit": _fmt_s(v) for k, v in times.items()}
    return [summarize(GOALS["exit"], times["hv"], times["bare"], ctx, times)]


def _without_kernel(linux_dir: Path, *goals: Goal) -> list[Outcome]:
    """The Linux rows `goals`, not measured: the note says how to fetch the kernel."""
    where = linux_dir.relative_to(REPO) if linux_dir.is_relative_to(REPO) else linux_dir
    note = f"skipped: no vmlinuz and initrd.cpio.gz in {where} (python tools/linux.py fetch)"
    return [Outcome(goal, [], note=note) for goal in goals]


def bench_linux(plan: Plan, progress=None, linux_dir: Path = LINUX_DIR, qemu: str = QEMU,
                hv_command: Callable[..., list[str]] = hv_boot_command) -> list[Outcome]:
    """Goal 7: whole boots, hv then QEMU in turn. Not measured without the kernel (the note says
    how to fetch it); without QEMU, hv's boots alone are timed and the note says how to get it."""
    goal = GOALS["linux"]
    files = linux_files(linux_dir)
    if files is None:
        return _without_kernel(linux_dir, goal)
    kernel, initrd = files
    sides = {"hv": _hv_boot(hv_command, kernel, initrd)}
    exe = shutil.which(qemu)
    if exe is not None:
        sides["qemu"] = lambda: boot_seconds(qemu_boot_command(exe, kernel, initrd), "QEMU")
    times = interleave(sides, plan.linux_rounds, progress)
    ctx = {k: _fmt_s(v) for k, v in times.items()}
    if exe is None:
        return [Outcome(goal, [], ctx, times,
                        note=f"hv alone: {qemu} is not installed (python tools/bench.py "
                             f"--install-qemu, or apt-get install {QEMU_PACKAGE})")]
    return [summarize(goal, times["hv"], times["qemu"], ctx, times)]


def bench_linux_sev(plan: Plan, progress=None, linux_dir: Path = LINUX_DIR,
                    hv_command: Callable[..., list[str]] = hv_boot_command) -> list[Outcome]:
    """Goals 8 to 10: hv's plain, SEV, SEV-ES and SEV-SNP boots of the same kernel, initrd and
    command line in turn, the order rotating by round; the ratios are over the same plain
    boots. Skipped as goal 7 is without the kernel."""
    goals = GOALS["linux-sev"], GOALS["linux-sev-es"], GOALS["linux-sev-snp"]
    files = linux_files(linux_dir)
    if files is None:
        return _without_kernel(linux_dir, *goals)
    kernel, initrd = files
    sides = {mode: _hv_boot(hv_command, kernel, initrd, mode) for mode in LINUX_FEATURES}
    times = interleave(sides, plan.linux_sev_rounds, progress)
    ctx = {k: _fmt_s(v) for k, v in times.items()}
    return [summarize(goal, times[mode], times["plain"], {"plain": ctx["plain"], mode: ctx[mode]},
                      times)
            for goal, mode in zip(goals, ("sev", "sev-es", "sev-snp"))]


BENCHES = {"compute": bench_compute, "memstress": bench_memstress, "crypto": bench_crypto,
           "exit": bench_exit, "linux": bench_linux, "linux-sev": bench_linux_sev}


def run_benchmarks(plan: Plan, only: list[str] | None = None,
                   progress: Callable[[str], None] | None = None) -> list[Outcome]:
    outcomes: list[Outcome] = []
    for name, bench in BENCHES.items():
        if only and name not in only:
            continue
        if progress is not None:
            progress(f"{name} ...")
        outcomes += bench(plan, progress)
    order = list(GOALS)
    return sorted(outcomes, key=lambda o: order.index(o.goal.key))


# -- output ---------------------------------------------------------------------------------------

def format_table(outcomes: list[Outcome], header: str = "") -> str:
    rows = [("#", "measurement", "ratio", "median", "spread (min..max)", "goal", "verdict")]
    order = list(GOALS)
    for o in outcomes:
        number = str(order.index(o.goal.key) + 1)
        if not o.ratios:
            rows.append((number, o.goal.title, o.goal.ratio, "-", "-", o.goal.text, o.note))
            continue
        verdict = "met" if o.met else "NOT met"
        if o.met and o.aim_met is not None:  # the aim is the stricter goal
            verdict += f", aim {'met' if o.aim_met else 'not met'}"
        if o.goal_in_spread:
            verdict += " (goal within spread)"
        rows.append((number, o.goal.title, o.goal.ratio,
                     f"{o.median:.3f}", f"{min(o.ratios):.3f}..{max(o.ratios):.3f}",
                     o.goal.text, verdict))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [header] if header else []
    for i, r in enumerate(rows):
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.append("")
    lines.append("context (medians of absolute figures; informative only):")
    for o in outcomes:
        parts = ", ".join(f"{k} {v}" for k, v in o.context.items())
        if parts:
            lines.append(f"  {o.goal.key}: {parts}")
    return "\n".join(lines)


def _load_average() -> str:
    """The 1-minute load average: how busy the shared machine was, to read the spread by."""
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "unknown"


def machine_info() -> dict:
    info = {"python": platform.python_version(), "cpus": os.cpu_count(),
            "machine": platform.machine()}
    try:
        import unicorn
        info["unicorn"] = unicorn.__version__
    except Exception:  # pragma: no cover - unicorn is a hard dependency
        pass
    exe = shutil.which("openssl")
    if exe:
        info["openssl"] = subprocess.run([exe, "version"], capture_output=True, text=True).stdout.strip()
    exe = shutil.which(QEMU)
    if exe:
        out = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout
        info["qemu"] = out.strip().splitlines()[0] if out.strip() else "unknown"
    return info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Measure hv's performance goals as ratios in one run.")
    ap.add_argument("--quick", action="store_true",
                    help="fewer rounds (a few minutes, most of them the Linux boots)")
    ap.add_argument("--json", action="store_true", help="JSON on stdout, the table on stderr")
    ap.add_argument("--only", default="", help=f"comma-separated subset of {','.join(BENCHES)}")
    ap.add_argument("--rounds", type=int, default=None, help="override every round count")
    ap.add_argument("--install-qemu", action="store_true",
                    help=f"first install {QEMU_PACKAGE} with apt-get if {QEMU} is missing")
    args = ap.parse_args(argv)
    only = [s for s in args.only.split(",") if s]
    unknown = set(only) - set(BENCHES)
    if unknown:
        ap.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    mode = "quick" if args.quick else "full"
    plan = PLANS[mode]
    if args.rounds is not None:
        r = max(1, args.rounds)
        plan = dataclasses.replace(plan, guest_rounds=r, memstress_rounds=r, crypto_rounds=r,
                                   exit_rounds=r, linux_rounds=r, linux_sev_rounds=r)

    t0 = time.perf_counter()
    log = (lambda msg: print(f"[{time.perf_counter() - t0:6.1f} s] {msg}", file=sys.stderr))
    try:
        if args.install_qemu:
            install_qemu(log)
        outcomes = run_benchmarks(plan, only, log)
    except BenchError as e:
        print(f"bench: {e}", file=sys.stderr)
        return 1
    elapsed = time.perf_counter() - t0
    load = _load_average()
    header = (f"hv bench ({mode}): median of per-round ratios of interleaved runs, "
              f"{elapsed:.0f} s in all, load average {load} on {os.cpu_count()} CPUs")
    table = format_table(outcomes, header)
    if args.json:
        print(table, file=sys.stderr)
        print(json.dumps({"mode": mode, "seconds": round(elapsed, 1), "load_average": load,
                          "machine": machine_info(),
                          "results": [o.to_json() for o in outcomes]}, indent=2))
    else:
        print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
