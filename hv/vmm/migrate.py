"""Moving an encrypted guest: to another platform (migration) or into a file (a snapshot).

The source VMM stops the guest at a clean point (after it handled a port I/O exit and KVM
completed it), asks the PSP to wrap transport keys for the target's PDH (SEND_START) and sends
every page of guest memory through SEND_UPDATE_DATA, and under SEV-ES the VMSA through
SEND_UPDATE_VMSA. The target's PSP unwraps the keys with its PDH (RECEIVE_START), checks each
packet's MAC and writes it under the new guest's key. The hypervisor on either side carries only
ciphertext: a snapshot (`save`, `restore`) is a migration to this platform's own PDH, which the
host can store but not read.

What the hypervisor moves itself, in the clear as on real SEV: the pages it knows are shared
(the boot information page, and under SEV-ES the GHCB the guest registered), a plain SEV vCPU's
registers, the GHCB MSR, and its devices' state. Other pages a guest shares without saying so
travel as private pages and arrive as garbage (KVM needs the guest's page-encryption hypercall to
know them; hv's guests make none), so a guest should not rely on their old contents.

The stream is a set of files (a directory for --migrate-out, one tar file for --save):
  manifest.json   format, mode, memory size, C-bit position, policy, the exits so far, the vCPU
                  and device state, and the SHA-256 of every other file
  pdh.cert        the sender's PDH (the receiver's PSP needs it to unwrap the session)
  session.bin     the 128-byte session SEND_START made
  memory.bin      one record per private page: GPA u64 LE || packet header (52) || data (4096)
  shared.bin      one record per shared page: GPA u64 LE || the page as the hypervisor sees it
  vmsa.bin        SEV-ES: the VMSA packet: header (52) || data (4096)
The digests catch a stream damaged in transit; a hypervisor that fixes them up after changing a
packet is caught by the target's PSP (BAD_MEASUREMENT), so either way the target refuses.
"""

from __future__ import annotations

import hashlib
import io
import json
import struct
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from sevwire import PACKET_HEADER_SIZE

from hv import boot
from hv.kvm import Mode, exits as K
from hv.kvm import migrate as M
from hv.kvm.sev import FirmwareError, SevDevice
from hv.vmm.vmm import LaunchError, StopGuest, Vmm, VmmConfig

__all__ = ["FORMAT", "MigrationError", "Stream", "Target", "receive", "send_after", "target_from_export"]

FORMAT = "hv-sev-migration-1"
PAGE = M.PAGE
_GPA = struct.Struct("<Q")
_MEMORY_RECORD = _GPA.size + PACKET_HEADER_SIZE + PAGE
_SHARED_RECORD = _GPA.size + PAGE
_SENDABLE = (Mode.SEV, Mode.SEV_ES)
DEBUG_EXIT_PORT = 0x501


class MigrationError(LaunchError):
    """A guest could not be sent or received (exit status 3, one line)."""


# -- the stream ------------------------------------------------------------------------------------

@dataclass
class Stream:
    """The migration stream's files by name, and where it is stored."""

    files: dict[str, bytes] = field(default_factory=dict)

    def write(self, path: str | Path, *, single_file: bool) -> None:
        """Store the stream: a directory of files, or one tar file (a snapshot)."""
        p = Path(path)
        try:
            if single_file:
                with tarfile.open(p, "w") as tar:
                    for name, data in self.files.items():
                        info = tarfile.TarInfo(name)
                        info.size = len(data)
                        tar.addfile(info, io.BytesIO(data))
                return
            p.mkdir(parents=True, exist_ok=True)
            for name, data in self.files.items():
                (p / name).write_bytes(data)
        except OSError as e:
            raise MigrationError(f"cannot write the stream to {p}: {e.strerror or e}") from None

    @classmethod
    def read(cls, path: str | Path) -> "Stream":
        """Read a stream directory or snapshot file and check every file against the manifest."""
        p = Path(path)
        files: dict[str, bytes] = {}
        try:
            if p.is_dir():
                for child in sorted(p.iterdir()):
                    if child.is_file():
                        files[child.name] = child.read_bytes()
            else:
                with tarfile.open(p, "r") as tar:
                    for member in tar.getmembers():
                        if member.isfile():
                            files[member.name] = tar.extractfile(member).read()
        except (OSError, tarfile.TarError) as e:
            raise MigrationError(f"cannot read the stream {p}: {getattr(e, 'strerror', None) or e}") from None
        stream = cls(files)
        stream.check(str(p))
        return stream

    @property
    def manifest(self) -> dict:
        return json.loads(self.files["manifest.json"])

    def check(self, where: str) -> None:
        try:
            manifest = json.loads(self.files["manifest.json"])
            digests = manifest["files"]
            if manifest.get("format") != FORMAT:
                raise MigrationError(f"{where} is not an {FORMAT} stream")
        except (KeyError, TypeError, ValueError, UnicodeDecodeError):
            raise MigrationError(f"{where}: no readable manifest.json: not a migration stream, or a damaged one") from None
        for name, digest in digests.items():
            data = self.files.get(name)
            if data is None:
                raise MigrationError(f"{where}: {name} is missing")
            if hashlib.sha256(data).hexdigest() != digest:
                raise MigrationError(f"{where}: {name} does not match its digest in the manifest (damaged stream)")


