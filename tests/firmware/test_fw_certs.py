"""The platform's certificate chain, verified by a parser written here from the raw field offsets
of sev-reference 7 (not by sevwire, which the firmware signs with), plus PEK_CSR /
PEK_CERT_IMPORT ownership, the ATTESTATION report and GET_ID."""

from __future__ import annotations

import hashlib
import os
import struct

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from fw_flows import OUT_SPA, export_pdh, init_platform, launch
from fw_support import SCRATCH
from sevwire import (
    Attestation,
    Cmd,
    GetId,
    PdhCertExport,
    PekCertImport,
    PekCsr,
    PlatformStatus,
    SevCert,
    Status,
    Usage,
    sign_sev_cert,
)

# -- an independent reader of the raw formats -----------------------------------------------------


def le(b: bytes) -> int:
    return int.from_bytes(b, "little")


class RawSev:
    """A SEV certificate read straight from its offsets."""

    def __init__(self, raw: bytes) -> None:
        assert len(raw) == 0x824
        self.raw = raw
        self.version, self.api_major, self.api_minor = struct.unpack_from("<IBB", raw, 0)
        self.usage, self.algo, self.curve = struct.unpack_from("<III", raw, 8)
        self.slots = [struct.unpack_from("<II", raw, off) + (raw[off + 8:off + 8 + 512],)
                      for off in (0x414, 0x61C)]

    def ec_key(self) -> ec.EllipticCurvePublicKey:
        assert self.curve == 2  # P-384
        x, y = le(self.raw[0x14:0x14 + 72]), le(self.raw[0x5C:0x5C + 72])
        return ec.EllipticCurvePublicNumbers(x, y, ec.SECP384R1()).public_key()

    def slot_by(self, usage: int) -> tuple[int, int, bytes]:
        matches = [s for s in self.slots if s[0] == usage]
        assert len(matches) == 1, f"no single signature by usage 0x{usage:x}"
        return matches[0]

    def check_ecdsa_by(self, usage: int, signer: ec.EllipticCurvePublicKey) -> None:
        _, algo, sig = self.slot_by(usage)
        assert algo == 0x002  # ECDSA-SHA256
        der = encode_dss_signature(le(sig[:72]), le(sig[72:144]))
        signer.verify(der, self.raw[:0x414], ec.ECDSA(hashes.SHA256()))


class RawAmd:
    """An AMD (ARK/ASK) certificate read straight from its offsets."""

    def __init__(self, raw: bytes) -> None:
        (self.version, self.key_id, self.cert_id, self.usage, _,
         self.e_bits, self.n_bits) = struct.unpack_from("<I16s16sI16sII", raw, 0)
        e_len, n_len = self.e_bits // 8, self.n_bits // 8
        assert len(raw) == 64 + e_len + 2 * n_len
        self.signed = raw[:64 + e_len + n_len]
        self.e = le(raw[64:64 + e_len])
        self.n = le(raw[64 + e_len:64 + e_len + n_len])
        self.sig = raw[64 + e_len + n_len:]

    def key(self) -> rsa.RSAPublicKey:
        return rsa.RSAPublicNumbers(self.e, self.n).public_key()


def pss384_verify(key: rsa.RSAPublicKey, sig_le: bytes, data: bytes) -> None:
    key.verify(sig_le[::-1], data, padding.PSS(padding.MGF1(hashes.SHA384()), 48), hashes.SHA384())


def verify_chain(pdh_raw: bytes, chain_raw: bytes, ask_raw: bytes, ark_raw: bytes) -> dict[str, RawSev]:
    pdh = RawSev(pdh_raw)
    pek, oca, cek = (RawSev(chain_raw[i * 0x824:(i + 1) * 0x824]) for i in range(3))
    ark, ask = RawAmd(ark_raw), RawAmd(ask_raw)
    # AMD root: 4096-bit, ARK self-signed, ASK certified by the ARK's key id
    assert (ark.usage, ask.usage, ark.n_bits, ask.n_bits) == (0x0, 0x13, 4096, 4096)
    assert ark.cert_id == ark.key_id and ask.cert_id == ark.key_id
    pss384_verify(ark.key(), ark.sig, ark.signed)
    pss384_verify(ark.key(), ask.sig, ask.signed)
    # CEK: signed by the ASK with RSA-PSS-SHA384 (algo 0x101), little-endian in sig1
    assert (cek.usage, cek.algo) == (0x1004, 0x002)
    usage, algo, sig = cek.slots[0]
    assert (usage, algo) == (0x13, 0x101)
    pss384_verify(ask.key(), sig[:512], cek.raw[:0x414])
    # OCA self-signed, PEK by OCA (sig1) and CEK (sig2), PDH by PEK
    assert (oca.usage, pek.usage, pdh.usage) == (0x1001, 0x1002, 0x1003)
    assert (pek.algo, pdh.algo) == (0x002, 0x003)
    oca.check_ecdsa_by(0x1001, oca.ec_key())
    pek.check_ecdsa_by(0x1001, oca.ec_key())
    pek.check_ecdsa_by(0x1004, cek.ec_key())
    assert pek.slots[0][0] == 0x1001 and pek.slots[1][0] == 0x1004
    pdh.check_ecdsa_by(0x1002, pek.ec_key())
    for cert in (pdh, pek, oca, cek):
        assert (cert.version, cert.api_major, cert.api_minor) == (1, 0, 24)
    return {"pdh": pdh, "pek": pek, "oca": oca, "cek": cek}


