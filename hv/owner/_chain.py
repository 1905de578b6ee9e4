"""Verifying a platform's certificate chain from exported files (what `sevctl export` writes).

ARK -> ARK (self-signed), ARK -> ASK, ASK -> CEK, CEK -> PEK, OCA -> OCA, OCA -> PEK, PEK -> PDH.
The guest owner needs every link: the CEK links prove the PDH belongs to a genuine AMD part,
the OCA link proves it belongs to the platform owner the guest owner expects. The ARK in the
directory comes from the untrusted host, so it proves nothing by itself: pass the ARK obtained
from AMD as `trusted_ark` (the directory's copy must then be identical), or compare the printed
fingerprint by hand.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib

import sevwire
from hv.owner._inputs import read_amd_cert, read_sev_cert

__all__ = ["CHAIN_FILES", "Link", "ChainReport", "verify_chain"]

CHAIN_FILES = {
    "ark": "ark.cert",
    "ask": "ask.cert",
    "cek": "cek.cert",
    "pek": "pek.cert",
    "oca": "oca.cert",
    "pdh": "pdh.cert",
}


@dataclasses.dataclass(frozen=True)
class Link:
    """One signer -> subject check; `reason` says why it failed."""

    name: str
    ok: bool
    reason: str = ""


@dataclasses.dataclass(frozen=True)
class ChainReport:
    links: tuple[Link, ...]
    ark_sha256: str

    @property
    def ok(self) -> bool:
        return all(link.ok for link in self.links)


def _check(name: str, fn) -> Link:
    try:
        fn()
    except sevwire.SevWireError as exc:
        return Link(name, False, str(exc))
    return Link(name, True)


def _usage_ok(actual: int, expected: sevwire.Usage, what: str) -> None:
    if actual != expected:
        raise sevwire.CertificateError(f"{what} has usage 0x{actual:x}, expected {expected.name} (0x{expected:x})")


def verify_chain(directory: str | os.PathLike, trusted_ark: str | os.PathLike | None = None) -> ChainReport:
    """Check every link; unreadable or malformed files raise OwnerInputError (nothing to check),
    a bad signature or wrong usage is a failed Link."""
    d = pathlib.Path(directory)
    ark = read_amd_cert(d / CHAIN_FILES["ark"], "ARK")
    ask = read_amd_cert(d / CHAIN_FILES["ask"], "ASK")
    cek = read_sev_cert(d / CHAIN_FILES["cek"], "CEK")
    pek = read_sev_cert(d / CHAIN_FILES["pek"], "PEK")
    oca = read_sev_cert(d / CHAIN_FILES["oca"], "OCA")
    pdh = read_sev_cert(d / CHAIN_FILES["pdh"], "PDH")
    links = []
    if trusted_ark is not None:
        pinned = read_amd_cert(trusted_ark, "trusted ARK")

        def same_ark() -> None:
            if pinned.encode() != ark.encode():
                raise sevwire.SignatureError("the exported ARK is not the trusted ARK")

        links.append(_check("trusted ARK == ARK", same_ark))

    def ark_self() -> None:
        _usage_ok(ark.key_usage, sevwire.Usage.ARK, "ARK")
        sevwire.verify_amd_cert(ark, ark)

    def ark_ask() -> None:
        _usage_ok(ask.key_usage, sevwire.Usage.ASK, "ASK")
        sevwire.verify_amd_cert(ask, ark)

    def ask_cek() -> None:
        _usage_ok(cek.pubkey_usage, sevwire.Usage.CEK, "CEK")
        sevwire.verify_sev_cert(cek, ask)

    def cek_pek() -> None:
        _usage_ok(pek.pubkey_usage, sevwire.Usage.PEK, "PEK")
        sevwire.verify_sev_cert(pek, cek)

    def oca_self() -> None:
        _usage_ok(oca.pubkey_usage, sevwire.Usage.OCA, "OCA")
        sevwire.verify_sev_cert(oca, oca)

    def oca_pek() -> None:
        sevwire.verify_sev_cert(pek, oca)

    def pek_pdh() -> None:
        _usage_ok(pdh.pubkey_usage, sevwire.Usage.PDH, "PDH")
        sevwire.verify_sev_cert(pdh, pek)

    for name, fn in (("ARK -> ARK", ark_self), ("ARK -> ASK", ark_ask), ("ASK -> CEK", ask_cek),
                     ("CEK -> PEK", cek_pek), ("OCA -> OCA", oca_self), ("OCA -> PEK", oca_pek),
                     ("PEK -> PDH", pek_pdh)):
        links.append(_check(name, fn))
    return ChainReport(tuple(links), hashlib.sha256(ark.encode()).hexdigest())
