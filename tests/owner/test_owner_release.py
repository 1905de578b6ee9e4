"""SEV-SNP secret release, the owner's side: `release_secret` and `python -m hv.owner.exec --snp`
answer a real VCEK-signed report with the secret encrypted to the X25519 key in its report_data,
and refuse every report that is not the expected guest's.

The PSP's side is a real SNP launch on the emulated platform; the guest's side is played here:
its X25519 key, its MSG_REPORT_REQ sealed with VMPCK0 (read from the PSP's guest context, which
holds the same key as the guest's secrets page) and the decryption, derived independently of hv.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

import hv.owner
from hv.owner import OwnerInputError, release_secret
from sevwire import (SNP_POLICY_DEFAULT, MsgReportReq, MsgReportRsp, MsgType, SnpPageType,
                     open_guest_message, seal_guest_message, snp_extend)

SECRET = b"the SNP guest's disk key"
PAGE = bytes(range(256)) * 16
REPO = pathlib.Path(hv.owner.__file__).resolve().parents[2]


class Platform:
    """One launched SNP guest on the emulated platform, its exported certificates, and the
    guest's side of attestation. `pages` are what to launch, (gpa, contents, page type) in
    SNP_LAUNCH_UPDATE order (by default one NORMAL page and the secrets page); each 2 MiB that
    holds one of them is guest memory, and the VMSA page sits outside it, as KVM keeps it."""

    def __init__(self, state: str, certs_dir: pathlib.Path,
                 pages: list[tuple[int, bytes, int]] | None = None):
        from hv.hw.machine import Machine, MachineConfig
        from hv.kvm import Kvm
        from hv.kvm.sev import SevDevice
        from hv.kvm.sev_snp import SnpGuest, snp_init

        # The default launch's measurement, as the PAGE_INFO chain gives it (others: the caller's).
        self.measurement = None if pages is not None else snp_extend(
            snp_extend(bytes(48), PAGE, SnpPageType.NORMAL, 0x1000), b"", SnpPageType.SECRETS, 0x2000)
        if pages is None:
            pages = [(0x1000, PAGE, SnpPageType.NORMAL), (0x2000, bytes(4096), SnpPageType.SECRETS)]
        self.machine = Machine(MachineConfig(dram_size=32 << 20, psp_state=state))
        dev = SevDevice(Kvm(self.machine))
        snp_init(dev)
        dev.ensure_init(es=True)
        vm = dev.kvm.create_vm("sev-snp")
        bases = sorted({gpa & -(2 << 20) for gpa, _c, kind in pages if kind != SnpPageType.VMSA})
        for slot, base in enumerate(bases):
            vm.set_user_memory_region(slot, base, 2 << 20)
        self.guest = SnpGuest(vm, dev)
        self.guest.launch_start()
        for gpa, contents, kind in pages:
            if kind == SnpPageType.VMSA:
                spa = dev.kvm.alloc(4096)
                self.machine.host.write(spa, contents)
                self.guest.launch_update(gpa, kind, spa=spa)
            elif kind == SnpPageType.CPUID:
                self.guest.launch_update_cpuid(gpa, contents)
            else:
                vm.write_gpa(gpa, contents)
                self.guest.launch_update(gpa, kind)
        self.guest.launch_finish()
        self.vmpck = self.machine.psp_firmware._ctx.snp_guests[self.guest.gctx].vmpck[0]
        self.seqno = 1
        self.certs = dev.export_certificates()
        certs_dir.mkdir()
        for name, data in self.certs.items():
            (certs_dir / name).write_bytes(data)
        self.chain = certs_dir

    def report(self, report_data: bytes) -> bytes:
        """A report over `report_data`, as the guest gets it from SNP_GUEST_REQUEST."""
        msg = seal_guest_message(self.vmpck, self.seqno, MsgType.MSG_REPORT_REQ,
                                 MsgReportReq(report_data).encode())
        status, page = self.guest.guest_request(msg)
        assert status == 0
        self.seqno += 2
        return MsgReportRsp.decode(open_guest_message(self.vmpck, page)[1]).report


@pytest.fixture(scope="module")
def platform_snp(psp_state, tmp_path_factory):
    d = tmp_path_factory.mktemp("snp-owner")
    state = d / "psp-state.json"
    shutil.copy(psp_state, state)
    return Platform(str(state), d / "certs")


def guest_key() -> tuple[X25519PrivateKey, bytes]:
    key = X25519PrivateKey.generate()
    return key, key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def guest_open(key: X25519PrivateKey, guest_pub: bytes, answer: dict) -> bytes:
    """The guest's side of docs/guest-abi.md, written from the document, not from hv."""
    owner_pub = bytes.fromhex(answer["owner_pub"])
    shared = key.exchange(X25519PublicKey.from_public_bytes(owner_pub))
    assert shared != bytes(32)
    aes_key = hashlib.sha256(b"hv-secret-release-v1" + shared + guest_pub + owner_pub).digest()
    iv, tag = bytes.fromhex(answer["iv"]), bytes.fromhex(answer["tag"])
    assert len(owner_pub) == 32 and len(iv) == 12 and len(tag) == 16
    return AESGCM(aes_key).decrypt(iv, bytes.fromhex(answer["ciphertext"]) + tag, None)


