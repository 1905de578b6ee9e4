"""Unicorn below its Python binding: every call hv makes past the binding's public API, in one place.

The binding costs microseconds per call where hv needs nanoseconds (a register read at every exit,
a start at every resume, a code hook on every intercepted instruction), and it has no way to hook
with a C function that never enters Python. So the vCPUs (cpu.py, intercepts.py, oscpu.py) call
libunicorn directly through the helpers here, and nothing else touches the binding's private
names (`_uch`, `uclib`, `_hook_exception`, `_Uc__do_hook_add`). Written against Unicorn 2.1.4
(pyproject pins it); a binding that renames these fails here, at start-up, not in a guest.

Typing: `unicorn/__init__.py` chooses its Python 2 or 3 binding by `sys.version_info.major`, which
a type checker does not follow, so `unicorn.Uc` type-checks as the Python 2 class without the ctl_*
and batch register calls. `new_x86_64` returns the class the binding really builds (UcIntel).
"""

from __future__ import annotations

import ctypes
import mmap
import struct
from typing import Any, Callable, cast

from unicorn import UC_ARCH_X86, UC_ERR_OK, UC_HOOK_INSN, UC_MODE_64, UcError
from unicorn.unicorn_py3.arch.intel import HOOK_INSN_CPUID_CFUNC, UcIntel
from unicorn.unicorn_py3.unicorn import HOOK_CODE_CFUNC, Uc, UcContext, uc_hook_h, uccallback, uclib

__all__ = ["CFunc", "UcIntel", "StopHooks", "code_callback", "context_address", "emu_starter",
           "fast_registers", "hook_add", "hook_del", "insn_hook_add", "new_x86_64"]

_MASK64 = 0xFFFF_FFFF_FFFF_FFFF
CFunc = Any  # a ctypes C function pointer (typeshed names no public class for it)


def new_x86_64(cpu: int | None = None) -> UcIntel:
    """A 64-bit x86 Unicorn (`cpu`: a UC_CPU_X86_* model, or Unicorn's default)."""
    uc = Uc(UC_ARCH_X86, UC_MODE_64) if cpu is None else Uc(UC_ARCH_X86, UC_MODE_64, cpu=cpu)
    return cast(UcIntel, uc)


def fast_registers(uc: UcIntel) -> tuple[Callable[[int], int], Callable[[int, int], None]]:
    """Register read/write straight through libunicorn: the Python binding's reg_read costs
    about 4 us, this about 1 us, and every exit needs several. 64-bit registers only."""
    handle = uc._uch
    cell = ctypes.c_uint64(0)
    ref = ctypes.byref(cell)
    read_fn, write_fn = uclib.uc_reg_read, uclib.uc_reg_write

    def read(reg_id: int) -> int:
        read_fn(handle, reg_id, ref)
        return cell.value

    def write(reg_id: int, value: int) -> None:
        cell.value = value & _MASK64
        write_fn(handle, reg_id, ref)

    return read, write


def emu_starter(uc: UcIntel) -> Callable[[int, int], None]:
    """`start(begin, until)`: uc.emu_start without the binding's per-call overhead (a few us of
    every exit); like it, raises UcError for a failed start and re-raises what a Python hook
    raised."""
    start_fn, handle = uclib.uc_emu_start, uc._uch

    def start(begin: int, until: int) -> None:
        uc._hook_exception = None
        status = start_fn(handle, begin, until, 0, 0)
        if status != UC_ERR_OK:
            raise UcError(status)
        if uc._hook_exception is not None:
            raise uc._hook_exception

    return start


def code_callback(fn: Callable[[int, int, int, int], None]) -> CFunc:
    """A C code-hook callback `fn(handle, address, size, user)` that many hooks can share (the
    binding makes one per hook). Keep it alive as long as any hook uses it."""
    return HOOK_CODE_CFUNC(fn)


def hook_add(uc: UcIntel, htype: int, fn: CFunc | int, user: int | None, begin: int,
             end: int) -> int:
    """uc_hook_add with a C function (a callback from code_callback, or the address of machine
    code) and a raw user-data pointer; returns the hook's handle for hook_del. The caller keeps
    `fn` and what `user` points at alive."""
    handle = uc_hook_h()
    func = ctypes.c_void_p(fn) if isinstance(fn, int) else fn
    status = uclib.uc_hook_add(uc._uch, ctypes.byref(handle), htype, func, ctypes.c_void_p(user),
                               ctypes.c_uint64(begin), ctypes.c_uint64(end))
    if status != UC_ERR_OK:
        raise UcError(status)
    return handle.value


def hook_del(uc: UcIntel, handle: int) -> None:
    uclib.uc_hook_del(uc._uch, uc_hook_h(handle))


def insn_hook_add(uc: UcIntel, insn: int, fn: Callable[[], int]) -> int:
    """A hook on a CPUID-like instruction (CPUID, RDTSC, RDTSCP: `fn()` returns 1 to skip it)
    without the binding's generic wrapper, which costs a Python call more per instruction. The
    binding keeps the callback alive with the hook."""
    cb = uccallback(uc, HOOK_INSN_CPUID_CFUNC)(lambda _uc, _key: fn())
    return cast(int, uc._Uc__do_hook_add(UC_HOOK_INSN, cb, 1, 0, insn))  # type: ignore[attr-defined]  # the binding's private hook_add


def context_address(ctx: UcContext) -> int:
    """Where a saved context's bytes (struct uc_context) live in host memory."""
    return cast(int, ctx.context.value)


def _flag_hook_code(stop_fn: int) -> bytes:
    """x86-64 SysV machine code for `void hook(uc, address, size, uint8_t *flag)`:
    `if (*flag) uc_emu_stop(uc);` (a tail call). A Python block hook would cost a Python call
    per translated block executed, this a few nanoseconds."""
    return (bytes.fromhex("8a01"      # mov al, [rcx]
                          "84c0"      # test al, al
                          "7501"      # jnz +1
                          "c3"        # ret
                          "48b8")     # mov rax, imm64
            + struct.pack("<Q", stop_fn)
            + bytes.fromhex("ffe0"))  # jmp rax


def _count_hook_code(stop_fn: int) -> bytes:
    """x86-64 SysV machine code for the code hook `void hook(uc, address, size, uint64_t c[2])`:
    `if (++c[0] > c[1]) uc_emu_stop(uc);`, before each instruction: a stop there is clean (the
    instruction has not run), so the run ends after exactly c[1] instructions."""
    return (bytes.fromhex("488b01"    # mov rax, [rcx]
                          "48ffc0"    # inc rax
                          "488901"    # mov [rcx], rax
                          "483b4108"  # cmp rax, [rcx + 8]
                          "7701"      # ja +1
                          "c3"        # ret
                          "48b8")     # mov rax, imm64
            + struct.pack("<Q", stop_fn)
            + bytes.fromhex("ffe0"))  # jmp rax


class StopHooks:
    """Two hooks in machine code (one executable page) that stop emulation with no Python on the
    way: `flag_fn`, a block hook whose user data is a uint8 flag (stop when set), and `count_fn`,
    a code hook whose user data is uint64 c[2] (count, budget: stop when the count passes it)."""

    def __init__(self) -> None:
        stop_fn = ctypes.cast(uclib.uc_emu_stop, ctypes.c_void_p).value
        assert stop_fn is not None
        self._code = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        self._code.write(_flag_hook_code(stop_fn).ljust(64, b"\xcc") + _count_hook_code(stop_fn))
        self.flag_fn = ctypes.addressof(ctypes.c_char.from_buffer(self._code))
        self.count_fn = self.flag_fn + 64
