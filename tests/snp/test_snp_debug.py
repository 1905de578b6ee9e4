"""Debugging an SNP guest through the PSP (SNP_DBG_DECRYPT / SNP_DBG_ENCRYPT, driven by
hv.kvm.sev_snp.SnpGuest) on the whole machine: a tiny guest launched through the PSP, running on a
real CPU with the RMP checked, reads and writes its memory while the hypervisor debugs it."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from hv.hw.cpu import GuestControl
from hv.hw.exits import IoExit, ShutdownExit
from hv.hw.machine import Machine, MachineConfig
from hv.hw.rmp import RmpEntry
from hv.kvm import Kvm, KvmError
from hv.kvm import exits as K
from hv.kvm.sev import FirmwareError, SevDevice
from hv.kvm.sev_snp import SnpGuest, rmp_make_private, snp_init
from hv.vmm.vmm import Vmm, VmmConfig
from sevwire import SNP_POLICY_DEFAULT, Cmd, SnpDbgDecrypt, SnpDbgEncrypt, SnpPolicy, Status
from snpvm import PVALIDATE_GPA, PVALIDATE_STUB
from tinyvm import CBIT, CODE, CODE_GPA, DATA_GPA, DATA_PAGES, MAILBOX_GPA, PD, PDPT, PML4, PT

PAGE = 0x1000
DEBUG = SNP_POLICY_DEFAULT | SnpPolicy.DEBUG
DATA1 = DATA_GPA + PAGE
LAUNCHED = bytes(range(256)) * 16  # what every data page holds at launch
GUESTS = Path(__file__).resolve().parents[2] / "guests"


class DebuggedVm:
    """TinyVm's guest (mailbox loop, PVALIDATE stub, identity-mapped private data pages) as an
    SNP VM of the real machine: its private pages are launched through the PSP under `policy`,
    the mailbox page stays shared, and the CPU runs it with the RMP checked."""

    def __init__(self, machine: Machine, kvm: Kvm, dev: SevDevice, policy: int):
        self.machine = machine
        self.vm = vm = kvm.create_vm("sev-snp", cbitpos=CBIT)
        vm.set_user_memory_region(0, 0, 2 << 20)
        c, P, RW = 1 << CBIT, 1, 2
        pt = [0] * 512
        pt[CODE_GPA >> 12] = CODE_GPA | P | c
        pt[MAILBOX_GPA >> 12] = MAILBOX_GPA | P | RW
        for i in range(DATA_PAGES):
            pt[(DATA_GPA >> 12) + i] = DATA_GPA + i * PAGE | P | RW | c
        tables = {PML4: PDPT | P | RW | c, PDPT: PD | P | RW | c, PD: PT | P | RW | c}
        for gpa, entry in tables.items():
            vm.write_gpa(gpa, struct.pack("<Q", entry).ljust(PAGE, b"\0"))
        vm.write_gpa(PT, struct.pack("<512Q", *pt))
        vm.write_gpa(CODE_GPA, CODE.ljust(PVALIDATE_GPA - CODE_GPA, b"\xcc") + PVALIDATE_STUB)
        for i in range(DATA_PAGES):
            vm.write_gpa(DATA_GPA + i * PAGE, LAUNCHED)
        self.guest = SnpGuest(vm, dev, policy)
        self.guest.launch_start()
        for gpa in (CODE_GPA, PML4, PDPT, PD, PT, *(DATA_GPA + i * PAGE for i in range(DATA_PAGES))):
            self.guest.launch_update(gpa)
        self.guest.launch_finish()
        self.cpu = machine.new_cpu(GuestControl(asid=vm.asid, npt=vm.npt, sev=True, sev_snp=True,
                                                cbitpos=CBIT))
        self.cpu.set_sregs({"cr3": PML4})

    def spa(self, gpa: int) -> int:
        return self.vm.gpa_to_spa(gpa)

    def run_command(self, op: int, va: int, value: int = 0):
        self.machine.host.write(self.spa(MAILBOX_GPA), struct.pack("<QQQ", op, va, value))
        self.cpu.set_regs({"rip": CODE_GPA})
        return self.cpu.run()

    def _answer(self, e, offset: int = 0x18) -> int:
        assert isinstance(e, IoExit) and e.port == 0x80, e
        return struct.unpack("<Q", self.machine.host.read(self.spa(MAILBOX_GPA) + offset, 8))[0]

    def guest_write(self, va: int, value: int) -> None:
        self._answer(self.run_command(0, va, value))

    def guest_read(self, va: int) -> int:
        return self._answer(self.run_command(1, va))

    def pvalidate(self, va: int) -> tuple[int, int]:
        """PVALIDATE (4 KiB, validate) in the guest: (EAX, CF)."""
        self.machine.host.write(self.spa(MAILBOX_GPA), struct.pack("<QQQ", va, 0, 1))
        self.cpu.set_regs({"rip": PVALIDATE_GPA})
        e = self.cpu.run()
        return self._answer(e) & 0xFFFFFFFF, self._answer(e, 0x20)


@pytest.fixture
def host(psp_state):
    machine = Machine(MachineConfig(dram_size=32 << 20, psp_state=psp_state))
    kvm = Kvm(machine)
    dev = SevDevice(kvm)
    snp_init(dev)
    dev.ensure_init(es=True)
    return machine, kvm, dev


@pytest.fixture
def debuggable(host):
    return DebuggedVm(*host, DEBUG)


def _fw_status(err: pytest.ExceptionInfo) -> Status:
    return Status(err.value.status)


def _snapshot(vm: DebuggedVm, gpas=(DATA_GPA, DATA1)):
    return ([vm.vm.read_gpa(g, PAGE) for g in gpas], [vm.machine.rmpread(vm.spa(g)) for g in gpas])


# -- a guest that allows debugging ------------------------------------------------------------------


def test_decrypt_returns_what_the_running_guest_wrote(debuggable):
    """Scenario: the guest stores a value at run time; the hypervisor sees ciphertext in DRAM,
    the PSP gives it the plaintext, and the guest runs on, its page untouched."""
    vm = debuggable
    value = 0x0123456789ABCDEF
    vm.guest_write(DATA_GPA + 0x18, value)
    raw = vm.vm.read_gpa(DATA_GPA, PAGE)
    assert value.to_bytes(8, "little") not in raw and raw != LAUNCHED
    rmp = vm.machine.rmpread(vm.spa(DATA_GPA))
    page = vm.guest.dbg_decrypt(DATA_GPA, PAGE)
    assert page[0x18:0x20] == value.to_bytes(8, "little")
    assert page[:0x18] + page[0x20:] == LAUNCHED[:0x18] + LAUNCHED[0x20:]
    assert vm.guest.dbg_decrypt(DATA_GPA + 0x1C, 4) == (value >> 32).to_bytes(4, "little")
    across = vm.guest.dbg_decrypt(DATA_GPA + PAGE - 8, 16)  # two pages, two commands
    assert across == LAUNCHED[-8:] + LAUNCHED[:8]
    assert vm.machine.rmpread(vm.spa(DATA_GPA)) == rmp and rmp.validated
    assert vm.guest_read(DATA_GPA + 0x18) == value
    # The plaintext left host memory with the call: the driver's page is zero again.
    assert vm.machine.host.read(vm.guest._debug_page(), PAGE) == bytes(PAGE)


def test_encrypt_reaches_the_guest_once_it_validates_the_page(debuggable):
    """Scenario: a debugger writes into a guest page. The page comes back unvalidated; the guest
    validates it again and then reads the new bytes, next to what it had written itself."""
    vm = debuggable
    vm.guest_write(DATA1, 0x1111)
    vm.guest.dbg_encrypt(DATA1 + 0x40, b"DEBUGGER")
    assert vm.machine.rmpread(vm.spa(DATA1)) == RmpEntry(assigned=True, asid=vm.vm.asid, gpa=DATA1)
    assert vm.pvalidate(DATA1) == (0, 0)
    assert vm.guest_read(DATA1 + 0x40) == int.from_bytes(b"DEBUGGER", "little")
    assert vm.guest_read(DATA1) == 0x1111
    assert vm.guest.dbg_decrypt(DATA1 + 0x48, 8) == LAUNCHED[0x48:0x50]


def test_a_debug_write_is_never_silent(debuggable):
    """Scenario: the guest touches the page the debugger wrote without validating it again: #VC
    (vector 29; TinyVm has no IDT, so it ends in a triple fault naming the vector)."""
    vm = debuggable
    vm.guest.dbg_encrypt(DATA1, bytes(PAGE))
    e = vm.run_command(1, DATA1)
    assert isinstance(e, ShutdownExit) and "exception 29" in e.reason


def test_driver_refuses_to_debug_write_a_page_the_guest_does_not_own(debuggable):
    vm = debuggable
    before = vm.vm.read_gpa(MAILBOX_GPA, PAGE)
    with pytest.raises(KvmError, match="not a private page"):
        vm.guest.dbg_encrypt(MAILBOX_GPA, b"x" * 16)  # shared: the hypervisor writes it itself
    assert vm.vm.read_gpa(MAILBOX_GPA, PAGE) == before
    assert not vm.machine.rmpread(vm.spa(MAILBOX_GPA)).assigned
    # A range that ends in a shared page is refused before its private page is taken away.
    last = DATA_GPA + (DATA_PAGES - 1) * PAGE
    after = last + PAGE  # not assigned to the guest: never launched
    rmp = vm.machine.rmpread(vm.spa(last))
    with pytest.raises(KvmError, match=f"{after:#x}"):
        vm.guest.dbg_encrypt(after - 8, b"y" * 16)
    assert vm.machine.rmpread(vm.spa(last)) == rmp and rmp.validated


# -- a guest that does not ------------------------------------------------------------------------


def test_default_policy_is_policy_failure_and_nothing_changes(host):
    """Scenario: the same requests against a guest launched with the default policy (no DEBUG):
    refused, the guest's page keeps its contents and stays validated, and it runs on."""
    vm = DebuggedVm(*host, SNP_POLICY_DEFAULT)
    vm.guest_write(DATA_GPA + 8, 0xFEED)
    before = _snapshot(vm)
    with pytest.raises(FirmwareError) as err:
        vm.guest.dbg_decrypt(DATA_GPA, PAGE)
    assert _fw_status(err) is Status.POLICY_FAILURE
    with pytest.raises(FirmwareError) as err:
        vm.guest.dbg_encrypt(DATA_GPA, b"\0" * 16)
    assert _fw_status(err) is Status.POLICY_FAILURE
    assert _snapshot(vm) == before
    assert vm.machine.host.read(vm.guest._debug_page(), PAGE) == bytes(PAGE)
    # Refused before any address is looked at, whatever the buffer says.
    st, _ = vm.guest.dev.issue(Cmd.SNP_DBG_DECRYPT, SnpDbgDecrypt(vm.guest.gctx, 3, 5), check=False)
    assert st == Status.POLICY_FAILURE
    assert vm.guest_read(DATA_GPA + 8) == 0xFEED