# ---- release_secret --------------------------------------------------------------------------


def test_expected_guest_gets_the_secret_under_its_own_key(platform_snp):
    """Scenario: the report verifies against the exported chain and carries the expected
    measurement and policy; the answer decrypts with the guest's key and nothing else."""
    key, pub = guest_key()
    report = platform_snp.report(pub + bytes(32))
    answer = release_secret(report, platform_snp.chain, platform_snp.measurement, SECRET,
                            expected_policy=SNP_POLICY_DEFAULT)
    assert set(answer) == {"owner_pub", "iv", "ciphertext", "tag"}, answer
    assert guest_open(key, pub, answer) == SECRET
    assert bytes.fromhex(answer["ciphertext"]) != SECRET
    # Another key (the host's, say) cannot open it.
    other, _ = guest_key()
    with pytest.raises(Exception):
        guest_open(other, pub, answer)
    # Certificates in memory (as SevDevice.export_certificates returns them) work the same, and
    # every answer is to a fresh owner key and IV.
    again = release_secret(report, platform_snp.certs, platform_snp.measurement, SECRET)
    assert guest_open(key, pub, again) == SECRET
    assert again["owner_pub"] != answer["owner_pub"] and again["iv"] != answer["iv"]


def test_one_and_4096_byte_secrets(platform_snp):
    key, pub = guest_key()
    report = platform_snp.report(pub + bytes(32))
    for secret in (b"x", os.urandom(4096)):
        answer = release_secret(report, platform_snp.certs, platform_snp.measurement, secret)
        assert guest_open(key, pub, answer) == secret


def _other_ask_chain(platform_snp, tmp_path) -> pathlib.Path:
    """The same VCEK key, certified by an ASK that is not this platform's."""
    other = tmp_path / "other-chain"
    shutil.copytree(platform_snp.chain, other)
    real = x509.load_der_x509_certificate(platform_snp.certs["vcek.der"])
    forged = (x509.CertificateBuilder().subject_name(real.subject).issuer_name(real.issuer)
              .public_key(real.public_key()).serial_number(real.serial_number)
              .not_valid_before(real.not_valid_before_utc).not_valid_after(real.not_valid_after_utc)
              .sign(rsa.generate_private_key(65537, 2048), hashes.SHA384(),
                    rsa_padding=padding.PSS(padding.MGF1(hashes.SHA384()), 48)))
    (other / "vcek.der").write_bytes(forged.public_bytes(Encoding.DER))
    return other


