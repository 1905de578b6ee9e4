"""`hv owner id-block`: the SNP ID block and ID authentication structure, checked here byte by
byte against the ABI with an independent reader (struct, cryptography, hashlib), and the bad
inputs it refuses with one line."""

from __future__ import annotations

import hashlib
import json
import struct

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from hv.owner.cli import owner

IMAGE = bytes.fromhex("f4") + bytes(range(256)) * 3  # a flat binary: hlt, then data


def run(*args):
    return CliRunner().invoke(owner, [str(a) for a in args])


def _pem(path, key, public: bool = False):
    if public:
        raw = key.public_key().public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
    else:
        raw = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    path.write_bytes(raw)
    return path


@pytest.fixture
def files(tmp_path):
    image = tmp_path / "guest.img"
    image.write_bytes(IMAGE)
    id_key = ec.generate_private_key(ec.SECP384R1())
    author_key = ec.generate_private_key(ec.SECP384R1())
    return {"image": image, "id_key": id_key, "author_key": author_key,
            "id_pem": _pem(tmp_path / "id.pem", id_key),
            "author_pem": _pem(tmp_path / "author.pem", author_key),
            "out": tmp_path / "ib"}


def _key_struct(key) -> bytes:
    n = key.public_key().public_numbers()
    return (struct.pack("<I", 2) + n.x.to_bytes(72, "little") + n.y.to_bytes(72, "little")).ljust(0x404, b"\0")


def _verify(slot: bytes, key, message: bytes) -> None:
    r, s = int.from_bytes(slot[:72], "little"), int.from_bytes(slot[72:144], "little")
    assert slot[144:] == bytes(0x200 - 144)
    key.public_key().verify(encode_dss_signature(r, s), message, ec.ECDSA(hashes.SHA384()))


def test_id_block_and_auth_are_the_abi_layout(files):
    family, image_id = "00112233445566778899aabbccddeeff", "ff" * 16
    r = run("id-block", files["image"], "--id-key", files["id_pem"], "--author-key", files["author_pem"],
            "--family-id", family, "--image-id", image_id, "--svn", "9", "--policy", "0x30000",
            "--mem", "16M", "-o", files["out"], "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    block = (files["out"] / "id_block.bin").read_bytes()
    auth = (files["out"] / "id_auth.bin").read_bytes()
    assert len(block) == 0x60 and len(auth) == 0x1000
    ld = run("measure", files["image"], "--snp", "--mem", "16M").stdout.strip()
    assert struct.unpack("<48s16s16sIIQ", block) == (
        bytes.fromhex(ld), bytes.fromhex(family), bytes.fromhex(image_id), 1, 9, 0x30000)
    assert out["digest"] == ld
    assert struct.unpack_from("<II", auth) == (1, 1)
    assert auth[8:0x40] == bytes(0x38) and auth[0x644:0x680] == bytes(0x3C) and auth[0xC84:] == bytes(0x1000 - 0xC84)
    id_field, author_field = auth[0x240:0x644], auth[0x880:0xC84]
    assert id_field == _key_struct(files["id_key"])
    assert author_field == _key_struct(files["author_key"])
    _verify(auth[0x40:0x240], files["id_key"], block)
    _verify(auth[0x680:0x880], files["author_key"], id_field)
    assert out["id_key_digest"] == hashlib.sha384(id_field).hexdigest()
    assert out["author_key_digest"] == hashlib.sha384(author_field).hexdigest()


def test_without_author_key_its_fields_are_zero(files):
    r = run("id-block", files["image"], "--id-key", files["id_pem"], "--mem", "16M", "-o", files["out"])
    assert r.exit_code == 0, r.output
    auth = (files["out"] / "id_auth.bin").read_bytes()
    assert struct.unpack_from("<II", auth) == (1, 0)
    assert auth[0x680:] == bytes(0x1000 - 0x680)
    block = (files["out"] / "id_block.bin").read_bytes()
    assert block[0x30:0x50] == bytes(32) and struct.unpack_from("<IIQ", block, 0x50) == (1, 0, 0x30000)
    _verify(auth[0x40:0x240], files["id_key"], block)


@pytest.mark.parametrize("args, message", [
    (["--family-id", "0011"], "--family-id: expected 16 bytes"),
    (["--image-id", "zz" * 16], "--image-id: not a hex string"),
    (["--svn", str(1 << 32)], "--svn"),
    (["--policy", "nope"], "--policy"),
])
def test_bad_values_are_one_line(files, args, message):
    r = run("id-block", files["image"], "--id-key", files["id_pem"], "-o", files["out"], *args)
    assert r.exit_code == 2 and message in r.output
    assert len(r.output.strip().splitlines()) == 1, r.output
    assert not files["out"].exists()


def test_bad_keys_are_one_line(files, tmp_path):
    p256 = _pem(tmp_path / "p256.pem", ec.generate_private_key(ec.SECP256R1()))
    public = _pem(tmp_path / "pub.pem", files["id_key"], public=True)
    encrypted = tmp_path / "enc.pem"
    encrypted.write_bytes(files["id_key"].private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pw")))
    for key, message in ((p256, "not an ECDSA P-384"), (public, "not a PEM or DER private key"),
                         (files["image"], "not a PEM or DER private key"),
                         (tmp_path / "missing.pem", "no such file"), (encrypted, "encrypted")):
        r = run("id-block", files["image"], "--id-key", key, "-o", files["out"])
        assert r.exit_code == 2 and message in r.output, (key, r.output)
        assert len(r.output.strip().splitlines()) == 1
    r = run("id-block", files["image"], "--id-key", files["id_pem"], "--author-key", p256, "-o", files["out"])
    assert r.exit_code == 2 and "--author-key" in r.output
