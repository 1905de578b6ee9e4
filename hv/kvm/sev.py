"""The SEV driver (/dev/sev and KVM_MEMORY_ENCRYPT_OP): PSP commands through the mailbox.

Like Linux's ccp driver, the hypervisor writes a command buffer into its own memory and rings
the PSP's doorbell; the firmware parses the buffer. Every byte crosses as the SEV API defines it
(sevwire), so the hypervisor only ever handles what a real one does: handles, policies, physical
addresses, certificates and blobs the guest owner made. No key passes through here.
"""

from __future__ import annotations

from sevwire import (Activate, Cmd, CommandBuffer, DbgDecrypt, DbgEncrypt, Deactivate,
                     Decommission, GetId, GuestStatus, Init, LaunchFinish, LaunchMeasure,
                     LaunchSecret, LaunchStart, LaunchUpdateData, LaunchUpdateVmsa, PdhCertExport,
                     PekCertImport, PekCsr, PlatformStatus, Status)

__all__ = ["FirmwareError", "PspError", "SevDevice", "SevGuest"]

_PAGE = 0x1000
TMR_SIZE = 1 << 20


class FirmwareError(Exception):
    """A PSP command failed; shown as QEMU shows it: command, code, name, hint."""

    def __init__(self, cmd: int, status: int):
        self.cmd: int | None = cmd      # None for PspError: no command failed, the PSP did
        self.status: int | None = status
        try:
            name, hint = Status(status).name, Status(status).hint
        except ValueError:
            name, hint = "UNKNOWN", "an undocumented status code"
        try:
            cname = Cmd(cmd).name
        except ValueError:
            cname = f"command {cmd:#x}"
        super().__init__(f"{cname} failed: firmware error {status:#x} ({name}): {hint}")


class PspError(FirmwareError):
    """The PSP itself is unusable (e.g. its non-volatile state is corrupt)."""

    def __init__(self, message: str):
        Exception.__init__(self, message)
        self.cmd = None
        self.status = None