# -- the source ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Target:
    """Where a guest goes: the target PSP's PDH, with its PEK||OCA||CEK and ASK||ARK when known."""

    pdh: bytes
    plat_certs: bytes = b""
    amd_certs: bytes = b""


def target_from_export(pdh_path: str | Path) -> Target:
    """The target named by its PDH certificate in a `hv psp export` directory. The guest owner's
    check runs first, as the SEV flow expects before SEND_START: every link of the chain beside
    it (ARK -> ASK -> CEK -> PEK -> PDH, OCA -> PEK) must verify, else MigrationError."""
    from hv.owner import OwnerError, verify_chain

    pdh_path = Path(pdh_path)
    directory = pdh_path.parent
    try:
        pdh = pdh_path.read_bytes()
        report = verify_chain(directory)
        files = {n: (directory / f"{n}.cert").read_bytes() for n in ("pdh", "pek", "oca", "cek", "ask", "ark")}
    except OwnerError as e:
        raise MigrationError(f"the target's certificates: {e} (export them with 'hv psp export')") from None
    except OSError as e:
        raise MigrationError(f"the target's certificates: {e.filename}: {e.strerror}") from None
    if pdh != files["pdh"]:
        raise MigrationError(f"{pdh_path} is not the pdh.cert of the chain beside it")
    bad = [f"{link.name} ({link.reason})" for link in report.links if not link.ok]
    if bad:
        raise MigrationError("the target's certificate chain does not verify: " + "; ".join(bad))
    return Target(pdh, files["pek"] + files["oca"] + files["cek"], files["ask"] + files["ark"])


def send_after(exits: int, where: str, *, single_file: bool, target: Target | None):
    """An exit hook (VmmConfig.on_exit) that, once the guest has made `exits` exits, sends it at
    the first port I/O exit (to `target`, or to this platform itself for a snapshot) into
    `where`, and ends the run with status 0. The guest must not end first."""
    def on_exit(vmm: Vmm, e) -> bool:
        count = sum(vmm.vcpu.exit_counts.values())
        if count < exits or not isinstance(e, K.Io) or e.port == DEBUG_EXIT_PORT:
            return False
        if e.is_in:
            e.data = vmm.pio.read(e.port, e.size)
        else:
            vmm.pio.write(e.port, e.size, e.data)
        stream = send(vmm, target)
        stream.write(where, single_file=single_file)
        what = "saved to" if target is None else "sent to"
        raise StopGuest("migrated", 0, f"guest {what} {where} after {count} exits "
                                       f"({len(stream.files['memory.bin']) // _MEMORY_RECORD} pages)")
    return on_exit


def send(vmm: Vmm, target: Target | None) -> Stream:
    """SEND_START .. SEND_FINISH of the stopped guest; the source guest is decommissioned."""
    vm, vcpu, sev = vmm.vm, vmm.vcpu, vmm.sev
    if vm.type not in _SENDABLE or sev is None:
        raise MigrationError(f"a {vm.type} guest cannot be sent (SEV and SEV-ES only; an SEV-SNP "
                             f"guest needs a migration agent)")
    vcpu.complete_exit()
    state = M.vcpu_state(vcpu)
    dev = sev.dev
    try:
        own_pdh, _chain = dev.pdh_cert_export()
        if target is None:
            target = Target(own_pdh)
        session = M.send_start(sev, target.pdh, target.plat_certs, target.amd_certs)
    except FirmwareError as e:
        raise MigrationError(str(e)) from None
    shared = _shared_pages(vm, state)
    memory, raw = bytearray(), bytearray()
    try:
        for gpa in range(0, vmm.config.mem_size, PAGE):
            if gpa in shared:
                raw += _GPA.pack(gpa) + vm.read_gpa(gpa, PAGE)
            else:
                header, trans = M.send_update_data(sev, gpa)
                memory += _GPA.pack(gpa) + header + trans
        files = {"pdh.cert": own_pdh, "session.bin": session, "memory.bin": bytes(memory),
                 "shared.bin": bytes(raw)}
        if vcpu.guest_state_protected:
            files["vmsa.bin"] = b"".join(M.send_update_vmsa(sev, vcpu))
        M.send_finish(sev)
    except FirmwareError as e:
        M.send_cancel(sev)
        raise MigrationError(str(e)) from None
    sev.decommission()
    manifest = {"format": FORMAT, "mode": str(vm.type), "mem_size": vmm.config.mem_size,
                "cbitpos": vm.cbitpos, "policy": sev.policy,
                "exits": sum(vcpu.exit_counts.values()), "vcpu": state,
                "devices": {"uart": vmm.uart.state(), "post": vmm.post.last},
                "files": {n: hashlib.sha256(d).hexdigest() for n, d in files.items()}}
    files["manifest.json"] = json.dumps(manifest, indent=1).encode()
    return Stream(files)


