"""The PSP's non-volatile state: the identity survives a restart, PLATFORM_RESET replaces only the
owner part, writes are atomic and private, and a damaged file is a clear NvStoreError."""

from __future__ import annotations

import hashlib
import json
import os
import stat

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from firmware import Firmware, FirmwareError, NvStoreError
from firmware._nvstore import NvStore
from fw_flows import OUT_SPA, export_pdh, init_platform
from fw_support import Mailbox, MemPort
from sevwire import Cmd, GetId, PekCertImport, PekCsr, PlatformStatus, SevCert, Status, Usage, sign_sev_cert


def _restart(nv_path) -> tuple[Firmware, Mailbox]:
    """A new machine reading the same state file (no chip given: it must come from the file)."""
    port = MemPort()
    fw = Firmware(port, nv_path)
    return fw, Mailbox(fw, port)


def _chip_id(mb: Mailbox) -> bytes:
    assert mb.status(Cmd.GET_ID, GetId(OUT_SPA, 64)) == Status.SUCCESS
    return mb.port.read(OUT_SPA, 64)


def _owner(mb: Mailbox) -> int:
    _, status = mb.call(Cmd.PLATFORM_STATUS, PlatformStatus())
    return status.owner


def _take_ownership(mb: Mailbox) -> bytes:
    mb.call(Cmd.PEK_CSR, PekCsr(OUT_SPA, 2084))
    csr = mb.port.read(OUT_SPA, 2084)
    key = ec.generate_private_key(ec.SECP384R1())
    oca = sign_sev_cert(SevCert.from_public_key(key.public_key(), Usage.OCA), key, Usage.OCA)
    pek = sign_sev_cert(SevCert.decode(csr), key, Usage.OCA, slot=1)
    mb.port.write(OUT_SPA, pek.encode())
    mb.port.write(OUT_SPA + 0x1000, oca.encode())
    assert mb.status(Cmd.PEK_CERT_IMPORT, PekCertImport(OUT_SPA, 2084, OUT_SPA + 0x1000, 2084)) == Status.SUCCESS
    return oca.encode()


def test_identity_survives_restart(mb, fw, nv_path):
    init_platform(mb)
    oca = _take_ownership(mb)
    pdh, chain = export_pdh(mb)
    chip_id = _chip_id(mb)
    amd = fw.export_amd_chain()

    fw2, mb2 = _restart(nv_path)
    assert fw2.platform_state == 0  # volatile state starts over
    assert _chip_id(mb2) == chip_id and fw2.export_amd_chain() == amd
    init_platform(mb2)
    assert export_pdh(mb2) == (pdh, chain)
    assert chain[0x824:2 * 0x824] == oca
    assert _owner(mb2) == 1


def test_in_memory_only_writes_nothing(tmp_path, chip, monkeypatch):
    monkeypatch.chdir(tmp_path)
    port = MemPort()
    fw = Firmware(port, None, chip=chip)
    mb = Mailbox(fw, port)
    init_platform(mb)
    assert mb.status(Cmd.PEK_GEN) == Status.SUCCESS
    assert list(tmp_path.iterdir()) == []


def test_platform_reset_new_owner_same_chip(mb, fw, nv_path):
    init_platform(mb)
    _take_ownership(mb)
    pdh, chain = export_pdh(mb)
    chip_id = _chip_id(mb)
    assert mb.status(Cmd.SHUTDOWN) == Status.SUCCESS
    assert mb.status(Cmd.PLATFORM_RESET) == Status.SUCCESS

    fw2, mb2 = _restart(nv_path)
    init_platform(mb2)
    pdh2, chain2 = export_pdh(mb2)
    assert _owner(mb2) == 0
    assert pdh2 != pdh
    assert chain2[:0x824] != chain[:0x824] and chain2[0x824:2 * 0x824] != chain[0x824:2 * 0x824]
    assert chain2[2 * 0x824:] == chain[2 * 0x824:]  # the CEK is fused
    assert _chip_id(mb2) == chip_id


def test_state_file_is_private_and_written_atomically(mb, fw, nv_path):
    init_platform(mb)
    for _ in range(3):
        assert mb.status(Cmd.PDH_GEN) == Status.SUCCESS
    assert stat.S_IMODE(nv_path.stat().st_mode) == 0o600
    lock = nv_path.with_name(nv_path.name + ".lock")  # the lock file stays, empty
    assert sorted(p.name for p in nv_path.parent.iterdir()) == [nv_path.name, lock.name]  # no temporaries
    assert lock.stat().st_size == 0
    doc = json.loads(nv_path.read_text())
    assert doc["format"] == "hv-psp-nv" and doc["version"] == 1


def test_failed_write_keeps_the_old_identity(mb, fw, monkeypatch):
    init_platform(mb)
    before = export_pdh(mb)

    def full_disk(self, body):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(NvStore, "save_record", full_disk)
    assert mb.status(Cmd.PDH_GEN) == Status.HWERROR_PLATFORM
    assert mb.status(Cmd.PEK_GEN) == Status.HWERROR_PLATFORM
    assert export_pdh(mb) == before


def _rewrite_body(path, edit) -> None:
    doc = json.loads(path.read_text())
    edit(doc["body"])
    doc["sha256"] = hashlib.sha256(json.dumps(doc["body"], sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    path.write_text(json.dumps(doc))


def _swap_pdh_cert(body):
    body["owner"]["pdh_cert"] = body["owner"]["oca_cert"]


def _drop_pek_key(body):
    del body["owner"]["pek_key"]


def _bad_pem(body):
    body["chip"]["cek_key"] = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"


def _other_ark(body):
    cert = bytearray.fromhex(body["chip"]["ark_cert"])
    cert[100] ^= 1
    body["chip"]["ark_cert"] = cert.hex()


def _ownership_lie(body):
    body["owner"]["externally_owned"] = True


CORRUPTIONS = {
    "empty": lambda p: p.write_bytes(b""),
    "truncated": lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]),
    "binary": lambda p: p.write_bytes(os.urandom(300)),
    "not an object": lambda p: p.write_text("[1, 2]"),
    "other format": lambda p: p.write_text(json.dumps({"format": "x", "version": 1})),
    "future version": lambda p: p.write_text(p.read_text().replace('"version": 1', '"version": 2')),
    "checksum": lambda p: p.write_text(p.read_text().replace('"externally_owned": false', '"externally_owned": true')),
    "swapped cert": lambda p: _rewrite_body(p, _swap_pdh_cert),
    "missing key": lambda p: _rewrite_body(p, _drop_pek_key),
    "bad pem": lambda p: _rewrite_body(p, _bad_pem),
    "broken ark": lambda p: _rewrite_body(p, _other_ark),
    "ownership lie": lambda p: _rewrite_body(p, _ownership_lie),
}


@pytest.mark.parametrize("damage", CORRUPTIONS.values(), ids=CORRUPTIONS.keys())
def test_corrupt_state_file_is_a_typed_error(fw, nv_path, damage):
    damage(nv_path)
    with pytest.raises(NvStoreError) as info:
        Firmware(MemPort(), nv_path)
    assert isinstance(info.value, FirmwareError)
    assert info.value.status == Status.SECURE_DATA_INVALID
    assert str(info.value)


def test_unreadable_path_is_a_typed_error(tmp_path):
    directory = tmp_path / "a-directory"
    directory.mkdir()
    with pytest.raises(NvStoreError):
        Firmware(MemPort(), directory)