# -- malformed requests and other guests ------------------------------------------------------------


def test_malformed_requests_change_nothing(debuggable):
    vm = debuggable
    g, dev = vm.guest, vm.guest.dev
    dst = g._debug_page()
    guest_page, shared = vm.spa(DATA_GPA), vm.spa(MAILBOX_GPA)
    before = _snapshot(vm)
    cases = [
        (Cmd.SNP_DBG_DECRYPT, SnpDbgDecrypt(g.gctx, guest_page + 0x10, dst), Status.INVALID_ADDRESS),
        (Cmd.SNP_DBG_DECRYPT, SnpDbgDecrypt(g.gctx, guest_page, dst + 0x10), Status.INVALID_ADDRESS),
        (Cmd.SNP_DBG_DECRYPT, SnpDbgDecrypt(g.gctx, 1 << 40, dst), Status.INVALID_ADDRESS),
        (Cmd.SNP_DBG_DECRYPT, SnpDbgDecrypt(g.gctx, shared, dst), Status.INVALID_PAGE_STATE),
        (Cmd.SNP_DBG_DECRYPT, SnpDbgDecrypt(g.gctx, g.gctx, dst), Status.INVALID_PAGE_STATE),
        (Cmd.SNP_DBG_DECRYPT, SnpDbgDecrypt(g.gctx, guest_page, vm.spa(DATA1)),
         Status.INVALID_PAGE_STATE),
        (Cmd.SNP_DBG_DECRYPT, SnpDbgDecrypt(dst, guest_page, dst), Status.INVALID_GUEST),
        (Cmd.SNP_DBG_ENCRYPT, SnpDbgEncrypt(g.gctx, dst, guest_page), Status.INVALID_PAGE_STATE),
        (Cmd.SNP_DBG_ENCRYPT, SnpDbgEncrypt(g.gctx, dst, shared), Status.INVALID_PAGE_STATE),
        (Cmd.SNP_DBG_ENCRYPT, SnpDbgEncrypt(g.gctx, dst + 8, guest_page), Status.INVALID_ADDRESS),
        (Cmd.SNP_DBG_ENCRYPT, SnpDbgEncrypt(g.gctx + PAGE, dst, guest_page), Status.INVALID_GUEST),
    ]
    for cmd, buf, status in cases:
        st, _ = dev.issue(cmd, buf, check=False)
        assert Status(st) is status, (cmd.name, buf)
        assert _snapshot(vm) == before
        assert vm.machine.host.read(dst, PAGE) == bytes(PAGE)
    assert vm.guest_read(DATA_GPA) == int.from_bytes(LAUNCHED[:8], "little")


