"""SEV-SNP secret release, the VMM's side: the port 0x502 device reads the guest's request block
as the hypervisor sees guest memory, asks the guest owner (hv in-process, or --owner-exec) and
writes the answer back; every malformed request is a status, never an exception.

The guest's side is played here, as docs/guest-abi.md describes it: a report over its own X25519
key (sealed with VMPCK0, read from the PSP's guest context), two pages shared through the RMP as
the guest's page-state change does, and the decryption derived independently of hv.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from hv import boot
from hv.cli import main as hv_main
from hv.kvm.sev_snp import rmp_make_shared
from hv.vmm.vmm import LaunchError, Vmm, VmmConfig
from sevwire import MsgReportReq, MsgReportRsp, MsgType, open_guest_message, seal_guest_message

GUESTS = Path(__file__).resolve().parents[2] / "guests"
REPO = GUESTS.parent
HELLO = (GUESTS / "hello.img").read_bytes()
SECRET = b"released only to the attested guest"
MAGIC, PORT = 0x52535648, 0x502
BLOCK = 0x200000  # two pages the guest shares for the request


class Guest:
    """The guest's half of the protocol, against a loaded Vmm."""

    def __init__(self, vmm: Vmm):
        self.vmm = vmm
        self.vmpck = vmm.machine.psp_firmware._ctx.snp_guests[vmm.sev.gctx].vmpck[0]
        self.seqno = 1
        self.key = X25519PrivateKey.generate()
        self.pub = self.key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    def report(self, report_data: bytes | None = None) -> bytes:
        data = self.pub + bytes(32) if report_data is None else report_data
        status, page = self.vmm.sev.guest_request(seal_guest_message(
            self.vmpck, self.seqno, MsgType.MSG_REPORT_REQ, MsgReportReq(data).encode()))
        assert status == 0
        self.seqno += 2
        return MsgReportRsp.decode(open_guest_message(self.vmpck, page)[1]).report

    def share(self, gpa: int, pages: int = 2) -> None:
        """What the hypervisor does on the guest's page-state change to shared."""
        for off in range(0, pages * 0x1000, 0x1000):
            rmp_make_shared(self.vmm.machine, self.vmm.vm.gpa_to_spa(gpa + off))

    def request(self, gpa: int = BLOCK, report: bytes | None = None, magic: int = MAGIC,
                version: int = 1, size: int = 4) -> dict:
        """Fill the block, OUT its GPA to port 0x502; the block's header as the guest reads it."""
        report = self.report() if report is None else report
        self.vmm.vm.write_gpa(gpa, struct.pack("<III", magic, version, 0xFFFFFFFF).ljust(0x200, b"\0")
                              + report)
        self.vmm.pio.write(PORT, size, gpa)
        return self.read(gpa)

    def read(self, gpa: int = BLOCK) -> dict:
        blk = self.vmm.vm.read_gpa(gpa, 0x2000)
        status, n = struct.unpack_from("<II", blk, 8)
        return {"status": status, "secret_len": n, "owner_pub": blk[0x10:0x30], "iv": blk[0x30:0x3C],
                "tag": blk[0x40:0x50], "reason": blk[0x100:0x200].split(b"\0")[0].decode(),
                "ciphertext": blk[0x1000:0x1000 + min(n, 4096)]}

    def decrypt(self, answer: dict) -> bytes:
        shared = self.key.exchange(X25519PublicKey.from_public_bytes(answer["owner_pub"]))
        key = hashlib.sha256(b"hv-secret-release-v1" + shared + self.pub + answer["owner_pub"]).digest()
        return AESGCM(key).decrypt(answer["iv"], answer["ciphertext"] + answer["tag"], None)


@pytest.fixture
def launched(psp_state):
    vmms = []

    def make(**kw) -> tuple[Vmm, Guest]:
        vmm = Vmm(VmmConfig(image=HELLO, vm_type="sev-snp", psp_state=psp_state, **kw))
        vmms.append(vmm)
        vmm.load()
        return vmm, Guest(vmm)

    yield make
    for vmm in vmms:
        vmm.close()


def _flags(vmm: Vmm) -> int:
    return struct.unpack_from("<I", vmm.vm.read_gpa(boot.BOOT_INFO_GPA + 0x1C, 4))[0]


