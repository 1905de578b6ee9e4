"""Intercepts never miss: not for code written at run time, code reached through another mapping,
a page read as data before it runs, prefixed instructions, instructions across a page boundary;
and hooks stay bounded whatever the guest's code."""

import os
import struct
import subprocess
import sys

import pytest

from hv.boot._layout import PT0_GPA
from hv.hw.exits import CpuidExit, HltExit, IoExit, MsrExit, NpfExit, ShutdownExit
from hv.hw.intercepts import MAX_HOOKS, candidates

from test_cpu import BASE, CODE, make

ALIAS_VA = 0x1F1000   # mapped (by the test) onto GPA 0x101000, the page after the code
TARGET = 0x101000


def _alias(mc, slot=None):
    """Point the boot tables' 4 KiB entry for ALIAS_VA at GPA TARGET."""
    entry = TARGET | 0x3
    mc.write(BASE + PT0_GPA + (ALIAS_VA >> 12) * 8, struct.pack("<Q", entry), slot)


def _mov_rax(v):
    return b"\x48\xb8" + struct.pack("<Q", v)


def _store_rax(va):
    return b"\x48\x89\x04\x25" + struct.pack("<I", va)  # mov [va], rax


def _call(va):
    return _mov_rax(va) + b"\xff\xd0"  # mov rax, va; call rax


def test_code_written_through_another_mapping_after_it_ran_is_intercepted():
    # Run the page once (a lone ret), rewrite it through an alias as `out 0x80,al; ret`, run again.
    code = (_call(TARGET) + _mov_rax(int.from_bytes(b"\xe6\x80\xc3", "little")) + _store_rax(ALIAS_VA)
            + _call(TARGET) + b"\xf4")
    cpu, mc, _npt = make(code)
    mc.write(BASE + TARGET, b"\xc3", None)
    _alias(mc)
    e = cpu.run()
    assert isinstance(e, IoExit) and e.port == 0x80, e
    assert cpu.reg("rip") == TARGET + 2
    assert isinstance(cpu.run(), HltExit)


def test_code_written_into_its_own_page_after_the_scan_is_intercepted():
    # The page runs, then writes `cpuid` over two of its own nops ahead of RIP, then runs them.
    patch_at = CODE + 0x40
    code = _mov_rax(int.from_bytes(b"\x0f\xa2", "little")) + b"\x66\x89\x04\x25" + struct.pack("<I", patch_at)
    code += b"\xe9" + struct.pack("<i", patch_at - (CODE + len(code) + 5))
    code = code.ljust(0x40, b"\x90") + b"\x90\x90\xf4"
    cpu, _mc, _npt = make(code)
    e = cpu.run()
    assert isinstance(e, CpuidExit), e
    assert cpu.reg("rip") == patch_at + 2
    assert isinstance(cpu.run(), HltExit)


@pytest.mark.parametrize("first_touch", ["read", "write"])
def test_a_page_touched_as_data_first_is_scanned_when_it_runs(first_touch):
    # `rdmsr; hlt` sits in the next page; the guest reads (or writes a byte of) it first.
    touch = (b"\x8a\x04\x25" if first_touch == "read" else b"\x88\x04\x25") + struct.pack("<I", TARGET + 8)
    code = b"\xb9\x34\x12\x00\x00" + touch + b"\xe9" + struct.pack("<i", TARGET - (CODE + 12 + 5))
    cpu, mc, _npt = make(code)
    mc.write(BASE + TARGET, b"\x0f\x32\xf4", None)
    e = cpu.run()
    assert isinstance(e, MsrExit) and e.msr == 0x1234 and not e.is_write, e
    assert cpu.reg("rip") == TARGET + 2


@pytest.mark.parametrize("insn, kind, extra", [
    (b"\x66\xf4", HltExit, {}),                              # prefixed HLT
    (b"\xf3\xf4", HltExit, {}),
    (b"\x2e\xe6\x80", IoExit, {"port": 0x80, "size": 1}),    # segment override on OUT
    (b"\x66\xe5\x71", IoExit, {"port": 0x71, "size": 2}),    # operand size on IN
    (b"\x48\xec", IoExit, {"port": 0x3F8, "size": 1}),       # REX.W IN AL, DX
    (b"\x48\x0f\xa2", CpuidExit, {}),                        # REX CPUID
    (b"\x3e\x41\x0f\x32", MsrExit, {"msr": 0x1234}),         # DS + REX.B RDMSR
])
def test_prefixed_intercepts_stop_past_the_whole_instruction(insn, kind, extra):
    code = b"\xba\xf8\x03\x00\x00" + b"\xb9\x34\x12\x00\x00" + insn + b"\xf4"
    cpu, _mc, _npt = make(code)
    e = cpu.run()
    assert isinstance(e, kind), e
    for name, value in extra.items():
        assert getattr(e, name) == value
    assert cpu.reg("rip") == CODE + 10 + len(insn)


@pytest.mark.parametrize("insn, kind", [(b"\x0f\xa2", CpuidExit), (b"\x66\xe5\x80", IoExit),
                                        (b"\x3e\x0f\x32", MsrExit)])
