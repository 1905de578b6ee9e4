"""KVM_SEV_SEND_* and KVM_SEV_RECEIVE_*: moving an encrypted VM's memory and VMSA through the PSP.

As in KVM, user space names guest pages by GPA; the kernel side finds the host pages and hands
the PSP their physical addresses, one page per SEND/RECEIVE_UPDATE_DATA (KVM's chunk). The
hypervisor sees only what a real one does: the session blob the source PSP made for the target's
PDH, and packets of TEK ciphertext with their headers. No key passes through here.

Besides the PSP's packets, a VM moves the state the hypervisor itself holds and may read:
`vcpu_state` / `set_vcpu_state` carry a plain SEV vCPU's registers (KVM_GET/SET_REGS and
_SREGS, as QEMU migrates them: SEV does not protect them) and, under SEV-ES, only the VMCB's
GHCB MSR and the registered GHCB GPA (the registers travel encrypted in the VMSA packet).
"""

from __future__ import annotations

from sevwire import (PACKET_HEADER_SIZE, SESSION_BLOB_SIZE, Activate, Cmd, ReceiveFinish,
                     ReceiveStart, ReceiveUpdateData, ReceiveUpdateVmsa, SendCancel, SendFinish,
                     SendStart, SendUpdateData, SendUpdateVmsa)

from hv.kvm.sev import SevDevice, SevGuest

__all__ = ["PAGE", "Packet", "receive_finish", "receive_start", "receive_update_data",
           "receive_update_vmsa", "send_cancel", "send_finish", "send_start", "send_update_data",
           "send_update_vmsa", "set_vcpu_state", "vcpu_state"]

PAGE = 0x1000
Packet = tuple[bytes, bytes]
"""(header 52 bytes, transport data) of one SEND_UPDATE_* packet."""


# -- the source ------------------------------------------------------------------------------------

def send_start(sev: SevGuest, pdh: bytes, plat_certs: bytes = b"", amd_certs: bytes = b"") -> bytes:
    """KVM_SEV_SEND_START: the 128-byte session the PSP wraps for the target's PDH (the target's
    PEK||OCA||CEK and ASK||ARK are checked by the PSP under the policy's SEV and DOMAIN bits)."""
    dev = sev.dev

    def put(blob: bytes) -> tuple[int, int]:
        return (dev.put(blob), len(blob)) if blob else (0, 0)

    session_spa = dev.put(bytes(SESSION_BLOB_SIZE))
    buf = SendStart(sev.handle, 0, *put(pdh), *put(plat_certs), *put(amd_certs),
                    session_spa, SESSION_BLOB_SIZE)
    dev.issue(Cmd.SEND_START, buf)
    return dev.get(session_spa, SESSION_BLOB_SIZE)


def _send(sev: SevGuest, cmd: Cmd, layout: type[SendUpdateData], spa: int, length: int) -> Packet:
    dev = sev.dev
    hdr, trans = dev.put(bytes(PACKET_HEADER_SIZE)), dev.put(bytes(length))
    dev.issue(cmd, layout(sev.handle, hdr, PACKET_HEADER_SIZE, spa, length, trans, length))
    return dev.get(hdr, PACKET_HEADER_SIZE), dev.get(trans, length)


def send_update_data(sev: SevGuest, gpa: int) -> Packet:
    """KVM_SEV_SEND_UPDATE_DATA of the guest page at `gpa`."""
    return _send(sev, Cmd.SEND_UPDATE_DATA, SendUpdateData, sev.vm.gpa_to_spa(gpa), PAGE)


def send_update_vmsa(sev: SevGuest, vcpu) -> Packet:
    """KVM_SEV_SEND_UPDATE_VMSA of one SEV-ES vCPU's save area (the PSP refuses a VMSA that
    no longer passes its integrity check)."""
    return _send(sev, Cmd.SEND_UPDATE_VMSA, SendUpdateVmsa, vcpu.vmsa_spa, PAGE)


def send_finish(sev: SevGuest) -> None:
    """KVM_SEV_SEND_FINISH: the guest is SENT and can never run on this platform again."""
    sev.dev.issue(Cmd.SEND_FINISH, SendFinish(sev.handle))


def send_cancel(sev: SevGuest) -> None:
    """KVM_SEV_SEND_CANCEL: back to RUNNING, the transport keys forgotten."""
    sev.dev.issue(Cmd.SEND_CANCEL, SendCancel(sev.handle))