@pytest.mark.parametrize("b_policy", [DEBUG, SNP_POLICY_DEFAULT], ids=["b-debug", "b-no-debug"])
def test_one_guests_context_never_opens_another_guests_page(host, b_policy):
    """Scenario: guest A allows debugging, and the hypervisor names guest B's pages with A's
    context, hoping the PSP decrypts (or encrypts) them with A's key. Each is refused, no byte
    lands anywhere, and B runs on with its memory as it was."""
    a, b = DebuggedVm(*host, DEBUG), DebuggedVm(*host, b_policy)
    b.guest_write(DATA_GPA, 0xB0B)
    b_page, b_pre = b.spa(DATA_GPA), b.spa(DATA1)
    rmp_make_private(b.machine, b_pre, b.vm.asid, DATA1, immutable=True)  # B's page, Pre-guest
    before = _snapshot(b)
    out = a.guest._debug_page()
    for buf in (SnpDbgDecrypt(a.guest.gctx, b_page, out), SnpDbgDecrypt(a.guest.gctx, b_pre, out)):
        st, _ = a.guest.dev.issue(Cmd.SNP_DBG_DECRYPT, buf, check=False)
        assert st == Status.INVALID_PAGE_OWNER
    a.machine.host.write(out, b"A's plaintext!!!" * 256)
    st, _ = a.guest.dev.issue(Cmd.SNP_DBG_ENCRYPT, SnpDbgEncrypt(a.guest.gctx, out, b_pre),
                              check=False)
    assert st == Status.INVALID_PAGE_OWNER
    assert a.machine.host.read(out, PAGE) == b"A's plaintext!!!" * 256
    assert _snapshot(b) == before
    # B's own context is the only way in, and only if B allowed it.
    st, _ = b.guest.dev.issue(Cmd.SNP_DBG_DECRYPT, SnpDbgDecrypt(b.guest.gctx, b_page, out),
                              check=False)
    assert st == (Status.SUCCESS if b_policy & SnpPolicy.DEBUG else Status.POLICY_FAILURE)
    assert (a.machine.host.read(out, 8) == (0xB0B).to_bytes(8, "little")) == (st == Status.SUCCESS)
    assert b.guest_read(DATA_GPA) == 0xB0B