# -- tests ----------------------------------------------------------------------------------------


def test_pdh_cert_export_chain_verifies_independently(mb, fw):
    init_platform(mb)
    pdh, chain = export_pdh(mb)
    ask, ark = fw.export_amd_chain()
    verify_chain(pdh, chain, ask, ark)


def test_independent_verifier_catches_tampering(mb, fw):
    """The verifier above can fail: a flipped key byte or a chain from another chip is refused."""
    init_platform(mb)
    pdh, chain = export_pdh(mb)
    ask, ark = fw.export_amd_chain()
    bad = bytearray(pdh)
    bad[0x14] ^= 1
    with pytest.raises((InvalidSignature, ValueError)):
        verify_chain(bytes(bad), chain, ask, ark)
    bad_chain = bytearray(chain)
    bad_chain[0x824 * 2 + 0x20] ^= 1  # CEK key
    with pytest.raises((InvalidSignature, ValueError)):
        verify_chain(pdh, bytes(bad_chain), ask, ark)


def test_pdh_cert_export_lengths(mb, fw, port):
    init_platform(mb)
    port.write(OUT_SPA, b"\xAA" * 16)
    for pdh_len, chain_len in ((0, 0), (2084, 6251), (2083, 6252)):
        status, out = mb.call(Cmd.PDH_CERT_EXPORT, PdhCertExport(OUT_SPA, pdh_len, OUT_SPA + 0x1000, chain_len))
        assert status == Status.INVALID_LEN and (out.pdh_len, out.chain_len) == (2084, 6252)
        assert port.read(OUT_SPA, 16) == b"\xAA" * 16
    status, out = mb.call(Cmd.PDH_CERT_EXPORT, PdhCertExport(OUT_SPA, 9999, OUT_SPA + 0x1000, 9999))
    assert status == Status.SUCCESS and (out.pdh_len, out.chain_len) == (2084, 6252)
    status = mb.status(Cmd.PDH_CERT_EXPORT, PdhCertExport(1 << 50, 2084, OUT_SPA, 6252))
    assert status == Status.INVALID_ADDRESS


def test_pdh_gen_rotates_only_the_pdh(mb, fw):
    init_platform(mb)
    pdh1, chain1 = export_pdh(mb)
    assert mb.status(Cmd.PDH_GEN) == Status.SUCCESS
    pdh2, chain2 = export_pdh(mb)
    assert pdh1 != pdh2 and chain1 == chain2
    verify_chain(pdh2, chain2, *fw.export_amd_chain())


def _owner_sign(csr: bytes) -> tuple[bytes, bytes, ec.EllipticCurvePrivateKey]:
    oca_key = ec.generate_private_key(ec.SECP384R1())
    oca = SevCert.from_public_key(oca_key.public_key(), Usage.OCA, api_major=0, api_minor=24)
    oca = sign_sev_cert(oca, oca_key, Usage.OCA, slot=1)
    pek = sign_sev_cert(SevCert.decode(csr), oca_key, Usage.OCA, slot=1)
    return pek.encode(), oca.encode(), oca_key


PEK_SPA, OCA_SPA = SCRATCH + 0x6000, SCRATCH + 0x7000


def _import(mb, port, pek: bytes, oca: bytes, pek_len: int = 2084, oca_len: int = 2084) -> int:
    port.write(PEK_SPA, pek)
    port.write(OCA_SPA, oca)
    return mb.status(Cmd.PEK_CERT_IMPORT, PekCertImport(PEK_SPA, pek_len, OCA_SPA, oca_len))


def _csr(mb, port) -> bytes:
    status, out = mb.call(Cmd.PEK_CSR, PekCsr(OUT_SPA, 0))
    assert status == Status.INVALID_LEN and out.len == 2084
    status, out = mb.call(Cmd.PEK_CSR, PekCsr(OUT_SPA, 4096))
    assert status == Status.SUCCESS and out.len == 2084
    return port.read(OUT_SPA, 2084)