# -- the target ------------------------------------------------------------------------------------

def receive_start(vm, dev: SevDevice, policy: int, sender_pdh: bytes, session: bytes) -> SevGuest:
    """KVM_SEV_RECEIVE_START, then ACTIVATE on the VM's ASID (KVM's sev_bind_asid)."""
    sev = SevGuest(vm, dev, policy)
    _st, out = dev.issue(Cmd.RECEIVE_START, ReceiveStart(
        0, policy, dev.put(sender_pdh), len(sender_pdh), dev.put(session), len(session)))
    sev.handle = out.handle
    dev.issue(Cmd.ACTIVATE, Activate(handle=sev.handle, asid=vm.asid))
    return sev


def _receive(sev: SevGuest, cmd: Cmd, layout: type[SendUpdateData], spa: int, packet: Packet) -> None:
    header, trans = packet
    dev = sev.dev
    dev.issue(cmd, layout(sev.handle, dev.put(header), len(header), spa, len(trans),
                          dev.put(trans), len(trans)))


def receive_update_data(sev: SevGuest, gpa: int, packet: Packet) -> None:
    """KVM_SEV_RECEIVE_UPDATE_DATA of one packet into the guest page at `gpa`."""
    _receive(sev, Cmd.RECEIVE_UPDATE_DATA, ReceiveUpdateData, sev.vm.gpa_to_spa(gpa), packet)


def receive_update_vmsa(sev: SevGuest, vcpu, packet: Packet) -> int:
    """KVM_SEV_RECEIVE_UPDATE_VMSA: the VMSA packet into a fresh host page that becomes the
    vCPU's save area (its state is protected from here on). Returns the page's SPA."""
    kvm = sev.vm.kvm
    spa = kvm.alloc(PAGE)
    try:
        _receive(sev, Cmd.RECEIVE_UPDATE_VMSA, ReceiveUpdateVmsa, spa, packet)
    except Exception:
        kvm.free(spa, PAGE)
        raise
    vcpu.attach_vmsa(spa)
    return spa


def receive_finish(sev: SevGuest) -> None:
    """KVM_SEV_RECEIVE_FINISH: the guest is RUNNING on this platform."""
    sev.dev.issue(Cmd.RECEIVE_FINISH, ReceiveFinish(sev.handle))
    sev.vm.sev = sev


# -- what the hypervisor holds of a vCPU -----------------------------------------------------------

_SREG_INTS = ("cr0", "cr2", "cr3", "cr4", "efer")


def vcpu_state(vcpu) -> dict:
    """The vCPU state the hypervisor may read, as JSON-ready numbers. Call it between exits,
    after `Vcpu.complete_exit()`: nothing of the last exit may still be pending."""
    if vcpu.guest_state_protected:
        es = vcpu.es
        return {"ghcb_msr": es.control.ghcb_msr, "ghcb_gpa": es.registered_gpa}
    sregs = vcpu.get_sregs()
    out = {"regs": vcpu.get_regs(), "sregs": {n: int(sregs[n]) for n in _SREG_INTS}}
    out["sregs"].update({n: [int(v) for v in sregs[n]] for n in ("idtr", "gdtr")})
    return out


def set_vcpu_state(vcpu, state: dict) -> None:
    """Load what `vcpu_state` returned into a fresh vCPU of the same kind (ValueError if the
    state is of the other kind or malformed)."""
    if vcpu.guest_state_protected:
        if set(state) != {"ghcb_msr", "ghcb_gpa"}:
            raise ValueError("an SEV-ES vCPU's state is its GHCB MSR and GHCB GPA")
        vcpu.es.control.ghcb_msr = int(state["ghcb_msr"])
        gpa = state["ghcb_gpa"]
        vcpu.es.registered_gpa = None if gpa is None else int(gpa)
        return
    if set(state) != {"regs", "sregs"}:
        raise ValueError("an SEV vCPU's state is its registers and system registers")
    vcpu.set_regs({n: int(v) for n, v in state["regs"].items()})
    sregs: dict[str, object] = {n: int(state["sregs"][n]) for n in _SREG_INTS}
    sregs.update({n: tuple(int(v) for v in state["sregs"][n]) for n in ("idtr", "gdtr")})
    vcpu.set_sregs(sregs)