def test_attested_guest_gets_its_secret(launched):
    """Scenario: the boot information page offers release; the guest's report over its own key
    gets the secret encrypted to that key; launch_info records the release; asking again with a
    fresh report is answered again, under a fresh owner key."""
    vmm, guest = launched(secret=SECRET)
    assert _flags(vmm) & 1 and vmm.launch_info["secret_release"]["offered"]
    guest.share(BLOCK)
    answer = guest.request()
    assert answer["status"] == 0 and answer["reason"] == "", answer
    assert answer["secret_len"] == len(SECRET) and answer["ciphertext"] != SECRET
    assert guest.decrypt(answer) == SECRET
    info = vmm.launch_info["secret_release"]
    assert info["released"] and info["requests"] == 1 and info["owner"] == "in-process"
    assert info["outcomes"][0]["result"] == "released" and info["outcomes"][0]["answered"]
    again = guest.request()
    assert again["status"] == 0 and again["owner_pub"] != answer["owner_pub"]
    assert guest.decrypt(again) == SECRET
    json.dumps(vmm.launch_info)  # what `hv run --json` prints


def test_malformed_requests_are_status_3_and_the_vmm_survives(launched):
    """Scenario: bad magic and version in a shared block get status 3 and a reason; a GPA that is
    unaligned, outside guest memory or a private page gets status 3 recorded and nothing written
    (there is no shared block to write into); a valid request afterwards is still answered."""
    vmm, guest = launched(secret=SECRET)
    guest.share(BLOCK)
    report = guest.report()
    answer = guest.request(magic=0x12345678, report=report)
    assert answer["status"] == 3 and "magic" in answer["reason"], answer
    answer = guest.request(version=2, report=report)
    assert answer["status"] == 3 and "version" in answer["reason"], answer

    mem = vmm.config.mem_size
    guest.share(0x300000, 1)  # a shared first page whose second page is still private
    vmm.vm.write_gpa(0x300000, struct.pack("<III", MAGIC, 1, 0xFFFFFFFF))
    dram_before = vmm.dump_guest_memory()
    for gpa in (BLOCK + 0x10, mem - 0x1000, mem, 0xFFFFF000):
        vmm.pio.write(PORT, 4, gpa)
    vmm.pio.write(PORT, 1, BLOCK)
    vmm.pio.write(PORT, 4, 0x100000)  # the image's first page: launched, validated, private
    vmm.pio.write(PORT, 4, 0x300000)
    assert vmm.dump_guest_memory() == dram_before
    outcomes = vmm.launch_info["secret_release"]["outcomes"]
    assert [o["status"] for o in outcomes] == [3] * 9
    assert not any(o["answered"] for o in outcomes[2:])
    assert "page-aligned" in outcomes[2]["reason"] and "32-bit" in outcomes[6]["reason"]
    assert "magic" in outcomes[7]["reason"] and "shared" in outcomes[8]["reason"]
    assert not vmm.launch_info["secret_release"]["released"]

    answer = guest.request(report=report)
    assert answer["status"] == 0 and guest.decrypt(answer) == SECRET


def test_refused_reports_get_the_owners_reason(launched):
    """Scenario: a report whose report_data tail is not zero, one that is not signed by this
    platform's VCEK, and one from a launch of another image are refused with status 1 and the
    owner's one-line reason in the block; nothing else is written."""
    vmm, guest = launched(secret=SECRET)
    guest.share(BLOCK)
    answer = guest.request(report=guest.report(guest.pub + b"\x01" * 32))
    assert answer["status"] == 1 and "32..63" in answer["reason"], answer
    assert answer["secret_len"] == 0 and answer["owner_pub"] == bytes(32)
    answer = guest.request(report=bytes(1184))
    assert answer["status"] == 1 and "VCEK -> report" in answer["reason"], answer
    # Another guest (compute.img) on the same platform: a valid report, the wrong measurement.
    other = Vmm(VmmConfig(image=(GUESTS / "compute.img").read_bytes(), vm_type="sev-snp",
                          psp_state=vmm.config.psp_state))
    try:
        other.load()
        foreign = Guest(other).report(guest.pub + bytes(32))
    finally:
        other.close()
    answer = guest.request(report=foreign)
    assert answer["status"] == 1 and "measurement" in answer["reason"], answer
    info = vmm.launch_info["secret_release"]
    assert not info["released"] and info["outcomes"][-1]["result"] == "refused"


def _owner_exec(vmm: Vmm, tmp_path: Path, *extra: str) -> str:
    certs = tmp_path / "certs"
    certs.mkdir(exist_ok=True)
    for name, data in vmm._snp_dev.export_certificates().items():
        (certs / name).write_bytes(data)
    (tmp_path / "secret.bin").write_bytes(SECRET)
    return " ".join([sys.executable, "-m", "hv.owner.exec", "--snp", "--chain", str(certs), "--secret",
                     str(tmp_path / "secret.bin"), *extra])


