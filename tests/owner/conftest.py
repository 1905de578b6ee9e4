"""A complete platform certificate chain, as `sevctl export` would write it, made once per
test session (two RSA-4096 keys are slow to generate)."""

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

import sevwire as sw


@pytest.fixture(scope="session")
def platform():
    """Keys and certificates of one emulated platform: ARK, ASK, CEK, OCA, PEK, PDH."""
    ark_key = rsa.generate_private_key(65537, 4096)
    ask_key = rsa.generate_private_key(65537, 4096)
    cek_key, oca_key, pek_key, pdh_key = (ec.generate_private_key(ec.SECP384R1()) for _ in range(4))
    ark = sw.sign_amd_cert(sw.AmdCert.from_public_key(ark_key.public_key(), sw.Usage.ARK, b"\x01" * 16), ark_key)
    ask = sw.sign_amd_cert(
        sw.AmdCert.from_public_key(ask_key.public_key(), sw.Usage.ASK, b"\x02" * 16, b"\x01" * 16), ark_key)
    cek = sw.sign_sev_cert(sw.SevCert.from_public_key(cek_key.public_key(), sw.Usage.CEK), ask_key, sw.Usage.ASK)
    oca = sw.sign_sev_cert(sw.SevCert.from_public_key(oca_key.public_key(), sw.Usage.OCA), oca_key, sw.Usage.OCA)
    pek = sw.SevCert.from_public_key(pek_key.public_key(), sw.Usage.PEK)
    pek = sw.sign_sev_cert(sw.sign_sev_cert(pek, oca_key, sw.Usage.OCA, slot=1), cek_key, sw.Usage.CEK, slot=2)
    pdh = sw.sign_sev_cert(sw.SevCert.from_public_key(pdh_key.public_key(), sw.Usage.PDH), pek_key, sw.Usage.PEK)
    return {
        "keys": {"ark": ark_key, "ask": ask_key, "cek": cek_key, "oca": oca_key, "pek": pek_key, "pdh": pdh_key},
        "certs": {"ark": ark.encode(), "ask": ask.encode(), "cek": cek.encode(), "oca": oca.encode(),
                  "pek": pek.encode(), "pdh": pdh.encode()},
    }


@pytest.fixture
def export_dir(tmp_path, platform):
    """A directory holding ark.cert ... pdh.cert."""
    d = tmp_path / "export"
    d.mkdir()
    for name, raw in platform["certs"].items():
        (d / f"{name}.cert").write_bytes(raw)
    return d
