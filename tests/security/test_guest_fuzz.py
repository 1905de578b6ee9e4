"""The guest fuzzer: hostile guests against hv in every mode (plain, SEV, SEV-ES, SEV-SNP).

A guest is untrusted input to the hypervisor below it. Each example is a small flat image made of
random bytes and of random streams of the instructions a hypervisor has to intercept or a CPU has
to refuse: port I/O with and without prefixes, HLT, CPUID, RDMSR/WRMSR, VMMCALL, VMGEXIT,
PVALIDATE, MOV CR, LGDT/LIDT, INT n, UD2, memory operands that Unicorn decodes oddly (a SIB byte
without an index, 0x67), wild jumps, code written at run time and then executed, garbage written
into the live page tables, and garbage GHCB MSR requests. Every run must end with one of hv's
documented statuses (README "Exit status"): no Python exception, no hang past the run's timeout.

The default tier runs a fixed, derandomized budget (about a minute on two cores); set
HV_FUZZ_EXAMPLES=N to run N examples per mode instead (tests/security/README.md).
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, event, example, given, seed, settings
from hypothesis import strategies as st

import hv.vmm.vmm as vmm_module
from hv.hw.machine import Machine, MachineConfig
from hv.kvm import Kvm
from hv.vmm import Vmm, VmmConfig

MODES = ("plain", "sev", "sev-es", "sev-snp")
# Examples per mode in the default tier: an encrypted launch costs PSP time, a plain one little.
DEFAULT_EXAMPLES = {"plain": 200, "sev": 100, "sev-es": 100, "sev-snp": 100}
MEM = 4 << 20          # the smallest guest: less memory to launch, a short fall off the end
TIMEOUT = 0.3          # seconds of wall clock per guest: every run is bounded
RSS_BOUND_MB = 400     # peak RSS of one process running the batch below (README in this folder)
SECRET = b"guest-fuzz-secret"

STATUS = {  # exit_reason -> hv's documented status (None: the guest's own 0..255)
    "exit": None, "hlt": 0, "timeout": 124, "budget": 124,
    "shutdown": 125, "terminated": 125, "crash": 125,
}


def _examples(mode: str) -> int:
    wanted = os.environ.get("HV_FUZZ_EXAMPLES")
    return int(wanted) if wanted else DEFAULT_EXAMPLES[mode]


# -- the guests ------------------------------------------------------------------------------------
_REG = {"rax": 0, "rcx": 1, "rdx": 2, "rbx": 3, "rsp": 4, "rbp": 5, "rsi": 6, "rdi": 7}
_M64 = (1 << 64) - 1


def _mov(reg: str, value: int) -> bytes:
    """mov reg, imm64."""
    return bytes((0x48, 0xB8 + _REG[reg])) + struct.pack("<Q", value & _M64)


_EXIT = bytes.fromhex("b05a" "66ba0105" "ee")  # mov al, 0x5a; mov dx, 0x501; out dx, al

# Addresses a guest would aim at: the boot page tables, boot info (shared), the secret page, the
# stack, the image, the end of memory, unmapped and non-canonical addresses, the C-bit, the APIC.
_ADDRESSES = [0, 8, 0x1000, 0x1FF8, 0x2000, 0x3000, 0x3800, 0x4000, 0x8000, 0x8FF8, 0x9000,
              0xFFF8, 0x100000, 0x100FFC, MEM - 8, MEM - 1, MEM, MEM + 0x1000, 0xFEE00000,
              0xFFFFFFFF, 1 << 32, 1 << 47, (1 << 47) | 0x100000, 0x7FFFFFFFF000,
              0x800000000000, 0xFFFF800000000000, 0xFFFFFFFFFFFFFFF8, _M64]
addresses = st.sampled_from(_ADDRESSES) | st.integers(0, _M64)
values = st.sampled_from([0, 1, 0x5A, 0xFFFF, 0xFFFFFFFF, 1 << 63, _M64]) | st.integers(0, _M64)
_PORTS = [0x3F8, 0x3F9, 0x3FA, 0x3FB, 0x3FD, 0x3FF, 0x501, 0x502, 0x80, 0x0, 0xCF8, 0xFFFF]
ports = st.sampled_from(_PORTS) | st.integers(0, 0xFFFF)
_MSRS = [0xC0010130, 0xC0010131, 0xC0000080, 0x1B, 0x10, 0xC0000100, 0xC0000101, 0x277,
         0x8B, 0x3A, 0xC0010010, 0x40000000]
msrs = st.sampled_from(_MSRS) | st.integers(0, 0xFFFFFFFF)
# GHCB MSR protocol requests: the low 12 bits choose the request, the rest are its data.
_GHCB_REQS = [0x002, 0x004, 0x012, 0x014, 0x016, 0x080, 0x100, 0x0FF, 0xFFF]
_CODE_BYTES = [bytes.fromhex(h) for h in (
    "0f32", "0f30", "0fa2", "e680", "ec", "ee", "f4", "66f4", "0f01d9", "f30f01d9", "f20f01ff",
    "0f0b", "cd03", "0f22d8", "488b0463", "678b03", "f36e", "ebfe")]
prefixes = st.lists(st.sampled_from([0x66, 0x67, 0xF3, 0xF2, 0x48, 0x2E, 0x3E, 0x26, 0x64]),
                    max_size=3).map(bytes)


@st.composite
def _io(draw) -> bytes:
    op = draw(st.sampled_from([0xE4, 0xE5, 0xE6, 0xE7, 0xEC, 0xED, 0xEE, 0xEF,
                               0x6C, 0x6D, 0x6E, 0x6F]))
    setup = (bytes.fromhex("66ba") + struct.pack("<H", draw(ports)) + _mov("rax", draw(values))
             + _mov("rcx", draw(st.sampled_from([0, 1, 3, 0x1000]) | st.integers(0, _M64)))
             + _mov("rsi", draw(addresses)) + _mov("rdi", draw(addresses)))
    imm = bytes((draw(ports) & 0xFF,)) if op <= 0xE7 else b""
    return setup + draw(prefixes) + bytes((op,)) + imm


@st.composite
def _msr(draw) -> bytes:
    op = draw(st.sampled_from([b"\x0f\x32", b"\x0f\x30"]))
    return (_mov("rcx", draw(msrs)) + _mov("rax", draw(values)) + _mov("rdx", draw(values))
            + draw(prefixes) + op)


@st.composite
def _special(draw) -> bytes:
    """VMMCALL, VMGEXIT, PVALIDATE, RMPADJUST, CPUID, HLT with registers chosen to hurt."""
    op = draw(st.sampled_from(["0f01d9", "f30f01d9", "f20f01ff", "f30f01fe", "0fa2", "f4",
                               "66f4", "f3f4", "0f01c1", "0f01d8", "0f01da", "0f01dd"]))
    regs = b"".join(_mov(r, draw(addresses if r in ("rax", "rbx") else values))
                    for r in ("rax", "rbx", "rcx", "rdx"))
    return regs + bytes.fromhex(op)


@st.composite
def _system(draw) -> bytes:
    """MOV to and from control registers, LGDT/LIDT/SGDT/SIDT, INT n and friends, UD2."""
    kind = draw(st.sampled_from(["movcr", "readcr", "dt", "int", "ud2", "iret"]))
    if kind == "movcr":
        modrm = draw(st.sampled_from([0xC0, 0xD0, 0xD8, 0xE0]))  # cr0, cr2, cr3, cr4 <- rax
        rex = draw(st.sampled_from([b"", b"\x44"]))  # 44: cr8
        return _mov("rax", draw(addresses | values)) + rex + bytes((0x0F, 0x22, modrm))
    if kind == "readcr":
        return bytes((0x0F, 0x20, draw(st.sampled_from([0xC0, 0xD0, 0xD8, 0xE0, 0xF8, 0xC8]))))
    if kind == "dt":
        modrm = draw(st.sampled_from([0x00, 0x08, 0x10, 0x18]))  # sgdt sidt lgdt lidt [rax]
        return _mov("rax", draw(addresses)) + bytes((0x0F, 0x01, modrm))
    if kind == "int":
        return draw(st.sampled_from([b"\xcc", b"\xf1", b"\xce", b"\x0f\x05", b"\x0f\x34",
                                     b"\x0f\x07"]) | st.integers(0, 255).map(lambda n: bytes((0xCD, n))))
    if kind == "ud2":
        return b"\x0f\x0b"
    return _mov("rsp", draw(addresses)) + draw(st.sampled_from([b"\x48\xcf", b"\xc3", b"\xcb"]))


@st.composite
def _memory(draw) -> bytes:
    """Loads and stores through operands Unicorn decodes its own way, at hostile addresses."""
    op = draw(st.sampled_from([
        "488b0463", "48890463", "8b0423", "488b04e3", "48c704630100000000",  # SIB, no index
        "678b03", "678903", "67488b0463", "67f3a4", "f348a5", "8a03", "0fb703",
        "0f013b", "0fae3b", "f00fc103", "0fc70b"]))  # invlpg, clflush, lock xadd, cmpxchg16b
    return (_mov("rbx", draw(addresses)) + _mov("rsi", draw(addresses)) + _mov("rdi", draw(addresses))
            + _mov("rcx", draw(st.integers(0, 64) | values)) + bytes.fromhex(op))


@st.composite
def _jump(draw) -> bytes:
    op = draw(st.sampled_from(["ffe0", "ffd0", "50c3", "ff20"]))  # jmp rax, call rax, push+ret, jmp [rax]
    return _mov("rax", draw(addresses)) + bytes.fromhex(op)


@st.composite
def _self_modifying(draw) -> bytes:
    """Write 8 bytes just ahead of RIP (often an intercepted instruction), then run them."""
    code = draw(st.sampled_from(_CODE_BYTES) | st.binary(min_size=1, max_size=8))
    code = (code + b"\x90" * 8)[:8]
    store = b"\x48\x89\x05\x00\x00\x00\x00"  # mov [rip+0], rax: the 8 bytes after this store
    return _mov("rax", int.from_bytes(code, "little")) + store + b"\x90" * 8


@st.composite
def _page_tables(draw) -> bytes:
    """Garbage into a live page-table entry, a TLB flush, then an access through it."""
    entry = draw(st.sampled_from([0x1000, 0x2000, 0x3000 + 8 * 0x100, 0x3000 + 8 * 0xA,
                                  0x4000, 0x4008, 0x3000 + 8 * 0x8])
                 | st.integers(0x1000 // 8, 0x7FFF // 8).map(lambda i: i * 8))
    flush = draw(st.sampled_from(["0f20d90f22d9", "0f013a", ""]))  # reload CR3, invlpg [rdx]
    access = draw(st.sampled_from(["488b02", "488902", "ffd2"]))   # load, store, call rdx
    return (_mov("rbx", entry) + _mov("rax", draw(values)) + b"\x48\x89\x03"  # mov [rbx], rax
            + _mov("rdx", draw(addresses)) + bytes.fromhex(flush) + bytes.fromhex(access))


@st.composite
def _ghcb(draw) -> bytes:
    """The GHCB MSR: protocol requests with garbage data, or a GHCB page full of garbage."""
    if draw(st.booleans()):
        value = (draw(values) & ~0xFFF) | draw(st.sampled_from(_GHCB_REQS) | st.integers(0, 0xFFF))
        body = b""
    else:
        page = draw(st.sampled_from([0x8000, 0x9000, 0x100000, MEM, 0]) | addresses) & ~0xFFF
        value = page
        body = b"".join(_mov("rbx", 0x8000 + draw(st.integers(0, 0x1FF)) * 8) + _mov("rax", draw(values))
                        + b"\x48\x89\x03" for _ in range(draw(st.integers(0, 4))))
    return (body + _mov("rcx", 0xC0010130) + _mov("rax", value & 0xFFFFFFFF) + _mov("rdx", value >> 32)
            + b"\x0f\x30" + draw(st.sampled_from([b"\xf3\x0f\x01\xd9", b"\x0f\x01\xd9", b""])))


chunks = st.one_of(st.binary(min_size=1, max_size=24), _io(), _msr(), _special(), _system(),
                   _memory(), _jump(), _self_modifying(), _page_tables(), _ghcb())
tails = st.sampled_from([_EXIT, _EXIT, b"", b"\xf4", b"\xf4", b"", b"\x0f\x0b", b"\xeb\xfe"])

# The harness: an IDT whose every gate leads to one handler that resets RSP and jumps to the
# chunk after the one that faulted, so one guest explores a whole stream instead of dying at its
# first fault (it ends with HLT after FAULT_LIMIT faults). The IDT, the handler's data and its
# stack live in the image itself: the launch measures them and, under SEV-SNP, leaves their pages
# validated (the boot stack is not).
IMAGE = 0x100000
IDT = IMAGE + 0x1000
RESUME, FAULTS, IDTR = IMAGE + 0x2000, IMAGE + 0x2008, IMAGE + 0x2010
STACK_TOP = IMAGE + 0x4000
HANDLER = IMAGE + 5
FAULT_LIMIT = 64


def _moffs(op: int, address: int) -> bytes:
    """mov rax, [moffs64] (0xa1) or mov [moffs64], rax (0xa3)."""
    return bytes((0x48, op)) + struct.pack("<Q", address)


def _harnessed(parts: list[bytes], tail: bytes) -> bytes:
    handler = (_mov("rsp", STACK_TOP) + _moffs(0xA1, FAULTS) + b"\x48\xff\xc0" + _moffs(0xA3, FAULTS)
               + bytes((0x48, 0x83, 0xF8, FAULT_LIMIT)) + b"\x73\x0c"   # cmp rax, N; jae hlt
               + _moffs(0xA1, RESUME) + b"\xff\xe0" + b"\xf4")          # jmp [RESUME]; hlt
    setup = (_mov("rsp", STACK_TOP) + b"\x31\xc0" + _moffs(0xA3, FAULTS) + _mov("rdi", IDTR)
             + bytes.fromhex("66c707ff0f") + _mov("rax", IDT) + bytes.fromhex("48894702")
             + bytes.fromhex("0f011f"))                                 # lidt [rdi]
    code = bytearray(b"\xe9" + struct.pack("<i", len(handler)) + handler + setup)
    for part in parts:
        start = IMAGE + len(code) + 20 + len(part)   # where the next chunk begins
        code += _mov("rax", start) + _moffs(0xA3, RESUME) + part
    code += tail
    assert len(code) <= 0x1000, len(code)
    gate = (HANDLER & 0xFFFF | 0x08 << 16 | 0x8E << 40 | (HANDLER >> 16 & 0xFFFF) << 48).to_bytes(8, "little")
    return bytes(code.ljust(0x1000, b"\xf4")) + (gate + bytes(8)) * 256 + bytes(0x2000)


guests = st.one_of(
    st.builds(_harnessed, st.lists(chunks, min_size=1, max_size=12), tails),
    st.builds(lambda parts, tail: b"".join(parts) + tail, st.lists(chunks, min_size=1, max_size=4),
              tails),
).filter(lambda image: not image.startswith(b"\x7fELF"))  # flat guests: an ELF is parsed as one


# -- running them ----------------------------------------------------------------------------------
class Host:
    """One machine per mode for a whole batch, as one host runs guest after guest: a guest that
    leaves the machine unable to launch the next one fails the batch.

    hv's Vmm makes a Kvm per Vmm, each with its own host-memory allocator; two on one machine
    would hand out the same pages (the TMR among them), so the batch shares one Kvm per machine
    (one /dev/kvm per host)."""

    def __init__(self, mode: str, psp_state: str | None):
        self.mode = mode
        self.psp_state = psp_state
        self.machine = Machine(MachineConfig(dram_size=MEM + (8 << 20), psp_state=psp_state))
        self.kvm = Kvm(self.machine)

    def run(self, image: bytes):
        cfg = VmmConfig(image=image, mem_size=MEM, vm_type=self.mode, timeout=TIMEOUT,
                        psp_state=self.psp_state, secret=SECRET if self.mode != "plain" else None)
        saved, vmm_module.Kvm = vmm_module.Kvm, lambda machine: self.kvm
        try:
            vmm = Vmm(cfg, machine=self.machine)
        finally:
            vmm_module.Kvm = saved
        try:
            return vmm.run()
        finally:
            vmm.close()


def check(result, image: bytes) -> None:
    assert result.exit_reason in STATUS, (result.exit_reason, image.hex())
    want = STATUS[result.exit_reason]
    if want is None:
        assert 0 <= result.exit_code <= 255 and result.exit_code == result.guest_exit_code
    else:
        assert result.exit_code == want, (result.exit_reason, result.exit_code, image.hex())
    assert result.wall_time < TIMEOUT + 10, image.hex()  # the timeout held, with launch time


# Reproducers found by this fuzzer: (mode found in, guest bytes). Every mode runs each of them.
KNOWN = [
    # mov rbx, 0; ...; mov rax, [rbx+riz*2]; exit: the decode assist read a register named "riz".
    ("plain", bytes.fromhex("48bb0000000000000000" "48be0000000000000000" "48bf0000000000000000"
                            "48b90000000000000000" "488b0463" "b05a66ba0105ee")),
]


def fuzz(host: Host, examples: int) -> None:
    """Run `examples` generated guests (and the known reproducers) on `host`: the same stream
    every time, unless HV_FUZZ_SEED asks for another."""
    wanted_seed = os.environ.get("HV_FUZZ_SEED")

    @settings(max_examples=examples, derandomize=wanted_seed is None, database=None,
              deadline=None, suppress_health_check=list(HealthCheck), print_blob=True)
    @given(guests)
    def one(image: bytes) -> None:
        result = host.run(image)
        event(result.exit_reason)
        check(result, image)

    for _mode, image in KNOWN:
        one = example(image)(one)
    if wanted_seed is not None:
        one = seed(int(wanted_seed))(one)
    one()


@pytest.fixture(scope="module")
def psp_state_file(psp_state):
    return str(psp_state)


@pytest.mark.parametrize("mode", MODES)
def test_hostile_guests_end_with_a_documented_status(mode, psp_state_file):
    """Scenario: a batch of generated hostile guests, one after another on one host, in `mode`:
    each run ends with a documented status and the host keeps launching the next guest."""
    fuzz(Host(mode, None if mode == "plain" else psp_state_file), _examples(mode))


# -- code written at run time runs, intercepts included --------------------------------------------
_WRITTEN = {"nop": b"\x90" * 8, "out": b"\xe6\x80" + b"\x90" * 6,   # out 0x80, al
            "mov": b"\xb0\x01" + b"\x90" * 6}                        # mov al, 1


@st.composite
def _written_code(draw) -> tuple[bytes, int]:
    """(guest, OUTs it makes): blocks that each store 8 bytes of code ahead of themselves, at a
    distance of 0, 8 or 24 bytes, then run into them; then the exit."""
    code, outs = b"", 0
    for kind, gap in draw(st.lists(st.tuples(st.sampled_from(sorted(_WRITTEN)),
                                             st.sampled_from([0, 8, 24])), min_size=1, max_size=6)):
        outs += kind == "out"
        code += (_mov("rax", int.from_bytes(_WRITTEN[kind], "little"))
                 + b"\x48\x89\x05" + struct.pack("<i", gap)      # mov [rip+gap], rax
                 + b"\x90" * (gap + 8))                            # what it overwrites
    return code + _EXIT, outs


@pytest.mark.parametrize("mode", ["plain", "sev"])
def test_code_written_at_run_time_runs_with_its_intercepts(mode, psp_state_file):
    """Scenario: a guest writes instructions into the page it runs from and runs them: each
    written OUT is an exit (the hypervisor sees it), and the guest reaches its own exit.
    (No shrinking: the cases are small, and each failing one waits for the timeout.)"""
    host = Host(mode, None if mode == "plain" else psp_state_file)

    @settings(max_examples=min(_examples(mode), 40), derandomize=True, database=None,
              deadline=None, suppress_health_check=list(HealthCheck),
              phases=[Phase.explicit, Phase.generate])
    @given(_written_code())
    def one(case: tuple[bytes, int]) -> None:
        image, outs = case
        result = host.run(image)
        assert (result.exit_reason, result.guest_exit_code) == ("exit", 0x5A), result.message
        assert result.exits.get("IO", 0) == outs + 1, (result.exits, image.hex())

    one()


_BATCH = """
import sys
sys.path.insert(0, {here!r})
import test_guest_fuzz as f
for mode, n in {plan!r}:
    f.fuzz(f.Host(mode, None if mode == "plain" else {state!r}), n)
# VmHWM is this process's own peak. ru_maxrss is not: Linux carries it across execve, so a child
# started from a big pytest process reports the parent's resident size (650-740 MB late in a
# whole-suite run, against about 220 MB of its own).
print(next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:")))
"""


def test_peak_rss_of_a_batch_is_bounded(psp_state_file, tmp_path):
    """Scenario: one process runs a batch of hostile guests in every mode; its peak resident set
    stays under RSS_BOUND_MB (a guest cannot make hv grow without bound)."""
    plan = [("plain", 60), ("sev", 10), ("sev-es", 10), ("sev-snp", 10)]
    script = _BATCH.format(here=str(Path(__file__).parent), plan=plan, state=psp_state_file)
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       cwd=tmp_path, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    peak_mb = int(p.stdout.split()[-1]) / 1024  # VmHWM is in kB
    assert peak_mb < RSS_BOUND_MB, peak_mb