def test_refusals(platform_snp, tmp_path):
    """Scenario: each way a report can fail to be the expected guest's is a one-line refusal
    naming the check, and no secret material."""
    _key, pub = guest_key()
    report = platform_snp.report(pub + bytes(32))
    meas = platform_snp.measurement

    def refused(answer: dict, words: str) -> None:
        assert list(answer) == ["refuse"], answer
        assert words in answer["refuse"] and "\n" not in answer["refuse"], answer

    refused(release_secret(report, platform_snp.chain, bytes(48), SECRET), "measurement")
    refused(release_secret(report, platform_snp.chain, meas, SECRET, expected_policy=0x30001), "policy")
    flipped = bytearray(report)
    flipped[0x50] ^= 1  # the first byte of report_data: the host swapping in its own key
    refused(release_secret(bytes(flipped), platform_snp.chain, meas, SECRET), "VCEK -> report")
    refused(release_secret(report, _other_ask_chain(platform_snp, tmp_path), meas, SECRET), "ASK -> VCEK")
    certs = dict(platform_snp.certs, **{"ark.cert": platform_snp.certs["ask.cert"]})
    refused(release_secret(report, certs, meas, SECRET), "ARK -> ARK")
    tail = platform_snp.report(pub + b"\x00" * 31 + b"\x01")
    refused(release_secret(tail, platform_snp.chain, meas, SECRET), "bytes 32..63 are not zero")
    # A small-order public key (all zeros) would make the shared secret all zeros.
    refused(release_secret(platform_snp.report(bytes(64)), platform_snp.chain, meas, SECRET), "all-zero")
    # ... and the same report with the right expectations is released.
    assert "ciphertext" in release_secret(report, platform_snp.chain, meas, SECRET,
                                          expected_policy=SNP_POLICY_DEFAULT)


@pytest.mark.parametrize("bad", ["short report", "measurement", "empty secret", "big secret",
                                 "no vcek", "bad ark", "policy", "policy bool"])
def test_unusable_input_raises(platform_snp, tmp_path, bad):
    _key, pub = guest_key()
    report = platform_snp.report(pub + bytes(32))
    args = {"report": report, "chain": platform_snp.certs, "expected_measurement": platform_snp.measurement,
            "secret": SECRET}
    kw = {}
    if bad == "short report":
        args["report"] = report[:-1]
    elif bad == "measurement":
        args["expected_measurement"] = bytes(32)
    elif bad == "empty secret":
        args["secret"] = b""
    elif bad == "big secret":
        args["secret"] = bytes(4097)
    elif bad == "no vcek":
        (tmp_path / "c").mkdir()
        for name in ("ark.cert", "ask.cert"):
            (tmp_path / "c" / name).write_bytes(platform_snp.certs[name])
        args["chain"] = tmp_path / "c"
    elif bad == "bad ark":
        args["chain"] = dict(platform_snp.certs, **{"ark.cert": b"not a certificate"})
    elif bad == "policy":
        kw["expected_policy"] = 1 << 64
    else:
        kw["expected_policy"] = True
    with pytest.raises(OwnerInputError) as info:
        release_secret(*args.values(), **kw)
    assert "\n" not in str(info.value)


# ---- python -m hv.owner.exec --snp -----------------------------------------------------------


def run_exec(tmp_path, stdin: str, *args: str, secret: bytes = SECRET):
    (tmp_path / "secret").write_bytes(secret)
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-m", "hv.owner.exec", "--snp", "--secret", str(tmp_path / "secret"), *args]
    return subprocess.run(cmd, input=stdin, capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=120)


def test_exec_releases_refuses_and_rejects(platform_snp, tmp_path):
    """Scenario: exit 0 with the secret for the expected report, 1 with a refusal for another
    measurement or policy, 2 with "bad request" for a request that is not {"report": hex1184}."""
    key, pub = guest_key()
    report = platform_snp.report(pub + bytes(32))
    request = json.dumps({"report": report.hex()})
    expect = ["--chain", str(platform_snp.chain), "--measurement", platform_snp.measurement.hex()]
    proc = run_exec(tmp_path, request, *expect, "--policy", hex(SNP_POLICY_DEFAULT))
    assert proc.returncode == 0, proc.stderr
    assert guest_open(key, pub, json.loads(proc.stdout)) == SECRET

    proc = run_exec(tmp_path, request, "--chain", str(platform_snp.chain), "--measurement", "00" * 48)
    assert proc.returncode == 1 and "measurement" in json.loads(proc.stdout)["refuse"], proc.stdout
    proc = run_exec(tmp_path, request, *expect, "--policy", "0x30001")
    assert proc.returncode == 1 and "policy" in json.loads(proc.stdout)["refuse"], proc.stdout

    for bad in ("not json", "[]", "{}", json.dumps({"report": 5}), json.dumps({"report": report[:-1].hex()}),
                json.dumps({"report": "zz" * 1184})):
        proc = run_exec(tmp_path, bad, *expect)
        assert proc.returncode == 2, (bad, proc.stdout, proc.stderr)
        assert json.loads(proc.stdout)["refuse"].startswith("bad request: "), proc.stdout


