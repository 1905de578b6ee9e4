"""What a debugger attached to hv may see of a guest: the hypervisor's view, never more.

The GDB stub and the instruction trace read guest memory and registers through this one class,
so the rule is written once:

- guest-virtual addresses are translated by the vCPU (KVM_TRANSLATE: the CPU's own walk of the
  guest's page tables, which also says whether the leaf has the C-bit);
- a plain guest, and the shared (C=0) pages of an encrypted one, read as the hypervisor reads
  them, straight from guest memory;
- a private page of an encrypted guest goes through the PSP (DBG_DECRYPT). The firmware refuses
  it under the NODBG policy bit; then the debugger shows the ciphertext the hypervisor holds and
  says so once on stderr. Writes to private pages need DBG_ENCRYPT and are refused under NODBG;
- registers: the hypervisor reads a plain or SEV guest's registers directly (SEV's weakness);
  an SEV-ES guest's registers are in its encrypted VMSA, which only DBG_DECRYPT opens, so under
  NODBG the debugger sees zeros (and a warning), and it can never write them.
"""

from __future__ import annotations

from typing import Callable

from sevwire import VMSA_QWORDS, VMSA_SEGMENTS, VMSA_SIZE, Status

from hv.kvm import KvmError
from hv.kvm.sev import FirmwareError

__all__ = ["DebugView", "REGISTERS"]

# The registers a debugger gets, in GDB's i386:x86-64 order (org.gnu.gdb.i386.core, first part).
REGISTERS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10", "r11",
             "r12", "r13", "r14", "r15", "rip", "rflags", "cs", "ss", "ds", "es", "fs", "gs")
_PAGE = 0x1000


class DebugView:
    """Guest memory and registers for a debugger, as the hypervisor may obtain them."""

    def __init__(self, vmm, warn: Callable[[str], None]):
        self._vmm = vmm
        self._vcpu = vmm.vcpu
        self._vm = vmm.vm
        self._warn = warn
        self._warned: set[str] = set()
        self._nodbg = False  # the PSP refused DBG_DECRYPT once: the policy will not change

    @property
    def encrypted(self) -> bool:
        return self._vm.encrypted

    @property
    def debuggable(self) -> bool:
        """False once the PSP refused DBG_DECRYPT (NODBG): private reads are ciphertext."""
        return not self._nodbg

    @property
    def protected_state(self) -> bool:
        return bool(self._vcpu.guest_state_protected)

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            self._warn(message)

    @property
    def _guest(self):
        """The PSP launch context the debug commands go through (DBG_* or SNP_DBG_*)."""
        return self._vm.snp if self._vm.type.snp else self._vm.sev

    # -- memory ------------------------------------------------------------------------------------
    def read(self, gva: int, length: int) -> bytes:
        """Bytes at guest-virtual `gva`; shorter than asked where a page is not mapped."""
        out = bytearray()
        while length > 0:
            n = min(length, _PAGE - (gva & 0xFFF))
            hit = self._vcpu.translate(gva)
            if hit is None:
                break
            gpa, c_bit = hit
            try:
                out += self._read_gpa(gpa, n, c_bit and self.encrypted)
            except KvmError:
                break  # a GPA no memory slot backs (MMIO): nothing to read
            gva += n
            length -= n
        return bytes(out)

    def _read_gpa(self, gpa: int, n: int, private: bool) -> bytes:
        if private and not self._nodbg:
            try:
                return self._guest.dbg_decrypt(gpa, n)
            except FirmwareError as e:
                if e.status != Status.POLICY_FAILURE:
                    raise
                self._nodbg = True
        if private:
            self._warn_once("mem", "warning: the guest policy forbids debugging (NODBG): private "
                                   "memory reads show the ciphertext the hypervisor holds")
        return self._vm.read_gpa(gpa, n)

    def write(self, gva: int, data: bytes) -> bool:
        """Write at guest-virtual `gva`; False when unmapped or the policy forbids it."""
        pos = 0
        while pos < len(data):
            n = min(len(data) - pos, _PAGE - ((gva + pos) & 0xFFF))
            hit = self._vcpu.translate(gva + pos)
            if hit is None:
                return False
            gpa, c_bit = hit
            try:
                if c_bit and self.encrypted:
                    self._write_private(gpa, data[pos:pos + n])
                else:
                    self._vm.write_gpa(gpa, data[pos:pos + n])
            except (FirmwareError, KvmError):
                return False
            pos += n
        return True

    def _write_private(self, gpa: int, data: bytes) -> None:
        """DBG_ENCRYPT works on 16-byte blocks: read the blocks around `data`, patch, write.
        Not under SEV-SNP: SNP_DBG_ENCRYPT leaves the page unvalidated, and the guest library
        treats that as an attack and stops (a breakpoint would kill the guest)."""
        if self._vm.type.snp:
            self._warn_once("snp-write", "warning: SEV-SNP: writes to private memory (software "
                                         "breakpoints too) are refused; the page would lose its "
                                         "validation")
            raise KvmError("SEV-SNP private memory is not writable by the debugger")
        lo, hi = gpa & ~15, (gpa + len(data) + 15) & ~15
        block = bytearray(self._guest.dbg_decrypt(lo, hi - lo))
        block[gpa - lo:gpa - lo + len(data)] = data
        self._guest.dbg_encrypt(lo, bytes(block))

    # -- registers ---------------------------------------------------------------------------------
    def registers(self) -> dict[str, int]:
        if self.protected_state:
            return self._vmsa_registers()
        regs = self._vcpu.get_regs()
        sregs = self._vcpu.get_sregs()
        out = {n: int(regs[n]) for n in REGISTERS if n in regs}
        out.update({n: int(sregs[n]) & 0xFFFF for n in ("cs", "ss", "ds", "es", "fs", "gs")})
        return out

    def set_registers(self, values: dict[str, int]) -> bool:
        """False for an SEV-ES guest: a changed VMSA would fail its integrity check anyway."""
        if self.protected_state:
            return False
        general = {n: v for n, v in values.items() if n not in ("cs", "ss", "ds", "es", "fs", "gs")}
        self._vcpu.set_regs(general)  # segment selectors are fixed in 64-bit mode here
        return True

    def _vmsa_registers(self) -> dict[str, int]:
        sev = self._guest
        page = None
        if not self._nodbg:
            try:
                page = sev.dbg_decrypt_spa(self._vcpu.vmsa_spa)[:VMSA_SIZE]
            except FirmwareError as e:
                if e.status != Status.POLICY_FAILURE:
                    raise
                self._nodbg = True
        if page is None:
            self._warn_once("regs", "warning: the guest policy forbids debugging (NODBG): an "
                                    "SEV-ES guest's registers are hidden, shown as zeros")
            return dict.fromkeys(REGISTERS, 0)
        out = {}
        for name in REGISTERS:
            if name in VMSA_SEGMENTS:
                off = VMSA_SEGMENTS[name]
                out[name] = int.from_bytes(page[off:off + 2], "little")
            else:
                off = VMSA_QWORDS[name]
                out[name] = int.from_bytes(page[off:off + 8], "little")
        return out
