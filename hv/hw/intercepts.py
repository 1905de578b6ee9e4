"""Where the CPU must stop: intercept hooks on code pages, and the W^X discipline that keeps them
true.

Unicorn cannot stop precisely at IN/OUT, CPUID or RDMSR/WRMSR (DESIGN.md), but a code hook on the
exact address of an instruction can. So every page the guest executes from is scanned for bytes
that could begin such an instruction (its opcode bytes and any run of prefixes before them), and a
code hook goes on each. A hook fires only on a real instruction boundary; the CPU decodes the bytes
there and decides. HLT needs no hook (Unicorn ends the run right after it, which the CPU
recognises) and VMMCALL, VMGEXIT and PVALIDATE also reach the invalid-instruction hook.

A scan is only as good as the bytes it saw. Three rules make sure no instruction is ever translated
from bytes that were not scanned, whatever order the guest touches its pages in and however it
writes or aliases its code (an operating system loads modules, patches its text through a second
mapping and copies code around):
- execute permission is granted only by a fill for an instruction fetch, after the scan of the
  page's current bytes; a data fill never grants it;
- a physical page is executable or writable, never both (W^X per host page, across every
  guest-virtual alias): the first write to a scanned page takes execute away everywhere (TLB
  flush) and the next fetch scans it again, after taking write away everywhere;
- scans are kept per host page and hooks per guest-virtual page, so a page mapped at many
  addresses is scanned once and hooked where it runs.

Hooks are not free: Unicorn checks every code hook for every instruction it translates, and each
holds host memory. So there is a bound (MAX_HOOKS): when a new page would exceed it, the hooks of
the least recently scanned pages go (and with them their translated code, so that their next fetch
scans and hooks them again). Host memory per guest stays bounded whatever the guest's code.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from typing import Callable

from unicorn import UC_HOOK_CODE

from hv.hw import ucraw
from hv.hw.decode_intercept import LEGACY_PREFIXES, MAX_INSN_BYTES

__all__ = ["Intercepts", "LEGACY_PREFIXES", "MAX_HOOKS", "candidates"]

MAX_HOOKS = 8192
MAX_CODE_PAGES = 1 << 16
_PREFIX_OR_REX = LEGACY_PREFIXES | frozenset(range(0x40, 0x50))
_MAX_PREFIXES = MAX_INSN_BYTES - 1

# IN/OUT (E4-E7 imm8, EC-EF dx), CPUID 0F A2, WRMSR 0F 30, RDMSR 0F 32, and 0F 01 with D9
# (VMMCALL, VMGEXIT with F3) or FF (PVALIDATE with F2). A 0F (or 0F 01) at the very end of the
# page may continue on the next one, so it counts too.
_OPCODES = re.compile(rb"[\xe4-\xe7\xec-\xef]|\x0f(?:[\xa2\x30\x32]|\x01[\xd9\xff]|\x01\Z|\Z)")


def candidates(code: bytes) -> list[int]:
    """Offsets in `code` (one page) where an intercepted instruction could begin."""
    hits: set[int] = set()
    for m in _OPCODES.finditer(code):
        i = m.start()
        hits.add(i)
        j = i - 1
        while j >= 0 and i - j <= _MAX_PREFIXES and code[j] in _PREFIX_OR_REX:
            hits.add(j)
            j -= 1
    # A run of prefixes ending the page may be the start of an instruction on the next one.
    j = len(code) - 1
    while j >= 0 and len(code) - j <= _MAX_PREFIXES and code[j] in _PREFIX_OR_REX:
        hits.add(j)
        j -= 1
    return sorted(hits)


class Intercepts:
    """The intercept hooks of one vCPU and the scan state of the pages it executes."""

    def __init__(self, uc, on_intercept: Callable[[int], None], max_hooks: int = MAX_HOOKS):
        self._uc = uc
        self._max_hooks = max_hooks
        self.max_code_pages = MAX_CODE_PAGES
        # One C callback shared by every hook: the binding would make a new one per hook.
        self._handler = on_intercept
        self._cfunc = ucraw.code_callback(self._trampoline)
        self._scans: dict[int, list[int]] = {}  # host page (Unicorn paddr >> 12) -> offsets
        self._writable: set[int] = set()  # host pages granted write since their last scan
        # guest-virtual page -> (translation, {offset: hook handle}), least recently fetched first
        self._pages: OrderedDict[int, tuple[object, dict[int, int]]] = OrderedDict()
        self._cache: dict[int, dict[int, bytes]] = {}  # host page -> offset -> instruction bytes
        self.hooks = 0
        self.rescans = 0
        self.evictions = 0
        self.exception: BaseException | None = None

    def _trampoline(self, _handle, address, _size, _user):
        try:
            self._handler(address)
        except BaseException as e:  # noqa: BLE001 - carried out of the C callback, re-raised by run
            if self.exception is None:
                self.exception = e
            self._uc.emu_stop()

    # -- the fill's questions ----------------------------------------------------------------------
    def on_fetch(self, gva_page: int, host_page: int, t, read_page: Callable[[], bytes],
                 lazy: bool = False) -> str:
        """A fetch fill of `gva_page` backed by `host_page`. Returns "ok" (grant read+execute),
        "flush" (write must first be taken away everywhere: flush the TLB and retry) or
        "flush-code" (hooks were added or dropped where code may already be translated: flush
        the TLB and the translated code, then retry). `lazy`: a page whose code stores into
        itself; refusing its fetch would undo the CPU's progress on that store, so write goes
        at the caller's next stop instead."""
        if host_page in self._writable:
            self._writable.discard(host_page)
            if not lazy:
                return "flush"
        offsets = self._scans.get(host_page)
        if offsets is None:
            offsets = self._scans[host_page] = candidates(read_page())
            self.rescans += 1
        entry = self._pages.get(gva_page)
        seen_before = entry is not None
        if entry is None:
            entry = (t, {})
        else:
            self._pages.move_to_end(gva_page)
        hooks = entry[1]
        self._pages[gva_page] = (t, hooks)
        missing = [o for o in offsets if o not in hooks]
        evicted = False
        if missing:
            evicted = self._make_room(gva_page, len(missing))
            for o in missing:
                hooks[o] = self._add_hook(gva_page + o)
        elif len(self._pages) > self.max_code_pages:
            evicted = self._make_room(gva_page, 0)
        if evicted or (missing and seen_before):
            return "flush-code"
        return "ok"

    def on_write(self, host_page: int) -> bool:
        """A fill that grants write to `host_page`. True when the page was executable somewhere:
        execute must be taken away everywhere (flush the TLB) before the write may go ahead."""
        self._writable.add(host_page)
        if self._scans.pop(host_page, None) is None:
            return False
        self._cache.pop(host_page, None)
        return True

    def executable(self, host_page: int) -> bool:
        """Whether `host_page` is scanned and executable (so a data fill must not grant write)."""
        return host_page in self._scans

    def forget_code(self) -> None:
        """Host memory was rewritten behind the CPU's back (DMA, the hypervisor, the PSP): every
        page is scanned again on its next fetch."""
        self._scans.clear()
        self._cache.clear()

    # -- the hook's questions ----------------------------------------------------------------------
    def translation(self, gva_page: int):
        entry = self._pages.get(gva_page)
        return None if entry is None else entry[0]

    def cached(self, host_page: int, offset: int) -> bytes | None:
        page = self._cache.get(host_page)
        return None if page is None else page.get(offset)

    def remember(self, host_page: int, offset: int, insn: bytes) -> None:
        if offset <= 0x1000 - len(insn):  # an instruction crossing into the next page is not kept
            self._cache.setdefault(host_page, {})[offset] = insn

    # -- hooks ---------------------------------------------------------------------------------------
    def _add_hook(self, address: int) -> int:
        handle = ucraw.hook_add(self._uc, UC_HOOK_CODE, self._cfunc, None, address, address)
        self.hooks += 1
        return handle

    def _make_room(self, keep: int, needed: int) -> bool:
        """Drop the least recently fetched pages' hooks until `needed` more fit. True when any
        page with hooks was dropped (its translated code must go too)."""
        dropped = False
        while self._pages and (self.hooks + needed > self._max_hooks
                               or len(self._pages) > self.max_code_pages):
            gva_page = next(iter(self._pages))
            if gva_page == keep:
                if len(self._pages) == 1:
                    break
                self._pages.move_to_end(keep)
                continue
            _t, hooks = self._pages.pop(gva_page)
            for handle in hooks.values():
                ucraw.hook_del(self._uc, handle)
            self.hooks -= len(hooks)
            if hooks:
                dropped = True
                self.evictions += 1
        return dropped