def test_take_ownership_with_pek_csr_and_import(mb, fw, port):
    init_platform(mb)
    _, chain_before = export_pdh(mb)
    csr = _csr(mb, port)
    raw = RawSev(csr)
    assert raw.raw[:0x414] == chain_before[:0x414]  # the PEK body
    assert all(s[0] == 0x1000 and s[1] == 0 and s[2] == bytes(512) for s in raw.slots)
    pek, oca, oca_key = _owner_sign(csr)
    assert _import(mb, port, pek, oca) == Status.SUCCESS
    _, status = mb.call(Cmd.PLATFORM_STATUS, PlatformStatus())
    assert status.owner == 1
    pdh, chain = export_pdh(mb)
    certs = verify_chain(pdh, chain, *fw.export_amd_chain())
    assert certs["oca"].raw == oca
    certs["pek"].check_ecdsa_by(0x1001, oca_key.public_key())
    assert _import(mb, port, pek, oca) == Status.ALREADY_OWNED
    # PEK_GEN gives the platform back to itself, with a new PEK
    assert mb.status(Cmd.PEK_GEN) == Status.SUCCESS
    _, status = mb.call(Cmd.PLATFORM_STATUS, PlatformStatus())
    assert status.owner == 0
    pdh2, chain2 = export_pdh(mb)
    assert chain2[:0x414] != chain[:0x414]
    verify_chain(pdh2, chain2, *fw.export_amd_chain())


def test_import_refusals_change_nothing(mb, fw, port):
    init_platform(mb)
    pdh, chain = export_pdh(mb)
    csr = _csr(mb, port)
    pek, oca, _ = _owner_sign(csr)
    assert _import(mb, port, pek, oca, pek_len=2083) == Status.INVALID_LEN
    # a PEK that is not this platform's (the owner signed some other key)
    other_key = ec.generate_private_key(ec.SECP384R1())
    foreign = SevCert.from_public_key(other_key.public_key(), Usage.PEK, api_major=0, api_minor=24)
    foreign_pek, foreign_oca, _ = _owner_sign(foreign.encode())
    assert _import(mb, port, foreign_pek, foreign_oca) == Status.INVALID_CERTIFICATE
    # the PEK signed by one OCA, presented with another
    _, other_oca, _ = _owner_sign(csr)
    assert _import(mb, port, pek, other_oca) == Status.BAD_SIGNATURE
    # garbage
    assert _import(mb, port, os.urandom(2084), os.urandom(2084)) == Status.INVALID_CERTIFICATE
    # an OCA that is not an OCA
    assert _import(mb, port, pek, csr) == Status.INVALID_CERTIFICATE
    assert export_pdh(mb) == (pdh, chain)
    _, status = mb.call(Cmd.PLATFORM_STATUS, PlatformStatus())
    assert status.owner == 0


def test_attestation_report(mb, fw, port):
    init_platform(mb)
    image = os.urandom(128)
    launched = launch(mb, 5, image, 0x100000, policy=0x3)
    mnonce = os.urandom(16)
    status, out = mb.call(Cmd.ATTESTATION, Attestation(launched.handle, OUT_SPA, mnonce, 100))
    assert status == Status.INVALID_LEN and out.len == 208
    status, out = mb.call(Cmd.ATTESTATION, Attestation(launched.handle, OUT_SPA, mnonce, 208))
    assert status == Status.SUCCESS and out.len == 208
    report = port.read(OUT_SPA, 208)
    assert report[:16] == mnonce
    assert report[0x10:0x30] == hashlib.sha256(image).digest()
    assert struct.unpack_from("<III", report, 0x30) == (0x3, 0x1002, 0x002)
    _, chain = export_pdh(mb)
    pek = RawSev(chain[:0x824]).ec_key()
    der = encode_dss_signature(le(report[0x40:0x88]), le(report[0x88:0xD0]))
    pek.verify(der, report[:0x34], ec.ECDSA(hashes.SHA256()))


def test_get_id(mb, fw, port, chip):
    status, out = mb.call(Cmd.GET_ID, GetId(OUT_SPA, 10))
    assert status == Status.INVALID_LEN and out.len == 64
    status, out = mb.call(Cmd.GET_ID, GetId(OUT_SPA, 128))
    assert status == Status.SUCCESS and out.len == 64
    assert port.read(OUT_SPA, 64) == chip.chip_id
    assert mb.status(Cmd.GET_ID, GetId(1 << 60, 64)) == Status.INVALID_ADDRESS

