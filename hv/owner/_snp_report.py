"""Verifying an SEV-SNP attestation report offline (es-snp-reference 4.4).

The report came through the untrusted host, and so did the certificates; what makes it evidence
is the chain of checks, each of which stops a different lie:
- ARK -> ARK, ARK -> ASK, ASK -> VCEK: the signing key belongs to a genuine (here: emulated)
  AMD part. The ARK itself should be pinned by comparing its fingerprint with AMD's. The ARK
  and ASK come in AMD's own format (ark.cert, ask.cert) or in X.509 as AMD's key server serves
  them (cert_chain.pem: the ASK, then the ARK); in X.509 each issuer name must also be its
  signer's subject, as an X.509 verifier requires.
- VCEK -> report (ECDSA P-384/SHA-384 over bytes 0x000-0x29F): nobody edited a field.
- the VCEK's HWID and TCB equal the report's chip_id and reported_tcb: the key is that chip's key
  at that TCB, not another chip's or an older firmware's.
- measurement, policy, report_data: the guest is the image the owner expects, launched with the
  expected policy, and the report answers the owner's (or the guest's) fresh nonce.
- ID key and author key digests, family and image ID, guest SVN: the guest was launched with an
  ID block signed by the owner's key (the PSP checked the signatures at SNP_LAUNCH_FINISH).
Checks run in that order and stop at the first failure, whose reason is the one line printed.
`hv owner verify-report` and the SNP secret release (`release_secret`, `python -m hv.owner.exec
--snp`) both run them here, on a report file or bytes and on a chain directory or certificates
in memory.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from collections.abc import Mapping

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

import sevwire
from hv.owner._errors import OwnerCheckFailed, OwnerInputError
from hv.owner._inputs import read_amd_cert, read_file

__all__ = ["VCEK_FILE", "KDS_CHAIN_FILE", "ReportCheck", "SnpChain", "read_report",
           "read_snp_chain", "verify_snp_report_chain"]

VCEK_FILE = "vcek.der"
VCEK_PEM_FILE = "vcek.pem"
KDS_CHAIN_FILE = "cert_chain.pem"
_VCEK_OID = "1.3.6.1.4.1.3704.1"
# The SPL extensions and the TCB_VERSION byte each one certifies (Milan/Genoa layout).
_SPL_OIDS = {"bl": (".3.1", 0), "tee": (".3.2", 1), "spl_4": (".3.4", 2), "spl_5": (".3.5", 3),
             "spl_6": (".3.6", 4), "spl_7": (".3.7", 5), "snp": (".3.3", 6), "ucode": (".3.8", 7)}
_PSS = padding.PSS(padding.MGF1(hashes.SHA384()), 48)


@dataclasses.dataclass(frozen=True)
class ReportCheck:
    """What passed, and the decoded report."""

    report: sevwire.SnpReport
    passed: tuple[str, ...]


def read_report(path: str | os.PathLike) -> bytes:
    """The 1184-byte report: raw, as hex, or a guest's whole serial output holding one line
    `report: <hex>` (docs/guest-abi.md, "What hv owner verify-report reads"). Other lines, such
    as `report_data: ...`, may hold anything, non-ASCII bytes included."""
    data = read_file(path, "report")
    if len(data) == sevwire.SNP_REPORT_SIZE:
        return data
    lines = [ln.strip() for ln in data.splitlines()]
    found = [ln[len(b"report:"):] for ln in lines if ln.startswith(b"report:")]
    if len(found) > 1:
        raise OwnerInputError(f"report {path}: {len(found)} lines start with 'report:'; "
                              "give the output of one guest request")
    hexdigits = found[0] if found else data
    try:
        raw = bytes.fromhex("".join(hexdigits.decode("ascii").split()))
    except (UnicodeDecodeError, ValueError):
        raw = b""
    if len(raw) == sevwire.SNP_REPORT_SIZE:
        return raw
    if found:
        raise OwnerInputError(f"report {path}: the 'report:' line is not {2 * sevwire.SNP_REPORT_SIZE} "
                              "hex digits")
    raise OwnerInputError(f"report {path}: expected {sevwire.SNP_REPORT_SIZE} bytes (raw or hex) or a "
                          f"serial log with a 'report: <hex>' line, got {len(data)} bytes")


def _decode_vcek(raw: bytes, where: str) -> x509.Certificate:
    try:
        cert = x509.load_der_x509_certificate(raw)
    except ValueError:
        try:
            cert = x509.load_pem_x509_certificate(raw)
        except ValueError:
            raise OwnerInputError(f"VCEK certificate {where}: not an X.509 certificate") from None
    if not isinstance(cert.public_key(), ec.EllipticCurvePublicKey):
        raise OwnerInputError(f"VCEK certificate {where}: the key is not an EC key")
    return cert


def _decode_amd(raw: bytes, what: str, where: str) -> sevwire.AmdCert:
    try:
        return sevwire.AmdCert.decode(raw)
    except sevwire.SevWireError as exc:
        raise OwnerInputError(f"{what} {where}: {exc}") from None


def _decode_kds_chain(raw: bytes, where: str) -> tuple[x509.Certificate, x509.Certificate]:
    """cert_chain.pem as AMD's key server serves it: (ASK, ARK), RSA keys."""
    try:
        certs = x509.load_pem_x509_certificates(raw)
    except ValueError:
        raise OwnerInputError(f"certificate chain {where}: not PEM X.509 certificates") from None
    if len(certs) != 2:
        raise OwnerInputError(f"certificate chain {where}: expected 2 certificates (the ASK, then "
                              f"the ARK), found {len(certs)}")
    try:
        rsa_keys = all(isinstance(c.public_key(), rsa.RSAPublicKey) for c in certs)
    except ValueError:
        rsa_keys = False
    if not rsa_keys:
        raise OwnerInputError(f"certificate chain {where}: the ASK and ARK keys must be RSA keys")
    return certs[0], certs[1]


