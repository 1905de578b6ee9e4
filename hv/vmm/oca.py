"""The platform owner's certificate authority (OCA): sign the PSP's PEK signing request.

An SEV platform is self-owned until its owner takes it: `hv psp pek-csr` exports the PEK as an
SEV certificate with both signature slots empty; the owner's OCA key signs it (slot 1, usage OCA,
ECDSA-SHA256 as AMD's sev-tool does) and certifies itself in a self-signed OCA certificate; `hv
psp import` hands both to PEK_CERT_IMPORT, where the firmware checks the OCA's self-signature, its
signature on the PEK and that the PEK body is the firmware's own. This runs offline, wherever the
OCA key lives: it needs the CSR and the key, never the PSP. The certificate format and the
signatures are sevwire's.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

import sevwire

__all__ = ["OcaError", "SignedPek", "sign_pek_csr"]


class OcaError(Exception):
    """A CSR or an OCA key hv cannot use (bad usage: status 2)."""


@dataclass(frozen=True)
class SignedPek:
    pek_cert: bytes  # 2084 bytes: the CSR with the OCA's signature in slot 1
    oca_cert: bytes  # 2084 bytes: the OCA's key, signed by itself


def sign_pek_csr(csr_path: Path, key_path: Path, *, new_key: bool = False) -> SignedPek:
    """Sign the PEK CSR at `csr_path` with the OCA key at `key_path` (made there first when
    `new_key`: a new P-384 key, written 0600, never over an existing file)."""
    csr = _read_csr(csr_path)
    key = _new_key(key_path) if new_key else _read_key(key_path)
    oca = sevwire.SevCert.from_public_key(key.public_key(), sevwire.Usage.OCA,
                                          api_major=csr.api_major, api_minor=csr.api_minor)
    oca = sevwire.sign_sev_cert(oca, key, sevwire.Usage.OCA)
    pek = sevwire.sign_sev_cert(csr, key, sevwire.Usage.OCA, slot=1)
    return SignedPek(pek.encode(), oca.encode())


def _read_csr(path: Path) -> sevwire.SevCert:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise OcaError(f"PEK CSR {path}: {e.strerror}") from None
    try:
        csr = sevwire.SevCert.decode(raw)
    except sevwire.SevWireError as e:
        raise OcaError(f"PEK CSR {path}: {e}") from None
    if csr.pubkey_usage != sevwire.Usage.PEK:
        raise OcaError(f"PEK CSR {path}: the certificate's usage is {csr.pubkey_usage:#x}, not "
                       f"the PEK's {int(sevwire.Usage.PEK):#x}")
    if not (csr.sig1.empty and csr.sig2.empty):
        raise OcaError(f"PEK CSR {path}: already signed (a CSR from `hv psp pek-csr` has both "
                       f"signature slots empty)")
    return csr


def _read_key(path: Path) -> ec.EllipticCurvePrivateKey:
    try:
        raw = path.read_bytes()
    except OSError as e:
        hint = " (--new-key makes one)" if isinstance(e, FileNotFoundError) else ""
        raise OcaError(f"OCA key {path}: {e.strerror}{hint}") from None
    try:
        key = serialization.load_pem_private_key(raw, password=None)
    except TypeError:
        raise OcaError(f"OCA key {path}: the key is encrypted; give an unencrypted key") from None
    except (ValueError, UnsupportedAlgorithm):
        raise OcaError(f"OCA key {path}: not a PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp384r1":
        raise OcaError(f"OCA key {path}: not an ECDSA P-384 (secp384r1) key")
    return key


def _new_key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = ec.generate_private_key(ec.SECP384R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise OcaError(f"OCA key {path} exists: --new-key never replaces a key (drop --new-key "
                       f"to sign with it)") from None
    except OSError as e:
        raise OcaError(f"OCA key {path}: {e.strerror}") from None
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    return key