@pytest.mark.parametrize("args, words", [
    (["--measurement", "00" * 48], "--chain"),
    (["--chain", "CHAIN"], "exactly one of --image and --measurement"),
    (["--chain", "CHAIN", "--measurement", "00" * 47], "48 bytes"),
    (["--chain", "CHAIN", "--measurement", "00" * 48, "--tk", "tk.bin"], "--tk and --digest"),
    (["--chain", "CHAIN", "--digest", "00" * 32], "--tk and --digest"),
    (["--chain", "missing", "--measurement", "00" * 48], "no such file"),
    (["--chain", "CHAIN", "--measurement", "00" * 48, "--policy", "nope"], "--policy"),
    (["--chain", "CHAIN", "--image", "missing.img"], "no such file"),
    (["--chain", "CHAIN", "--measurement", "00" * 48, "SECRET"], "1..4096 bytes"),
])
def test_exec_bad_options_and_files(platform_snp, tmp_path, args, words):
    """Unusable options or files: one line on stderr, exit 2, nothing on stdout, stdin unread."""
    args = [str(platform_snp.chain) if a == "CHAIN" else a for a in args]
    secret = SECRET
    if args[-1] == "SECRET":
        args, secret = args[:-1], b""
    proc = run_exec(tmp_path, "{}", *args, secret=secret)
    assert proc.returncode == 2 and proc.stdout == "", (proc.stdout, proc.stderr)
    assert words in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_sev_mode_refuses_snp_options(tmp_path):
    (tmp_path / "tk.bin").write_bytes(bytes(32))
    (tmp_path / "secret").write_bytes(SECRET)
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-m", "hv.owner.exec", "--tk", "tk.bin", "--secret", "secret",
                           "--measurement", "00" * 48], input="{}", capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=60)
    assert proc.returncode == 2 and "add --snp" in proc.stderr, proc.stderr


def test_exec_with_image_against_a_vmm_launch(psp_state, tmp_path):
    """Scenario: the VMM launches hello.img under SEV-SNP; a report from that guest is released
    by `--image guests/hello.img` (the measurement hv.boot predicts) and refused for another
    image."""
    from hv.vmm.vmm import Vmm, VmmConfig

    guests = REPO / "guests"
    state = tmp_path / "psp-state.json"
    shutil.copy(psp_state, state)
    vmm = Vmm(VmmConfig(image=(guests / "hello.img").read_bytes(), vm_type="sev-snp", psp_state=str(state)))
    try:
        vmm.load()
        vmpck = vmm.machine.psp_firmware._ctx.snp_guests[vmm.sev.gctx].vmpck[0]
        key, pub = guest_key()
        status, page = vmm.sev.guest_request(seal_guest_message(
            vmpck, 1, MsgType.MSG_REPORT_REQ, MsgReportReq(pub + bytes(32)).encode()))
        assert status == 0
        report = MsgReportRsp.decode(open_guest_message(vmpck, page)[1]).report
        certs = tmp_path / "certs"
        certs.mkdir()
        for name, data in vmm._snp_dev.export_certificates().items():
            (certs / name).write_bytes(data)
        cbitpos = str(vmm.vm.cbitpos)
    finally:
        vmm.close()
    request = json.dumps({"report": report.hex()})
    common = ["--chain", str(certs), "--cbitpos", cbitpos, "--mem", "64M"]
    proc = run_exec(tmp_path, request, *common, "--image", str(guests / "hello.img"), "--policy", "0x30000")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert guest_open(key, pub, json.loads(proc.stdout)) == SECRET
    proc = run_exec(tmp_path, request, *common, "--image", str(guests / "compute.img"))
    assert proc.returncode == 1 and "measurement" in proc.stdout, proc.stdout