def _shared_pages(vm, state: dict) -> set[int]:
    """The pages the hypervisor knows the guest shares: the boot information page, and the
    GHCB an SEV-ES guest registered."""
    pages = {boot.BOOT_INFO_GPA}
    if state.get("ghcb_gpa") is not None:
        pages.add(state["ghcb_gpa"] & ~(PAGE - 1))
    return pages


# -- the target ------------------------------------------------------------------------------------

def receive(stream: Stream, config: VmmConfig) -> Vmm:
    """A VMM on this platform holding the received guest, ready for `run(load=False)`.
    `config` gives this platform's settings (PSP state, timeout, console); the guest's own
    (mode, memory size, C-bit position, policy) come from the stream."""
    manifest = stream.manifest
    try:
        mode, mem_size, cbitpos = manifest["mode"], int(manifest["mem_size"]), int(manifest["cbitpos"])
        policy, vcpu_state = int(manifest["policy"]), manifest["vcpu"]
        devices = manifest["devices"]
    except (KeyError, TypeError, ValueError) as e:
        raise MigrationError(f"the stream's manifest lacks {e}") from None
    if mode not in _SENDABLE:
        raise MigrationError(f"the stream holds a {mode!r} guest: only SEV and SEV-ES guests migrate")
    config.vm_type, config.mem_size, config.cbitpos, config.policy = mode, mem_size, cbitpos, policy
    config.image = b"\xf4"  # a placeholder: the guest arrives with its memory, no image is loaded
    try:
        boot.check_mem(mem_size)
        vmm = Vmm(config)
    except ValueError as e:
        raise MigrationError(f"the stream's guest does not fit: {e}") from None
    files = stream.files
    pdh, session = files.get("pdh.cert", b""), files.get("session.bin", b"")
    try:
        dev = SevDevice(vmm.kvm)
        dev.ensure_init(es=True)
        sev = M.receive_start(vmm.vm, dev, policy, pdh, session)
        vmm.sev = sev
        for gpa, header, trans in _records(files.get("memory.bin", b""), mem_size, packet=True):
            M.receive_update_data(sev, gpa, (header, trans))
        for gpa, page, _ in _records(files.get("shared.bin", b""), mem_size, packet=False):
            vmm.vm.write_gpa(gpa, page)
        if mode == Mode.SEV_ES:
            vmsa = files.get("vmsa.bin", b"")
            if len(vmsa) != PACKET_HEADER_SIZE + PAGE:
                raise MigrationError("an SEV-ES stream needs its VMSA packet (vmsa.bin)")
            M.receive_update_vmsa(sev, vmm.vcpu, (vmsa[:PACKET_HEADER_SIZE], vmsa[PACKET_HEADER_SIZE:]))
        M.receive_finish(sev)
        M.set_vcpu_state(vmm.vcpu, vcpu_state)
        vmm.uart.restore(devices["uart"])
        vmm.post.last = int(devices["post"])
    except FirmwareError as e:
        raise MigrationError(f"the target refused the guest: {e}") from None
    except (KeyError, TypeError, ValueError) as e:
        raise MigrationError(f"the stream's vCPU or device state is malformed: {e}") from None
    vmm.launch_info = {"mode": mode, "received": True, "handle": sev.handle, "asid": vmm.vm.asid,
                       "policy": policy, "exits_before": int(manifest.get("exits", 0))}
    return vmm


def _records(data: bytes, mem_size: int, *, packet: bool):
    """(gpa, header, data) of memory.bin, or (gpa, page, None) of shared.bin, bounds-checked."""
    size = _MEMORY_RECORD if packet else _SHARED_RECORD
    if len(data) % size:
        raise MigrationError(f"a page record of the stream is cut short ({len(data)} bytes)")
    for pos in range(0, len(data), size):
        (gpa,) = _GPA.unpack_from(data, pos)
        if gpa % PAGE or gpa >= mem_size:
            raise MigrationError(f"the stream names GPA {gpa:#x}, not a page of the guest's memory")
        body = data[pos + _GPA.size:pos + size]
        if packet:
            yield gpa, body[:PACKET_HEADER_SIZE], body[PACKET_HEADER_SIZE:]
        else:
            yield gpa, body, None