@dataclasses.dataclass(frozen=True)
class SnpChain:
    """The three certificates a report is checked against, decoded (not yet verified). The ARK
    and ASK are both AMD-format certificates or both X.509 ones."""

    ark: sevwire.AmdCert | x509.Certificate
    ask: sevwire.AmdCert | x509.Certificate
    vcek: x509.Certificate


def read_snp_chain(chain: str | os.PathLike | Mapping[str, bytes] | SnpChain) -> SnpChain:
    """From a directory (`hv psp export`): ark.cert, ask.cert and vcek.der; or, when there is no
    ark.cert, cert_chain.pem (the ASK then the ARK, PEM, as AMD's key server serves them) and
    vcek.pem, else vcek.der. A mapping of those file names to their bytes works the same way
    (what `SevDevice.export_certificates` returns; other names are ignored). OwnerInputError
    names the first one that is missing or unusable."""
    if isinstance(chain, SnpChain):
        return chain
    if isinstance(chain, Mapping):
        def get(name: str) -> bytes:
            raw = chain.get(name)
            if not isinstance(raw, (bytes, bytearray)):
                raise OwnerInputError(f"certificates: {name} is missing")
            return bytes(raw)

        if "ark.cert" not in chain and KDS_CHAIN_FILE in chain:
            ask, ark = _decode_kds_chain(get(KDS_CHAIN_FILE), KDS_CHAIN_FILE)
            vcek_name = VCEK_PEM_FILE if VCEK_PEM_FILE in chain else VCEK_FILE
            return SnpChain(ark, ask, _decode_vcek(get(vcek_name), vcek_name))
        return SnpChain(_decode_amd(get("ark.cert"), "ARK", "ark.cert"),
                        _decode_amd(get("ask.cert"), "ASK", "ask.cert"),
                        _decode_vcek(get(VCEK_FILE), VCEK_FILE))
    d = pathlib.Path(chain)
    if not (d / "ark.cert").exists() and (d / KDS_CHAIN_FILE).exists():
        chain_path = d / KDS_CHAIN_FILE
        ask_x, ark_x = _decode_kds_chain(read_file(chain_path, "certificate chain"), str(chain_path))
        vcek_path = d / VCEK_PEM_FILE
        if not vcek_path.exists():
            vcek_path = d / VCEK_FILE
        return SnpChain(ark_x, ask_x, _decode_vcek(read_file(vcek_path, "VCEK certificate"),
                                                   str(vcek_path)))
    ark = read_amd_cert(d / "ark.cert", "ARK")
    ask = read_amd_cert(d / "ask.cert", "ASK")
    vcek_path = d / VCEK_FILE
    return SnpChain(ark, ask, _decode_vcek(read_file(vcek_path, "VCEK certificate"), str(vcek_path)))