class SevDevice:
    """/dev/sev: platform commands, plus the transport every guest command uses."""

    def __init__(self, kvm):
        self.kvm = kvm
        self._mailbox = kvm.machine.psp
        self._host = kvm.machine.host
        self.es_initialized = False
        self._tmr: int | None = None

    # -- transport ---------------------------------------------------------------------------------------
    def put(self, data: bytes) -> int:
        """Copy a blob into the hypervisor's memory for the firmware to read; return its SPA."""
        spa = self.kvm.alloc_host_buffer(max(len(data), 16))
        if data:
            self._host.write(spa, data)
        return spa

    def get(self, spa: int, length: int) -> bytes:
        return self._host.read(spa, length)

    def issue(self, cmd: int, buf: CommandBuffer | None = None, check: bool = True):
        """Write `buf`, ring the doorbell, return (status, buffer as the firmware left it)."""
        try:
            self._mailbox.boot()  # the PSP powers on at its first command
        except Exception as e:  # the PSP's own boot failed: nothing a command could fix
            raise PspError(f"the PSP did not start: {e}") from e
        if buf is None:
            status = self._mailbox.issue(int(cmd), 0)
            out = None
        else:
            spa = self.put(buf.pack())
            status = self._mailbox.issue(int(cmd), spa)
            out = type(buf).unpack(self.get(spa, type(buf).SIZE))
        if check and status != Status.SUCCESS:
            raise FirmwareError(int(cmd), status)
        return status, out

    # -- platform ------------------------------------------------------------------------------------------
    def init(self, es: bool = True) -> None:
        """INIT (with SEV-ES and its 1 MiB trusted memory region when `es`), as KVM does at load."""
        if es:
            if self._tmr is None:
                self._tmr = self.kvm.alloc(TMR_SIZE, align=TMR_SIZE)
            self.issue(Cmd.INIT, Init(flags=1, tmr_paddr=self._tmr, tmr_len=TMR_SIZE))
        else:
            self.issue(Cmd.INIT, Init())
        self.es_initialized = es
        # As the Linux driver does: "prepare for first SEV guest launch after INIT".
        self.issue(Cmd.DF_FLUSH)

    def ensure_init(self, es: bool = True) -> None:
        st = self.platform_status()
        if st.state == 0:
            self.init(es)
        else:
            self.es_initialized = bool(st.config & 1)

    def platform_status(self) -> PlatformStatus:
        return self.issue(Cmd.PLATFORM_STATUS, PlatformStatus())[1]

    def shutdown(self) -> None:
        self.issue(Cmd.SHUTDOWN)

    def platform_reset(self) -> None:
        self.issue(Cmd.PLATFORM_RESET)

    def pek_gen(self) -> None:
        self.issue(Cmd.PEK_GEN)

    def pdh_gen(self) -> None:
        self.issue(Cmd.PDH_GEN)

    def df_flush(self) -> None:
        self.issue(Cmd.DF_FLUSH)

    def pek_csr(self) -> bytes:
        spa = self.put(bytes(2084))
        _st, out = self.issue(Cmd.PEK_CSR, PekCsr(address=spa, len=2084))
        return self.get(spa, out.len)

    def pek_cert_import(self, pek: bytes, oca: bytes) -> None:
        self.issue(Cmd.PEK_CERT_IMPORT, PekCertImport(pek_paddr=self.put(pek), pek_len=len(pek),
                                                       oca_paddr=self.put(oca), oca_len=len(oca)))

    def pdh_cert_export(self) -> tuple[bytes, bytes]:
        """(PDH, PEK||OCA||CEK)."""
        pdh, chain = self.put(bytes(2084)), self.put(bytes(3 * 2084))
        _st, out = self.issue(Cmd.PDH_CERT_EXPORT, PdhCertExport(pdh_paddr=pdh, pdh_len=2084,
                                                                  chain_paddr=chain, chain_len=3 * 2084))
        return self.get(pdh, out.pdh_len), self.get(chain, out.chain_len)

    def get_id(self) -> bytes:
        spa = self.put(bytes(128))
        _st, out = self.issue(Cmd.GET_ID, GetId(address=spa, len=128))
        return self.get(spa, out.len)

    def amd_chain(self) -> tuple[bytes, bytes]:
        """(ASK, ARK): public certificates of the emulated AMD root (what AMD's site serves)."""
        return self.kvm.machine.kds.amd_chain()

    def vcek(self) -> bytes:
        """The ASK-signed VCEK certificate (X.509 DER) that SNP attestation reports verify with."""
        return self.kvm.machine.kds.vcek()

    def kds_chain(self) -> tuple[bytes, bytes]:
        """(ASK, ARK) as X.509 DER, the form AMD's key distribution service serves: the same keys
        as amd_chain()'s AMD-format certificates."""
        return self.kvm.machine.kds.kds_chain()

    def snp_certificates(self) -> bytes:
        """The certificate table of the SNP extended guest request: the VCEK, the ASK and the
        ARK, all X.509 DER as AMD's key server serves them (what user space hands KVM for its
        guests, SNP_SET_EXT_CONFIG)."""
        from sevwire import (SNP_CERT_ARK_GUID, SNP_CERT_ASK_GUID, SNP_CERT_VCEK_GUID,
                             snp_cert_table)

        ask, ark = self.kds_chain()
        return snp_cert_table([(SNP_CERT_VCEK_GUID, self.vcek()), (SNP_CERT_ASK_GUID, ask),
                               (SNP_CERT_ARK_GUID, ark)])

    def export_certificates(self) -> dict[str, bytes]:
        """Every public certificate of the platform, under the file names `sevctl export` uses
        (plus vcek.der for SNP reports): what a guest owner needs to verify this platform."""
        pdh, chain = self.pdh_cert_export()
        ask, ark = self.amd_chain()
        return {"pdh.cert": pdh, "pek.cert": chain[0:2084], "oca.cert": chain[2084:4168],
                "cek.cert": chain[4168:6252], "ask.cert": ask, "ark.cert": ark,
                "vcek.der": self.vcek()}


