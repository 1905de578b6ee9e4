"""The TMR against the PSP's debug commands, on the whole machine.

The integrity values that make an SEV-ES guest's saved registers tamper-evident live in the TMR,
which the memory controller fences from host and device accesses. The PSP is not fenced: it keeps
those values there. So the hypervisor must not be able to have the PSP move bytes into or out of
the TMR for it. With a debuggable guest of its own (plain SEV, policy 0: the hypervisor launches
it, no guest owner needed), DBG_ENCRYPT from the TMR and DBG_DECRYPT back out would read a slot,
and the reverse would write one: together a replay of an older VMSA that VMRUN accepts.

The victim guest is the one of test_es_registers.py:
        movabs $0x5345435245542121, %rax; hlt
        movl   $0x600DF00D, 0x8004;         hlt
"""

from __future__ import annotations

from hv.kvm import exits as K
from hv.kvm.sev import SevGuest
from sevwire import Cmd, DbgDecrypt, DbgEncrypt, Status

GUEST = bytes.fromhex("48b82121544552434553f4c70425048000000df00d60f4c7042504800000dec0ad0bf4")
PAGE = 0x1000
TMR_LEN = 1 << 20


def _accomplice(vmm) -> tuple[SevGuest, int]:
    """A plain SEV guest of the hypervisor's own, debuggable, and one page of its memory."""
    vm = vmm.kvm.create_vm("sev")
    guest = SevGuest(vm, vmm.sev.dev, 0)
    guest.launch_start()
    return guest, vmm.kvm.alloc(PAGE)


def _through(guest: SevGuest, page: int, src: int, dst: int, length: int) -> tuple[int, int]:
    """DBG_ENCRYPT `src` into the accomplice's page, then DBG_DECRYPT it to `dst`."""
    dev = guest.dev
    first, _ = dev.issue(Cmd.DBG_ENCRYPT, DbgEncrypt(guest.handle, src, page, length), check=False)
    second, _ = dev.issue(Cmd.DBG_DECRYPT, DbgDecrypt(guest.handle, page, dst, length), check=False)
    return first, second


def test_a_debuggable_guest_does_not_open_the_tmr_to_a_vmsa_replay(make_vmm):
    """Scenario: the hypervisor saves the victim's VMSA ciphertext and, through its accomplice,
    the TMR; lets the victim run on; then puts both back and resumes it. VMRUN must refuse."""
    vmm = make_vmm(GUEST, "sev-es")
    dev, host, spa = vmm.sev.dev, vmm.vm.host, vmm.vcpu.vmsa_spa
    tmr = dev._tmr
    accomplice, page = _accomplice(vmm)
    assert isinstance(vmm.vcpu.run(), K.Hlt)
    old_vmsa = host.read(spa, PAGE)

    # 1. Read the TMR: a page of it, through the accomplice's key, into a host buffer.
    out = dev.put(bytes(PAGE))
    leak = _through(accomplice, page, tmr, out, PAGE)
    copied = host.read(out, PAGE)
    tag = (spa | 1).to_bytes(8, "little")
    at = next((i for i in range(0, PAGE, 16) if copied[i:i + 8] == tag), 0)
    old_entry = copied[at:at + 16]

    # 2. The victim moves on: its VMSA and its integrity value change.
    assert isinstance(vmm.vcpu.run(), K.Hlt)
    assert host.read(spa, PAGE) != old_vmsa

    # 3. Put the old state back: the VMSA by a host write, the slot through the accomplice.
    host.write(spa, old_vmsa)
    forge = _through(accomplice, page, dev.put(old_entry), tmr + at, 16)
    replay = vmm.vcpu.run()

    assert not isinstance(replay, K.Hlt), "VMRUN accepted a replayed VMSA"
    assert isinstance(replay, K.FailEntry) and "integrity" in replay.detail, replay
    assert leak[0] == Status.INVALID_ADDRESS and forge[1] == Status.INVALID_ADDRESS
    assert tag not in copied


def test_the_accomplice_itself_still_debugs(make_vmm):
    """The control: the same two commands between ordinary pages work, so the refusals above are
    the TMR check."""
    vmm = make_vmm(GUEST, "sev-es")
    accomplice, page = _accomplice(vmm)
    dev = accomplice.dev
    out = dev.put(bytes(16))
    assert _through(accomplice, page, dev.put(b"ordinary memory!"), out, 16) == (Status.SUCCESS,) * 2
    assert vmm.vm.host.read(out, 16) == b"ordinary memory!"
    assert _through(accomplice, page, dev._tmr + TMR_LEN, out, 16) == (Status.SUCCESS,) * 2