def _verify_x509(cert: x509.Certificate, signer: x509.Certificate | sevwire.AmdCert,
                 what: str, signer_name: str) -> None:
    """`cert` is signed by `signer`'s RSA key with RSASSA-PSS/SHA-384, salt 48, and, when the
    signer is an X.509 certificate, names it as its issuer."""
    if cert.signature_algorithm_oid != x509.oid.SignatureAlgorithmOID.RSASSA_PSS:
        raise sevwire.SignatureError(f"the {what} is not signed with RSASSA-PSS")
    if isinstance(signer, x509.Certificate):
        if cert.issuer != signer.subject:
            raise sevwire.SignatureError(f"the {what}'s issuer is not the {signer_name}'s subject")
        key = signer.public_key()
    else:
        key = signer.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise sevwire.CertificateError(f"the {signer_name} key is not an RSA key")
    try:
        key.verify(cert.signature, cert.tbs_certificate_bytes, _PSS, hashes.SHA384())
    except InvalidSignature:
        raise sevwire.SignatureError(f"the {what} certificate is not signed by this "
                                     f"{signer_name}") from None


def _ext_value(cert: x509.Certificate, suffix: str) -> bytes | None:
    try:
        ext = cert.extensions.get_extension_for_oid(x509.ObjectIdentifier(_VCEK_OID + suffix))
    except x509.ExtensionNotFound:
        return None
    return getattr(ext.value, "value", None)


def _der_small_int(value: bytes | None) -> int | None:
    if value is None or len(value) < 3 or value[0] != 0x02 or value[1] != len(value) - 2:
        return None
    return int.from_bytes(value[2:], "big", signed=True)


def _fail(name: str, reason: str) -> OwnerCheckFailed:
    return OwnerCheckFailed(f"report REJECTED at {name}: {reason}")


