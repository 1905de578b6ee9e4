"""The calls below Unicorn's Python binding (hv.hw.ucraw), each checked against the binding's own
public calls on a scratch core, and kept in that one module."""

import ctypes
import re
from pathlib import Path

import pytest
from unicorn import UC_HOOK_BLOCK, UC_HOOK_CODE, UC_HOOK_INTR, UC_PROT_ALL, UcError
from unicorn import x86_const as X

from hv.hw import ucraw

ROOT = Path(__file__).resolve().parents[2]
CODE = 0x1000
# inc rax; inc rax; inc rax; inc rax; hlt
FOUR_INCS = bytes.fromhex("48ffc0" * 4 + "f4")


def core(code: bytes = FOUR_INCS):
    uc = ucraw.new_x86_64()
    uc.mem_map(0, 0x10000, UC_PROT_ALL)
    uc.mem_write(CODE, code)
    return uc


def test_no_other_module_reaches_past_the_binding():
    private = re.compile(r"\b_uch\b|\buclib\b|_hook_exception|_Uc__do_hook_add|unicorn_py3|"
                         r"uc_hook_add|\.context\.value")
    offenders = [str(p.relative_to(ROOT)) for p in sorted((ROOT / "hv").rglob("*.py"))
                 if p.name != "ucraw.py" and private.search(p.read_text())]
    assert offenders == []


def test_fast_registers_agree_with_the_binding():
    uc = core()
    read, write = ucraw.fast_registers(uc)
    write(X.UC_X86_REG_R13, 0x1122_3344_5566_7788)
    assert uc.reg_read(X.UC_X86_REG_R13) == 0x1122_3344_5566_7788
    uc.reg_write(X.UC_X86_REG_RBX, 0xFFFF_FFFF_FFFF_FFFF)
    assert read(X.UC_X86_REG_RBX) == 0xFFFF_FFFF_FFFF_FFFF
    write(X.UC_X86_REG_RCX, -1)  # masked to 64 bits, as the register holds it
    assert read(X.UC_X86_REG_RCX) == 0xFFFF_FFFF_FFFF_FFFF


def test_emu_start_runs_and_reraises_what_a_python_hook_raised():
    uc = core()
    ucraw.emu_starter(uc)(CODE, CODE + 12)
    assert uc.reg_read(X.UC_X86_REG_RAX) == 4

    uc = core(bytes.fromhex("cd 03"))  # INT3: the interrupt hook raises

    def boom(_uc, _intno, _user):
        raise ValueError("from the hook")

    uc.hook_add(UC_HOOK_INTR, boom)
    with pytest.raises(ValueError, match="from the hook"):
        ucraw.emu_starter(uc)(CODE, CODE + 2)


def test_emu_start_raises_the_emulator_error():
    uc = core(b"\x0f\x0b")  # UD2, no hook
    with pytest.raises(UcError):
        ucraw.emu_starter(uc)(CODE, CODE + 2)


def test_a_shared_code_callback_fires_only_on_its_hooked_addresses_until_deleted():
    seen = []
    cb = ucraw.code_callback(lambda _h, address, size, _u: seen.append((address, size)))
    uc = core()
    h1 = ucraw.hook_add(uc, UC_HOOK_CODE, cb, None, CODE + 3, CODE + 3)
    ucraw.hook_add(uc, UC_HOOK_CODE, cb, None, CODE + 9, CODE + 9)
    ucraw.emu_starter(uc)(CODE, CODE + 12)
    assert seen == [(CODE + 3, 3), (CODE + 9, 3)]
    ucraw.hook_del(uc, h1)
    uc.ctl_flush_tb()
    seen.clear()
    ucraw.emu_starter(uc)(CODE, CODE + 12)
    assert seen == [(CODE + 9, 3)]


def test_the_machine_code_count_hook_stops_after_exactly_the_budget():
    stops = ucraw.StopHooks()
    for budget in (1, 2, 3):
        uc = core()
        counter = (ctypes.c_uint64 * 2)(0, budget)
        ucraw.hook_add(uc, UC_HOOK_CODE, stops.count_fn, ctypes.addressof(counter), 1, 0)
        ucraw.emu_starter(uc)(CODE, CODE + 12)
        assert uc.reg_read(X.UC_X86_REG_RAX) == budget  # stopped before instruction budget + 1


def test_the_machine_code_flag_hook_stops_at_a_block_only_when_the_flag_is_set():
    stops = ucraw.StopHooks()
    flag = ctypes.c_uint8(0)
    uc = core()
    ucraw.hook_add(uc, UC_HOOK_BLOCK, stops.flag_fn, ctypes.addressof(flag), 1, 0)
    ucraw.emu_starter(uc)(CODE, CODE + 12)
    assert uc.reg_read(X.UC_X86_REG_RAX) == 4
    flag.value = 1
    uc.reg_write(X.UC_X86_REG_RAX, 0)
    ucraw.emu_starter(uc)(CODE, CODE + 12)
    assert uc.reg_read(X.UC_X86_REG_RAX) == 0  # stopped before the block's first instruction


def test_an_instruction_hook_answers_cpuid_and_skips_it():
    uc = core(bytes.fromhex("0fa2 f4"))

    def cpuid() -> int:
        uc.reg_write(X.UC_X86_REG_RBX, 0x6874_7541)  # "Auth"
        return 1

    ucraw.insn_hook_add(uc, X.UC_X86_INS_CPUID, cpuid)
    ucraw.emu_starter(uc)(CODE, CODE + 2)
    assert uc.reg_read(X.UC_X86_REG_RBX) == 0x6874_7541
    assert uc.reg_read(X.UC_X86_REG_RIP) == CODE + 2
