"""`hv owner verify-chain`: every link of a good chain passes; a broken link fails with exit 1
and names the link; unusable files are exit 2."""

import json

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric import ec

import sevwire as sw
from hv.owner.cli import owner

LINKS = ["ARK -> ARK", "ARK -> ASK", "ASK -> CEK", "CEK -> PEK", "OCA -> OCA", "OCA -> PEK", "PEK -> PDH"]


def run(*args):
    return CliRunner().invoke(owner, [str(a) for a in args])


def test_good_chain_passes(export_dir):
    result = run("verify-chain", export_dir)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert [line.split(None, 1)[1] for line in lines[:7]] == LINKS
    assert all(line.startswith("PASS") for line in lines[:7])
    assert "not pinned" in lines[7]


def test_json_output(export_dir, platform):
    result = run("verify-chain", export_dir, "--json")
    data = json.loads(result.stdout)
    assert data["ok"] is True and [link["link"] for link in data["links"]] == LINKS
    import hashlib
    assert data["ark_sha256"] == hashlib.sha256(platform["certs"]["ark"]).hexdigest()


def test_pinned_ark(export_dir, platform, tmp_path):
    pinned = tmp_path / "amd-ark.cert"
    pinned.write_bytes(platform["certs"]["ark"])
    result = run("verify-chain", export_dir, "--ark", pinned)
    assert result.exit_code == 0 and result.stdout.startswith("PASS  trusted ARK == ARK")


def test_substituted_pdh_fails_at_pek_link(export_dir):
    """A host that swaps in its own PDH (to read the session) is caught at PEK -> PDH."""
    rogue = ec.generate_private_key(ec.SECP384R1())
    fake = sw.sign_sev_cert(sw.SevCert.from_public_key(rogue.public_key(), sw.Usage.PDH), rogue, sw.Usage.PEK)
    (export_dir / "pdh.cert").write_bytes(fake.encode())
    result = run("verify-chain", export_dir)
    assert result.exit_code == 1
    assert "FAIL  PEK -> PDH" in result.stdout
    assert "PEK -> PDH" in result.stderr and result.stderr.count("\n") == 1


def test_self_made_chain_fails_against_pinned_ark(export_dir, platform, tmp_path):
    """A whole chain forged from a fresh ARK verifies internally; only pinning AMD's ARK stops it."""
    other = dict(platform["certs"])
    pinned = tmp_path / "amd-ark.cert"
    pinned.write_bytes(other["ark"])
    forged_ark = bytearray(other["ark"])
    forged_ark[-1] ^= 1
    (export_dir / "ark.cert").write_bytes(bytes(forged_ark))
    result = run("verify-chain", export_dir, "--ark", pinned, "--json")
    assert result.exit_code == 1
    links = {link["link"]: link["ok"] for link in json.loads(result.stdout)["links"]}
    assert links["trusted ARK == ARK"] is False and links["ARK -> ARK"] is False


def test_pek_not_signed_by_oca_fails(export_dir, platform):
    other_oca = ec.generate_private_key(ec.SECP384R1())
    cert = sw.sign_sev_cert(sw.SevCert.from_public_key(other_oca.public_key(), sw.Usage.OCA), other_oca, sw.Usage.OCA)
    (export_dir / "oca.cert").write_bytes(cert.encode())
    result = run("verify-chain", export_dir, "--json")
    links = {link["link"]: link["ok"] for link in json.loads(result.stdout)["links"]}
    assert result.exit_code == 1
    assert links["OCA -> OCA"] is True and links["OCA -> PEK"] is False and links["CEK -> PEK"] is True


def test_wrong_usage_fails(export_dir, platform):
    """The OCA certificate placed where the PDH should be: signature slots aside, the usage is wrong."""
    (export_dir / "pdh.cert").write_bytes(platform["certs"]["oca"])
    result = run("verify-chain", export_dir)
    assert result.exit_code == 1 and "FAIL  PEK -> PDH: PDH has usage 0x1001" in result.stdout


@pytest.mark.parametrize("name,content,message", [
    ("pdh.cert", b"\0" * 100, "expected 2084 bytes, got 100"),
    ("ark.cert", b"\0" * 10, "ARK"),
    ("cek.cert", None, "no such file"),
    ("pek.cert", b"\x07" + b"\0" * 2083, "version"),
])
def test_bad_files_exit_2(export_dir, name, content, message):
    if content is None:
        (export_dir / name).unlink()
    else:
        (export_dir / name).write_bytes(content)
    result = run("verify-chain", export_dir)
    assert result.exit_code == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