def verify_snp_report_chain(report: bytes | str | os.PathLike,
                            chain: str | os.PathLike | Mapping[str, bytes] | SnpChain, *,
                            measurement: bytes | None = None, policy: int | None = None,
                            report_data: bytes | None = None, id_key_digest: bytes | None = None,
                            author_key_digest: bytes | None = None,
                            family_id: bytes | None = None, image_id: bytes | None = None,
                            guest_svn: int | None = None) -> ReportCheck:
    """Run every check; OwnerCheckFailed (exit 1) naming the first that fails, OwnerInputError
    (exit 2) if a file or value is unusable.

    `report` is the report itself (bytes, exactly 1184) or a file `read_report` accepts; `chain`
    is whatever `read_snp_chain` accepts. `hv owner verify-report`, `release_secret` and the
    `--snp` mode of `python -m hv.owner.exec` all check reports here."""
    if isinstance(report, (bytes, bytearray, memoryview)):
        raw = bytes(report)
        if len(raw) != sevwire.SNP_REPORT_SIZE:
            raise OwnerInputError(f"report: expected {sevwire.SNP_REPORT_SIZE} bytes, got {len(raw)}")
    else:
        raw = read_report(report)
    certs = read_snp_chain(chain)
    ark, ask, vcek = certs.ark, certs.ask, certs.vcek
    passed: list[str] = []

    def step(name: str, fn) -> None:
        try:
            fn()
        except sevwire.SevWireError as exc:
            raise _fail(name, str(exc)) from None
        passed.append(name)

    def ark_self() -> None:
        if isinstance(ark, x509.Certificate):
            _verify_x509(ark, ark, "ARK", "ARK")
            return
        if ark.key_usage != sevwire.Usage.ARK:
            raise sevwire.CertificateError("the ARK certificate does not have ARK usage")
        sevwire.verify_amd_cert(ark, ark)

    def ark_ask() -> None:
        if isinstance(ask, x509.Certificate):
            _verify_x509(ask, ark, "ASK", "ARK")
            return
        if ask.key_usage != sevwire.Usage.ASK:
            raise sevwire.CertificateError("the ASK certificate does not have ASK usage")
        sevwire.verify_amd_cert(ask, ark)

    def ask_vcek() -> None:
        _verify_x509(vcek, ask, "VCEK", "ASK")

    step("ARK -> ARK", ark_self)
    step("ARK -> ASK", ark_ask)
    step("ASK -> VCEK", ask_vcek)
    vcek_key = vcek.public_key()
    decoded: list[sevwire.SnpReport] = []
    step("VCEK -> report", lambda: decoded.append(sevwire.verify_snp_report(raw, vcek_key)))
    report = decoded[0]

    def chip_and_tcb() -> None:
        hwid = _ext_value(vcek, ".4")
        if hwid is not None and report.key_info & 2 == 0 and hwid != report.chip_id:
            raise sevwire.SignatureError("the report's chip_id is not the VCEK's HWID")
        tcb = (report.reported_tcb or 0).to_bytes(8, "little")
        for name, (suffix, index) in _SPL_OIDS.items():
            spl = _der_small_int(_ext_value(vcek, suffix))
            if spl is not None and spl != tcb[index]:
                raise sevwire.SignatureError(f"reported_tcb {name} SPL {tcb[index]} is not the "
                                             f"VCEK's {spl}")

    step("VCEK matches chip and TCB", chip_and_tcb)
    _expect(passed, "measurement", report.measurement, measurement)
    _expect(passed, "policy", report.policy, policy, show=lambda v: f"0x{v:x}")
    if report_data is not None:
        if report.report_data != report_data:
            raise _fail("report_data", "the report does not carry the expected report_data")
        passed.append("report_data")
    _check_identity(report, passed, id_key_digest, author_key_digest, family_id, image_id,
                    guest_svn)
    return ReportCheck(report, tuple(passed))


def _check_identity(report: sevwire.SnpReport, passed: list[str], id_key_digest: bytes | None,
                    author_key_digest: bytes | None, family_id: bytes | None,
                    image_id: bytes | None, guest_svn: int | None) -> None:
    """What the ID block gave the guest at SNP_LAUNCH_FINISH: the PSP checked the signatures
    then, so the digests in a VCEK-signed report name the keys that signed the launch."""
    zero = bytes(48)
    if id_key_digest is not None:
        if report.id_key_digest == zero:
            raise _fail("id key", "the guest was launched without an ID block")
        if report.id_key_digest != id_key_digest:
            raise _fail("id key", f"ID_KEY_DIGEST {report.id_key_digest.hex()} is not the "
                                  f"expected key's {id_key_digest.hex()}")
        passed.append("id key")
    if author_key_digest is not None:
        if not report.key_info & 1 or report.author_key_digest == zero:
            raise _fail("author key", "the guest was launched without an author key")
        if report.author_key_digest != author_key_digest:
            raise _fail("author key", f"AUTHOR_KEY_DIGEST {report.author_key_digest.hex()} is "
                                      f"not the expected key's {author_key_digest.hex()}")
        passed.append("author key")
    _expect(passed, "family_id", report.family_id, family_id)
    _expect(passed, "image_id", report.image_id, image_id)
    _expect(passed, "guest_svn", report.guest_svn, guest_svn, show=str)


def _expect(passed: list[str], name: str, got, want, show=lambda v: v.hex()) -> None:
    """One report field against the owner's expectation (None: not checked)."""
    if want is None:
        return
    if got != want:
        raise _fail(name, f"{show(got)} is not the expected {show(want)}")
    passed.append(name)
