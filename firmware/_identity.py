"""The platform identity: the key hierarchy of sev-reference 7 and the operations on it.

    ARK (RSA-4096, self-signed AMD cert)            emulated AMD root
     `-> ASK (RSA-4096, AMD cert signed by the ARK)  emulated AMD signing key
          `-> CEK (P-384, SEV cert; sig1 = ASK, RSA-PSS-SHA384, algo 0x101)   per chip
               `-> PEK (P-384; sig1 = OCA, sig2 = CEK)                       per owner
                    `-> PDH (P-384 ECDH key; sig1 = PEK)                    per owner
    OCA (P-384, self-signed when self-owned; else the owner's, imported)  signs the PEK

The chip part (``ChipIdentity``: chip id, ARK, ASK, CEK) stands for what AMD fuses and signs at
manufacture: it never changes, not even across PLATFORM_RESET.  The owner part (OCA, PEK, PDH,
ownership) is what PEK_GEN, PDH_GEN, PEK_CERT_IMPORT and PLATFORM_RESET replace.

On real hardware the ARK and ASK private keys live at AMD, and PDH_CERT_EXPORT's CEK carries no
signature (users fetch the ASK-signed CEK from AMD's key server).  Here the emulated AMD root is
part of the machine and the exported CEK is the ASK-signed one, so a guest owner can verify the
whole chain offline from PDH_CERT_EXPORT plus ``export_amd_chain()``.  RSA-4096 generation takes
seconds, so a ``ChipIdentity`` can be made once and handed to many firmware instances (tests).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from sevwire import (
    Algo,
    AmdCert,
    SevCert,
    SevWireError,
    SigSlot,
    Status,
    Usage,
    sign_amd_cert,
    sign_sev_cert,
    verify_amd_cert,
    verify_sev_cert,
)

from firmware._errors import CommandError, NvStoreError

__all__ = ["ChipIdentity", "OwnerIdentity", "PlatformIdentity", "AMD_USAGE_ARK", "AMD_USAGE_ASK"]

AMD_USAGE_ARK = Usage.ARK
AMD_USAGE_ASK = Usage.ASK
_CURVE = ec.SECP384R1()
_CHIP_ID_LEN = 64


def _pem(key: Any) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def _load_key(text: Any, kind: type, what: str) -> Any:
    if not isinstance(text, str):
        raise NvStoreError(f"PSP state: {what} key is missing")
    try:
        key = serialization.load_pem_private_key(text.encode(), password=None)
    except (ValueError, TypeError) as exc:
        raise NvStoreError(f"PSP state: {what} key does not parse ({exc})") from None
    if not isinstance(key, kind):
        raise NvStoreError(f"PSP state: {what} key has the wrong type")
    return key


def _load_hex(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise NvStoreError(f"PSP state: {what} is missing")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise NvStoreError(f"PSP state: {what} is not hex") from None


def _same_public(cert_key: Any, private_key: Any) -> bool:
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return cert_key.public_bytes(*fmt) == private_key.public_key().public_bytes(*fmt)


# -- chip (fused) identity ---------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class ChipIdentity:
    """What the chip carries from manufacture: its id, the CEK, and the (emulated) AMD root."""

    chip_id: bytes = field(repr=False)
    ark_key: rsa.RSAPrivateKey = field(repr=False)
    ask_key: rsa.RSAPrivateKey = field(repr=False)
    ark_cert: bytes = field(repr=False)
    ask_cert: bytes = field(repr=False)
    cek_key: ec.EllipticCurvePrivateKey = field(repr=False)
    cek_cert: bytes = field(repr=False)

    def __repr__(self) -> str:
        # Never print key material, not even through a test framework's pretty-printer.
        return f"ChipIdentity(chip_id={self.chip_id[:8].hex()}...)"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))

    @classmethod
    def generate(cls, api_major: int, api_minor: int) -> ChipIdentity:
        """Manufacture a chip: two RSA-4096 keys (slow: seconds), a P-384 CEK, a random id."""
        ark_key = rsa.generate_private_key(public_exponent=65537, key_size=4096)
        ask_key = rsa.generate_private_key(public_exponent=65537, key_size=4096)
        ark_id, ask_id = os.urandom(16), os.urandom(16)
        ark = sign_amd_cert(AmdCert.from_public_key(ark_key.public_key(), Usage.ARK, ark_id), ark_key)
        ask = sign_amd_cert(
            AmdCert.from_public_key(ask_key.public_key(), Usage.ASK, ask_id, certifying_id=ark_id),
            ark_key,
        )
        cek_key = ec.generate_private_key(_CURVE)
        cek = SevCert.from_public_key(cek_key.public_key(), Usage.CEK, Algo.ECDSA_SHA256,
                                      api_major, api_minor)
        cek = sign_sev_cert(cek, ask_key, Usage.ASK, Algo.RSA_SHA384, slot=1)
        return cls(os.urandom(_CHIP_ID_LEN), ark_key, ask_key, ark.encode(), ask.encode(),
                   cek_key, cek.encode())

    def to_record(self) -> dict[str, Any]:
        return {
            "chip_id": self.chip_id.hex(),
            "ark_key": _pem(self.ark_key),
            "ask_key": _pem(self.ask_key),
            "ark_cert": self.ark_cert.hex(),
            "ask_cert": self.ask_cert.hex(),
            "cek_key": _pem(self.cek_key),
            "cek_cert": self.cek_cert.hex(),
        }

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> ChipIdentity:
        """Rebuild and check: every certificate matches its key and the chain verifies."""
        chip_id = _load_hex(rec.get("chip_id"), "chip id")
        if len(chip_id) != _CHIP_ID_LEN:
            raise NvStoreError("PSP state: chip id has the wrong length")
        chip = cls(
            chip_id,
            _load_key(rec.get("ark_key"), rsa.RSAPrivateKey, "ARK"),
            _load_key(rec.get("ask_key"), rsa.RSAPrivateKey, "ASK"),
            _load_hex(rec.get("ark_cert"), "ARK certificate"),
            _load_hex(rec.get("ask_cert"), "ASK certificate"),
            _load_key(rec.get("cek_key"), ec.EllipticCurvePrivateKey, "CEK"),
            _load_hex(rec.get("cek_cert"), "CEK certificate"),
        )
        try:
            ark, ask = AmdCert.decode(chip.ark_cert), AmdCert.decode(chip.ask_cert)
            cek = SevCert.decode(chip.cek_cert)
            verify_amd_cert(ark, ark)
            verify_amd_cert(ask, ark)
            verify_sev_cert(cek, ask)
            pairs = ((ark, chip.ark_key), (ask, chip.ask_key), (cek, chip.cek_key))
            if not all(_same_public(c.public_key(), k) for c, k in pairs):
                raise NvStoreError("PSP state: a chip certificate does not match its key")
        except SevWireError as exc:
            raise NvStoreError(f"PSP state: chip certificates do not check out ({exc})") from None
        return chip


# -- owner identity ----------------------------------------------------------------------------


@dataclass(eq=False)
class OwnerIdentity:
    """OCA, PEK and PDH with their certificates, and who owns the platform."""

    oca_key: ec.EllipticCurvePrivateKey | None = field(repr=False)
    """None when externally owned: the owner keeps the OCA key, the firmware only its cert."""
    oca_cert: bytes = field(repr=False)
    pek_key: ec.EllipticCurvePrivateKey = field(repr=False)
    pek_cert: bytes = field(repr=False)
    pdh_key: ec.EllipticCurvePrivateKey = field(repr=False)
    pdh_cert: bytes = field(repr=False)
    externally_owned: bool = False

    def to_record(self) -> dict[str, Any]:
        return {
            "oca_key": _pem(self.oca_key) if self.oca_key is not None else None,
            "oca_cert": self.oca_cert.hex(),
            "pek_key": _pem(self.pek_key),
            "pek_cert": self.pek_cert.hex(),
            "pdh_key": _pem(self.pdh_key),
            "pdh_cert": self.pdh_cert.hex(),
            "externally_owned": self.externally_owned,
        }


def _pdh_for(pek_key: ec.EllipticCurvePrivateKey, api: tuple[int, int]) -> tuple[Any, bytes]:
    pdh_key = ec.generate_private_key(_CURVE)
    pdh = SevCert.from_public_key(pdh_key.public_key(), Usage.PDH, Algo.ECDH_SHA256, *api)
    pdh = sign_sev_cert(pdh, pek_key, Usage.PEK, Algo.ECDSA_SHA256, slot=1)
    return pdh_key, pdh.encode()


def _new_owner(cek_key: ec.EllipticCurvePrivateKey, api: tuple[int, int]) -> OwnerIdentity:
    oca_key = ec.generate_private_key(_CURVE)
    oca = SevCert.from_public_key(oca_key.public_key(), Usage.OCA, Algo.ECDSA_SHA256, *api)
    oca = sign_sev_cert(oca, oca_key, Usage.OCA, Algo.ECDSA_SHA256, slot=1)
    pek_key = ec.generate_private_key(_CURVE)
    pek = SevCert.from_public_key(pek_key.public_key(), Usage.PEK, Algo.ECDSA_SHA256, *api)
    pek = sign_sev_cert(pek, oca_key, Usage.OCA, Algo.ECDSA_SHA256, slot=1)
    pek = sign_sev_cert(pek, cek_key, Usage.CEK, Algo.ECDSA_SHA256, slot=2)
    pdh_key, pdh = _pdh_for(pek_key, api)
    return OwnerIdentity(oca_key, oca.encode(), pek_key, pek.encode(), pdh_key, pdh, False)


# -- the whole identity ------------------------------------------------------------------------


@dataclass(eq=False)
class PlatformIdentity:
    """Chip plus owner identity: everything the state file holds."""

    chip: ChipIdentity
    owner: OwnerIdentity
    api: tuple[int, int]

    @classmethod
    def fresh(cls, chip: ChipIdentity, api: tuple[int, int]) -> PlatformIdentity:
        """A self-owned platform on ``chip`` with new OCA, PEK and PDH."""
        return cls(chip, _new_owner(chip.cek_key, api), api)

    # -- commands ------------------------------------------------------------------------------

    def regenerate_owner(self) -> None:
        """PEK_GEN / PLATFORM_RESET: new self-signed OCA, new PEK, new PDH; self-owned again."""
        self.owner = _new_owner(self.chip.cek_key, self.api)

    def regenerate_pdh(self) -> None:
        """PDH_GEN (and INIT on real parts): a new PDH signed by the current PEK."""
        pdh_key, pdh_cert = _pdh_for(self.owner.pek_key, self.api)
        self.owner = dataclasses.replace(self.owner, pdh_key=pdh_key, pdh_cert=pdh_cert)

    def pek_csr(self) -> bytes:
        """PEK_CSR: the PEK certificate body with both signature slots empty, for the owner to
        sign with its OCA key."""
        pek = SevCert.decode(self.owner.pek_cert)
        return SevCert(pek.version, pek.api_major, pek.api_minor, pek.pubkey_usage,
                       pek.pubkey_algo, pek.pubkey_raw, SigSlot(), SigSlot(), pek.reserved).encode()

    def import_pek(self, pek_bytes: bytes, oca_bytes: bytes) -> None:
        """PEK_CERT_IMPORT: take the owner's OCA and the OCA-signed PEK (checks as AMD's
        firmware: the OCA is self-signed, the PEK is signed by it, and the PEK body is exactly the
        firmware's own PEK, so an owner can certify this platform's key but never substitute
        one); keep the CEK signature; regenerate the PDH."""
        try:
            oca = SevCert.decode(oca_bytes)
            pek = SevCert.decode(pek_bytes)
        except SevWireError as exc:
            raise CommandError(Status.INVALID_CERTIFICATE, str(exc)) from None
        if oca.pubkey_usage != Usage.OCA or oca.pubkey_algo not in (Algo.ECDSA_SHA256, Algo.ECDSA_SHA384):
            raise CommandError(Status.INVALID_CERTIFICATE, "OCA certificate has the wrong usage or algorithm")
        try:
            oca.public_key()
        except SevWireError as exc:
            raise CommandError(Status.INVALID_CERTIFICATE, str(exc)) from None
        try:
            verify_sev_cert(oca, oca)
            oca_slot = verify_sev_cert(pek, oca)
        except SevWireError as exc:
            raise CommandError(Status.BAD_SIGNATURE, str(exc)) from None
        current = SevCert.decode(self.owner.pek_cert)
        if pek.signed_bytes() != current.signed_bytes():
            raise CommandError(Status.INVALID_CERTIFICATE, "PEK is not this platform's PEK")
        cek_sig = current.sig2 if current.sig2.usage == Usage.CEK else current.sig1
        other = pek.sig2 if oca_slot == 1 else pek.sig1
        if not other.empty:
            raise CommandError(Status.INVALID_CERTIFICATE, "PEK has no free slot for the CEK signature")
        merged = SevCert(pek.version, pek.api_major, pek.api_minor, pek.pubkey_usage, pek.pubkey_algo,
                         pek.pubkey_raw,
                         pek.sig1 if oca_slot == 1 else cek_sig,
                         cek_sig if oca_slot == 1 else pek.sig2,
                         pek.reserved)
        pdh_key, pdh_cert = _pdh_for(self.owner.pek_key, self.api)
        self.owner = OwnerIdentity(None, oca.encode(), self.owner.pek_key, merged.encode(),
                                   pdh_key, pdh_cert, True)

    def pdh_chain(self) -> tuple[bytes, bytes]:
        """PDH_CERT_EXPORT: (PDH, PEK || OCA || CEK)."""
        o = self.owner
        return o.pdh_cert, o.pek_cert + o.oca_cert + self.chip.cek_cert

    def amd_chain(self) -> tuple[bytes, bytes]:
        """(ASK, ARK): public, what a guest owner would fetch from AMD."""
        return self.chip.ask_cert, self.chip.ark_cert

    # -- persistence -----------------------------------------------------------------------------

    def to_record(self) -> dict[str, Any]:
        return {"chip": self.chip.to_record(), "owner": self.owner.to_record()}

    @classmethod
    def from_record(cls, rec: dict[str, Any], api: tuple[int, int]) -> PlatformIdentity:
        """Rebuild from the state file and verify the whole chain; NvStoreError on any flaw."""
        chip_rec, owner_rec = rec.get("chip"), rec.get("owner")
        if not isinstance(chip_rec, dict) or not isinstance(owner_rec, dict):
            raise NvStoreError("PSP state: chip or owner section missing")
        chip = ChipIdentity.from_record(chip_rec)
        return cls(chip, _owner_from_record(owner_rec, chip), api)

    def owner_from_record(self, rec: dict[str, Any]) -> OwnerIdentity:
        """The owner part of a state file written for this same chip, verified against this
        chip's CEK (what a change re-reads under the lock; the fused chip part is not parsed
        again: its RSA keys are slow to load)."""
        chip_rec, owner_rec = rec.get("chip"), rec.get("owner")
        if not isinstance(chip_rec, dict) or not isinstance(owner_rec, dict):
            raise NvStoreError("PSP state: chip or owner section missing")
        if chip_rec.get("chip_id") != self.chip.chip_id.hex() or chip_rec.get("cek_cert") != self.chip.cek_cert.hex():
            raise NvStoreError("PSP state: the file now holds another chip's identity")
        return _owner_from_record(owner_rec, self.chip)


def _owner_from_record(owner_rec: dict[str, Any], chip: ChipIdentity) -> OwnerIdentity:
    """Rebuild the owner part and verify it against ``chip``'s CEK; NvStoreError on any flaw."""
    owned = owner_rec.get("externally_owned")
    if not isinstance(owned, bool):
        raise NvStoreError("PSP state: ownership flag missing")
    oca_rec = owner_rec.get("oca_key")
    owner = OwnerIdentity(
        None if oca_rec is None else _load_key(oca_rec, ec.EllipticCurvePrivateKey, "OCA"),
        _load_hex(owner_rec.get("oca_cert"), "OCA certificate"),
        _load_key(owner_rec.get("pek_key"), ec.EllipticCurvePrivateKey, "PEK"),
        _load_hex(owner_rec.get("pek_cert"), "PEK certificate"),
        _load_key(owner_rec.get("pdh_key"), ec.EllipticCurvePrivateKey, "PDH"),
        _load_hex(owner_rec.get("pdh_cert"), "PDH certificate"),
        owned,
    )
    if (owner.oca_key is None) != owned:
        raise NvStoreError("PSP state: OCA key presence contradicts the ownership flag")
    try:
        oca, pek, pdh = (SevCert.decode(b) for b in (owner.oca_cert, owner.pek_cert, owner.pdh_cert))
        cek = SevCert.decode(chip.cek_cert)
        verify_sev_cert(oca, oca)
        verify_sev_cert(pek, oca)
        verify_sev_cert(pek, cek)
        verify_sev_cert(pdh, pek)
        pairs = [(pek, owner.pek_key), (pdh, owner.pdh_key)]
        if owner.oca_key is not None:
            pairs.append((oca, owner.oca_key))
        if not all(_same_public(c.public_key(), k) for c, k in pairs):
            raise NvStoreError("PSP state: an owner certificate does not match its key")
    except SevWireError as exc:
        raise NvStoreError(f"PSP state: owner certificates do not check out ({exc})") from None
    return owner