# -- a real guest image, end to end ----------------------------------------------------------------


@pytest.mark.parametrize("policy", [DEBUG, SNP_POLICY_DEFAULT], ids=["debug", "no-debug"])
def test_hello_under_a_debugger(psp_state, policy):
    """Scenario: at hello's first exit the hypervisor asks the PSP for its VMSA and for the page
    holding its greeting. With DEBUG it gets both (SNPActive in sev_features, the greeting);
    without, POLICY_FAILURE. Either way the guest runs to its end undisturbed."""
    seen: dict[str, object] = {}

    def debugger(vmm, e):
        if isinstance(e, K.Io) and not seen:
            guest = vmm.sev
            try:
                seen["vmsa"] = guest.dbg_decrypt_spa(vmm.vcpu.vmsa_spa)
                seen["rodata"] = guest.dbg_decrypt(0x102000, PAGE)  # hello.img's .rodata
            except FirmwareError as err:
                seen["error"] = Status(err.status)
        return False

    vmm = Vmm(VmmConfig(image=(GUESTS / "hello.img").read_bytes(), vm_type="sev-snp",
                        policy=policy, psp_state=psp_state, on_exit=debugger))
    result = vmm.run()
    vmm.close()
    assert result.exit_code == 0 and "Hello from an hv guest!" in result.serial, result
    if policy & SnpPolicy.DEBUG:
        assert int.from_bytes(seen["vmsa"][0x3B0:0x3B8], "little") & 1  # sev_features.SNPActive
        assert b"Hello from an hv guest!" in seen["rodata"]
    else:
        assert seen == {"error": Status.POLICY_FAILURE}