class SevGuest:
    """KVM_SEV_* operations of one encrypted VM (the kernel side of QEMU's sev-guest object)."""

    def __init__(self, vm, dev: SevDevice, policy: int):
        self.vm = vm
        self.dev = dev
        self.policy = policy
        self.handle = 0
        self.measurement: bytes | None = None
        self.mnonce: bytes | None = None

    def _spa_ranges(self, gpa: int, length: int) -> list[tuple[int, int]]:
        """Host-physically contiguous pieces of a guest range (what KVM gets by pinning pages):
        one piece per memory slot the range crosses, since each slot is contiguous host memory."""
        out: list[tuple[int, int]] = []
        for spa, n in self.vm.pieces(gpa, length):
            if out and out[-1][0] + out[-1][1] == spa:
                out[-1] = (out[-1][0], out[-1][1] + n)
            else:
                out.append((spa, n))
        return out

    def launch_start(self, godh_cert: bytes | None = None, session: bytes | None = None) -> int:
        ls = LaunchStart(handle=0, policy=self.policy,
                         gdh_cert_paddr=self.dev.put(godh_cert) if godh_cert else 0,
                         gdh_cert_len=len(godh_cert) if godh_cert else 0,
                         session_paddr=self.dev.put(session) if session else 0,
                         session_len=len(session) if session else 0)
        _st, out = self.dev.issue(Cmd.LAUNCH_START, ls)
        self.handle = out.handle
        # KVM binds the ASID right after LAUNCH_START (sev_bind_asid).
        self.dev.issue(Cmd.ACTIVATE, Activate(handle=self.handle, asid=self.vm.asid))
        return self.handle

    def launch_update_data(self, gpa: int, length: int) -> None:
        for spa, n in self._spa_ranges(gpa, length):
            self.dev.issue(Cmd.LAUNCH_UPDATE_DATA, LaunchUpdateData(handle=self.handle, paddr=spa, len=n))

    def launch_update_vmsa(self, vcpu, vmsa: bytes) -> int:
        """KVM_SEV_LAUNCH_UPDATE_VMSA for one vCPU: put its initial save area in a fresh host page,
        have the PSP measure and encrypt it in place, and point the vCPU's VMCB at it. From here
        on the vCPU's state is protected (Vcpu.guest_state_protected). Returns the page's SPA.

        KVM builds the page from its register cache (sev_es_sync_vmsa); hv takes the page the
        VMM built with hv.boot.initial_vmsa, so the guest owner can predict it from the image."""
        if len(vmsa) != _PAGE:
            raise ValueError("a VMSA is one 4096-byte page")
        if vcpu.guest_state_protected:
            raise ValueError(f"vCPU {vcpu.index} already has an encrypted VMSA")
        spa = self.vm.kvm.alloc(_PAGE)
        self.dev._host.write(spa, vmsa)
        try:
            self.dev.issue(Cmd.LAUNCH_UPDATE_VMSA, LaunchUpdateVmsa(handle=self.handle, paddr=spa, len=_PAGE))
        except FirmwareError:
            self.vm.kvm.free(spa, _PAGE)
            raise
        vcpu.attach_vmsa(spa)
        return spa

    def launch_measure(self) -> tuple[bytes, bytes]:
        spa = self.dev.put(bytes(48))
        _st, out = self.dev.issue(Cmd.LAUNCH_MEASURE, LaunchMeasure(handle=self.handle, paddr=spa, len=48))
        blob = self.dev.get(spa, 48)
        self.measurement, self.mnonce = blob[:32], blob[32:48]
        return self.measurement, self.mnonce

    def launch_secret(self, header: bytes, data: bytes, gpa: int) -> None:
        ranges = self._spa_ranges(gpa, len(data))
        if len(ranges) != 1:
            raise ValueError("the secret's guest range must be host-physically contiguous")
        self.dev.issue(Cmd.LAUNCH_SECRET, LaunchSecret(
            handle=self.handle, hdr_paddr=self.dev.put(header), hdr_len=len(header),
            guest_paddr=ranges[0][0], guest_len=len(data),
            trans_paddr=self.dev.put(data), trans_len=len(data)))

    def launch_finish(self) -> None:
        self.dev.issue(Cmd.LAUNCH_FINISH, LaunchFinish(handle=self.handle))

    def guest_status(self) -> GuestStatus:
        return self.dev.issue(Cmd.GUEST_STATUS, GuestStatus(handle=self.handle))[1]

    def dbg_decrypt(self, gpa: int, length: int) -> bytes:
        """Plaintext of guest memory through the PSP; refused (POLICY_FAILURE) under NODBG."""
        out = b""
        for spa, n in self._spa_ranges(gpa, length):
            lo, hi = spa & ~15, (spa + n + 15) & ~15
            dst = self.dev.put(bytes(hi - lo))
            self.dev.issue(Cmd.DBG_DECRYPT, DbgDecrypt(handle=self.handle, src=lo, dst=dst, len=hi - lo))
            out += self.dev.get(dst, hi - lo)[spa - lo:spa - lo + n]
        return out

    def dbg_decrypt_spa(self, spa: int, length: int = 0x1000) -> bytes:
        """DBG_DECRYPT of a host range outside guest memory (the VMSA), through the mailbox."""
        dst = self.dev.put(bytes(length))
        self.dev.issue(Cmd.DBG_DECRYPT, DbgDecrypt(handle=self.handle, src=spa, dst=dst, len=length))
        return self.dev.get(dst, length)

    def dbg_encrypt(self, gpa: int, data: bytes) -> None:
        pos = 0
        for spa, n in self._spa_ranges(gpa, len(data)):
            if spa % 16 or n % 16:
                raise ValueError("DBG_ENCRYPT works on 16-byte aligned ranges")
            src = self.dev.put(data[pos:pos + n])
            self.dev.issue(Cmd.DBG_ENCRYPT, DbgEncrypt(handle=self.handle, src=src, dst=spa, len=n))
            pos += n

    def decommission(self) -> None:
        """Tear down as KVM does: DEACTIVATE, WBINVD + DF_FLUSH, DECOMMISSION."""
        if not self.handle:
            return
        self.dev.issue(Cmd.DEACTIVATE, Deactivate(handle=self.handle), check=False)
        self.vm.kvm.machine.flush_caches()
        self.dev.issue(Cmd.DF_FLUSH, check=False)
        self.dev.issue(Cmd.DECOMMISSION, Decommission(handle=self.handle), check=False)
        self.handle = 0