def test_an_instruction_across_a_page_boundary_is_intercepted(insn, kind):
    start = TARGET - 1  # the first byte ends the code page, the rest begins the next
    code = b"\xb9\x34\x12\x00\x00" + b"\xe9" + struct.pack("<i", start - (CODE + 10))
    cpu, mc, _npt = make(code)
    mc.write(BASE + start, insn + b"\xf4", None)
    e = cpu.run()
    assert isinstance(e, kind), e
    assert cpu.reg("rip") == start + len(insn)


def test_hooks_stay_bounded_on_pages_full_of_candidates():
    # 64 pages, each a jump to the next followed by 0xEC (IN AL, DX) bytes: 4,091 candidates a page.
    pages = 64
    image = b""
    for p in range(pages):
        page = b"\xe9" + struct.pack("<i", 0x1000 - 5) if p < pages - 1 else b"\xf4"
        image += page.ljust(0x1000, b"\xec")
    cpu, _mc, _npt = make(image)
    assert isinstance(cpu.run(), HltExit)
    assert cpu.reg("rip") == CODE + (pages - 1) * 0x1000 + 1
    assert 0 < cpu._icpt.hooks <= MAX_HOOKS
    assert cpu._icpt.evictions > 0
    # An evicted page is hooked again when it runs again: jump back into the first page's INs.
    cpu.set_regs({"rip": CODE + 0x10})
    e = cpu.run()
    assert isinstance(e, IoExit) and e.is_in, e


def test_candidates_cover_prefix_runs_and_page_ends():
    page = bytearray(b"\x90" * 0x1000)
    page[0x10:0x13] = b"\x66\x48\xec"
    page[0x20:0x22] = b"\x0f\xa2"
    page[0xFFE:0x1000] = b"\x2e\x0f"
    got = set(candidates(bytes(page)))
    assert {0x10, 0x11, 0x12, 0x20, 0xFFE, 0xFFF} <= got
    assert 0x13 not in got and 0x21 not in got


def test_sib_without_index_faulting_access_is_a_guest_fault_not_a_crash():
    # mov rbx, 1 << 44 (unmapped); mov rax, [rbx + riz*2]; and the same with a 0x67 prefix.
    for insn in (b"\x48\x8b\x04\x63", b"\x67\x48\x8b\x04\x63"):
        cpu, _mc, _npt = make(b"\x48\xbb" + struct.pack("<Q", 1 << 44) + insn + b"\xf4")
        e = cpu.run()
        assert isinstance(e, ShutdownExit) and "#PF" in e.reason, e


def test_sib_without_index_on_the_nested_page_fault_path():
    # The address is mapped by the guest (identity, 2 MiB pages) but not by the nested table.
    gva = 3 << 20
    code = b"\x48\xbb" + struct.pack("<Q", gva + 0x123) + b"\x48\x8b\x04\x63" + b"\xf4"
    cpu, _mc, npt = make(code)
    npt.unmap(gva, 0x200000)
    e = cpu.run()
    assert isinstance(e, NpfExit), e
    assert e.gpa == gva + 0x123


RSS_LIMIT_MB = 600


@pytest.mark.slow
def test_hv_run_memory_stays_bounded_on_a_mebibyte_of_candidates(tmp_path):
    # 1 MiB of pages whose every byte could start an IN: on a hook per byte this took 2.9 GB.
    pages = 256
    image = b""
    for p in range(pages):
        head = b"\xe9" + struct.pack("<i", 0x1000 - 5) if p < pages - 1 else b"\xf4"
        image += head.ljust(0x1000, b"\xec")
    path = tmp_path / "candidates.bin"
    path.write_bytes(image)
    script = ("import resource, subprocess, sys; "
              "p = subprocess.run([sys.executable, '-m', 'hv', 'run', '-q', '--mem', '16M', "
              f"'--timeout', '120', {str(path)!r}]); "
              "print(p.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": os.getcwd()})
    status, maxrss_kb = map(int, out.stdout.split())
    assert status == 0, out.stderr
    assert maxrss_kb < RSS_LIMIT_MB * 1024, f"peak RSS {maxrss_kb // 1024} MB"


def test_a_store_into_the_bytes_right_after_it_completes_and_they_are_intercepted():
    # mov rax, `out 0x80,al; nop...`; mov [rip+0], rax (overwrites the nops that follow it); hlt.
    # The store modifies its own translated block: the CPU re-runs it alone, which must not be
    # undone by the W^X refusal (it livelocked once: fills without end, no exit).
    cpu, _mc, _npt = make(bytes.fromhex("48b8e680909090909090" "48890500000000" "9090909090909090" "f4"))
    e = cpu.run()
    assert isinstance(e, IoExit) and e.port == 0x80, e
    assert cpu.reg("rip") == CODE + 0x13


def test_translated_code_has_a_bounded_buffer():
    # Unicorn's default is 1 GiB, touched as code is translated: a guest rewriting its code in a
    # loop grew a bare Unicorn process to 451 MB in 4 s; 32 MiB held it at 56 MB.
    from hv.hw.cpu import TCG_BUFFER_BYTES

    cpu, _mc, _npt = make(b"\xf4")
    assert cpu._uc.ctl_get_tcg_buffer_size() == TCG_BUFFER_BYTES <= 64 << 20