def test_owner_exec_answers_the_report(launched, tmp_path, monkeypatch):
    """Scenario: --owner-exec runs `python -m hv.owner.exec --snp` with {"report": hex}: its
    secret reaches the guest, its refusal is status 1, and an owner that answers nonsense or
    nothing at all is status 2 ("no secret to release")."""
    monkeypatch.setenv("PYTHONPATH", str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    monkeypatch.chdir(tmp_path)
    vmm, guest = launched(owner_exec="placeholder")
    assert _flags(vmm) & 1 and vmm.launch_info["secret_release"]["owner"] == "exec"
    guest.share(BLOCK)
    report = guest.report()
    image = ["--image", str(GUESTS / "hello.img"), "--cbitpos", str(vmm.vm.cbitpos)]
    vmm.config.owner_exec = _owner_exec(vmm, tmp_path, *image, "--policy", "0x30000")
    answer = guest.request(report=report)
    assert answer["status"] == 0, answer
    assert guest.decrypt(answer) == SECRET

    vmm.config.owner_exec = _owner_exec(vmm, tmp_path, *image, "--policy", "0x30001")
    answer = guest.request(report=report)
    assert answer["status"] == 1 and "policy" in answer["reason"], answer
    for command, words in (("echo not-json", "no JSON answer"),
                           ("echo '{\"owner_pub\": \"00\"}'", "answer must be"),
                           ("echo '{\"owner_pub\": \"00\", \"iv\": \"00\", \"ciphertext\": \"00\", \"tag\": \"00\"}'",
                            "owner_pub must be 32 bytes")):
        vmm.config.owner_exec = command
        answer = guest.request(report=report)
        assert answer["status"] == 2 and words in answer["reason"], (command, answer)
    assert vmm.launch_info["secret_release"]["released"]  # the first request was


def test_no_secret_configured_no_release(launched):
    """Scenario: without --secret-file or --owner-exec, flags bit 0 is clear and port 0x502 is
    not claimed: a write to it is ignored, as for any unclaimed port."""
    vmm, guest = launched()
    assert _flags(vmm) == 0 and vmm.secret_release is None
    assert vmm.launch_info["secret_release"] == {"offered": False, "released": False, "requests": 0,
                                                 "outcomes": []}
    guest.share(BLOCK)
    assert guest.request()["status"] == 0xFFFFFFFF


def test_sev_guests_get_no_release_port(psp_state):
    vmm = Vmm(VmmConfig(image=HELLO, vm_type="sev-es", secret=SECRET, psp_state=psp_state))
    try:
        vmm.load()
        assert vmm.secret_release is None and _flags(vmm) == 0
    finally:
        vmm.close()


@pytest.mark.parametrize("kw, words", [
    ({"session_dir": "."}, "SEV-SNP has no launch session"),
    ({"secret": SECRET, "owner_exec": "true"}, "not both"),
    ({"secret": b""}, "1..4096"),
    ({"secret": bytes(4097)}, "1..4096"),
])
def test_bad_configurations_are_refused(psp_state, kw, words):
    with pytest.raises(LaunchError, match=words):
        Vmm(VmmConfig(image=HELLO, vm_type="sev-snp", psp_state=psp_state, **kw))


def test_cli(psp_state, tmp_path):
    """Scenario: `hv run --sev-snp` takes --secret-file and reports the release in --json;
    --session is one line of bad usage (exit 2)."""
    state = tmp_path / "psp-state.json"
    shutil.copy(psp_state, state)
    runner = CliRunner(env={"HV_PSP_STATE": str(state)})
    (tmp_path / "s.bin").write_bytes(SECRET)
    r = runner.invoke(hv_main, ["run", str(GUESTS / "hello.img"), "--sev-snp", "--secret-file",
                                str(tmp_path / "s.bin"), "-q", "--json"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    release = json.loads(r.stdout)["launch"]["secret_release"]
    assert release["offered"] and release["requests"] == 0 and not release["released"]
    r = runner.invoke(hv_main, ["run", str(GUESTS / "hello.img"), "--sev-snp", "--session", str(tmp_path)])
    assert r.exit_code == 2 and "SEV-SNP has no launch session blob" in r.output, r.output
    r = runner.invoke(hv_main, ["run", str(GUESTS / "hello.img"), "--sev-snp", "--secret-file",
                                str(tmp_path / "s.bin"), "--owner-exec", "true"])
    assert r.exit_code == 2 and "not both" in r.output, r.output
    (tmp_path / "empty").write_bytes(b"")
    r = runner.invoke(hv_main, ["run", str(GUESTS / "hello.img"), "--sev-snp", "--secret-file",
                                str(tmp_path / "empty")])
    assert r.exit_code == 2 and "1..4096" in r.output and len(r.output.strip().splitlines()) == 1, r.output


# ---- end to end: guests/secret.img asks for its secret itself ----------------------------------


@pytest.fixture
def hv_run(psp_state, tmp_path, monkeypatch):
    """`hv run` on a copy of the platform; --owner-exec commands find this checkout's hv."""
    monkeypatch.setenv("PYTHONPATH", str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    state = tmp_path / "psp-state.json"
    shutil.copy(psp_state, state)
    runner = CliRunner(env={"HV_PSP_STATE": str(state)})

    def run(*args: str):
        r = runner.invoke(hv_main, list(args), catch_exceptions=False)
        out = json.loads(r.stdout) if "--json" in args else None
        return r, out

    run.state = state
    return run


def _secret_lines(serial: str) -> list[str]:
    return [ln for ln in serial.splitlines() if ln.startswith("secret")]


@pytest.mark.parametrize("size", [37, 4096])
def test_secret_guest_gets_its_secret_in_process(hv_run, tmp_path, size):
    """Scenario: `hv run --sev-snp --secret-file F guests/secret.img`: the guest makes its key,
    attests, asks on port 0x502 and prints the SHA-256 of exactly the file's bytes."""
    secret = os.urandom(size)
    (tmp_path / "s.bin").write_bytes(secret)
    r, out = hv_run("run", str(GUESTS / "secret.img"), "--sev-snp", "--secret-file",
                    str(tmp_path / "s.bin"), "-q", "--json")
    assert r.exit_code == 0, r.output
    assert _secret_lines(out["serial"]) == [f"secret-sha256: {hashlib.sha256(secret).hexdigest()}"]
    release = out["launch"]["secret_release"]
    assert release["released"] and release["requests"] == 1 and release["owner"] == "in-process"
    assert secret.hex() not in json.dumps(out)


def test_secret_guest_with_an_external_owner(hv_run, tmp_path):
    """Scenario: the README's --owner-exec line: `python -m hv.owner.exec --snp` with the
    exported chain and the image releases the secret; the same owner expecting another image
    refuses, and the guest says why in one line and exits 3."""
    secret = b"owner-exec released this"
    (tmp_path / "s.bin").write_bytes(secret)
    certs = tmp_path / "certs"
    r, _ = hv_run("psp", "export", "-o", str(certs))
    assert r.exit_code == 0, r.output
    owner = f"{sys.executable} -m hv.owner.exec --snp --chain {certs} --secret {tmp_path / 's.bin'} --image"
    r, out = hv_run("run", str(GUESTS / "secret.img"), "--sev-snp", "--owner-exec",
                    f"{owner} {GUESTS / 'secret.img'} --policy 0x30000", "-q", "--json")
    assert r.exit_code == 0, r.output
    assert _secret_lines(out["serial"]) == [f"secret-sha256: {hashlib.sha256(secret).hexdigest()}"]
    assert out["launch"]["secret_release"]["owner"] == "exec"

    r, out = hv_run("run", str(GUESTS / "secret.img"), "--sev-snp", "--owner-exec",
                    f"{owner} {GUESTS / 'hello.img'}", "-q", "--json")
    assert r.exit_code == 3 and out["guest_exit_code"] == 3, r.output
    lines = _secret_lines(out["serial"])
    assert len(lines) == 1 and lines[0].startswith("secret: no secret: "), lines
    assert "refused" in lines[0] and "measurement" in lines[0], lines
    assert "secret-sha256" not in out["serial"]
    release = out["launch"]["secret_release"]
    assert not release["released"] and release["outcomes"][0]["result"] == "refused"


def test_a_hypervisor_that_garbles_the_answer_gets_no_secret_out(psp_state):
    """Scenario: the hypervisor carries the answer but flips one ciphertext bit on the way
    back (or forges a release with its own key): AES-GCM fails in the guest, which says so and
    exits 3 without a secret."""
    from hv.kvm import exits as K

    def garble(vmm: Vmm, e) -> bool:
        if isinstance(e, K.Io) and e.port == PORT and not e.is_in:
            vmm.pio.write(e.port, e.size, e.data)
            ct = e.data + 0x1000
            vmm.vm.write_gpa(ct, bytes([vmm.vm.read_gpa(ct, 1)[0] ^ 1]))
            return True
        return False

    vmm = Vmm(VmmConfig(image=(GUESTS / "secret.img").read_bytes(), vm_type="sev-snp",
                        secret=SECRET, psp_state=psp_state, on_exit=garble))
    try:
        result = vmm.run()
    finally:
        vmm.close()
    assert result.guest_exit_code == 3, (result.serial, result.message)
    assert _secret_lines(result.serial) == ["secret: no secret: the secret does not authenticate"]
    assert result.launch["secret_release"]["released"]  # the owner did release it
