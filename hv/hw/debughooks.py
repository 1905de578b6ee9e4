"""Code hooks for a debugger (breakpoints, single steps), the same for both vCPU classes.

Nothing is written into guest memory, so the guest's bytes and its launch measurement stay
untouched. Translated code is dropped whenever a hook comes or goes, or blocks translated earlier
would run past a new hook (Unicorn decides at translation time which instructions call hooks).
"""

from __future__ import annotations

from typing import Any, Callable

from unicorn import UC_HOOK_CODE

__all__ = ["add_code_hook", "remove_code_hook"]


def add_code_hook(uc: Any, callback: Callable[[int, int], None], address: int | None) -> Any:
    """Call `callback(address, size)` before the instruction at `address` (before every
    instruction when None); returns the handle for remove_code_hook."""
    begin, end = (1, 0) if address is None else (address, address)
    handle = uc.hook_add(UC_HOOK_CODE, lambda _uc, a, s, _u: callback(a, s), None, begin, end)
    uc.ctl_flush_tb()
    return handle


def remove_code_hook(uc: Any, handle: Any) -> None:
    uc.hook_del(handle)
    uc.ctl_flush_tb()
