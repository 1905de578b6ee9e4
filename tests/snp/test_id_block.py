"""End to end: the guest owner signs an ID block for `attest.img` (`hv owner id-block`), hv
launches the guest with it (`hv run --sev-snp --id-block DIR`), the PSP checks it at
SNP_LAUNCH_FINISH, and the owner accepts the guest's report only for its own keys and IDs
(`hv owner verify-report --id-key ...`). A block for another image fails the launch."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from hv.cli import main

GUESTS = Path(__file__).resolve().parents[2] / "guests"
FAMILY, IMAGE_ID = b"family-00000001\0".hex(), b"attest-image-v07".hex()


def _pem(path: Path, key) -> Path:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return path


@pytest.fixture
def owner_keys(tmp_path):
    return {name: _pem(tmp_path / f"{name}.pem", ec.generate_private_key(ec.SECP384R1()))
            for name in ("id", "author", "other")}


@pytest.fixture
def guests(tmp_path) -> Path:
    """The images this test uses, copied once: the owner signs the very bytes hv launches."""
    d = tmp_path / "guests"
    d.mkdir()
    for name in ("attest.img", "hello.img"):
        shutil.copy(GUESTS / name, d / name)
    return d


@pytest.fixture
def runner(psp_state, tmp_path):
    state = tmp_path / "psp-state.json"
    shutil.copy(psp_state, state)
    return CliRunner(env={"HV_PSP_STATE": str(state)})


def test_id_block_launch_and_report_checks(runner, guests, owner_keys, tmp_path):
    image = guests / "attest.img"
    ib = tmp_path / "ib"
    family, image_id = FAMILY, IMAGE_ID
    r = runner.invoke(main, ["owner", "id-block", str(image), "--id-key", str(owner_keys["id"]),
                             "--author-key", str(owner_keys["author"]), "--family-id", family,
                             "--image-id", image_id, "--svn", "3", "-o", str(ib)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(main, ["run", str(image), "--sev-snp", "--id-block", str(ib), "-q", "--json"],
                      catch_exceptions=False)
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["launch"]["id_block"] is True and out["launch"]["author_key"] is True
    lines = dict(line.split(": ", 1) for line in out["serial"].splitlines())
    (tmp_path / "report.txt").write_text("report: " + lines["report"] + "\n")
    chain = tmp_path / "certs"
    assert runner.invoke(main, ["psp", "export", "-o", str(chain)]).exit_code == 0
    verify = ["owner", "verify-report", str(tmp_path / "report.txt"), "--chain", str(chain),
              "--image", str(image)]

    r = runner.invoke(main, [*verify, "--id-key", str(owner_keys["id"]), "--author-key",
                             str(owner_keys["author"]), "--family-id", family, "--image-id",
                             image_id, "--svn", "3", "--json"])
    assert r.exit_code == 0, r.output
    checks = json.loads(r.stdout)["checks"]
    assert {"measurement", "id key", "author key", "family_id", "image_id", "guest_svn"} <= set(checks)

    for extra, reason in ((["--id-key", str(owner_keys["other"])], "id key: ID_KEY_DIGEST"),
                          (["--author-key", str(owner_keys["other"])], "author key: AUTHOR_KEY_DIGEST"),
                          (["--author-key", str(owner_keys["id"])], "author key"),
                          (["--family-id", "00" * 16], "family_id"),
                          (["--image-id", "00" * 16], "image_id"),
                          (["--svn", "4"], "guest_svn: 3 is not the expected 4")):
        r = runner.invoke(main, [*verify, *extra])
        assert r.exit_code == 1, (extra, r.output)
        assert f"report REJECTED at {reason}" in r.output, r.output
        assert len(r.output.strip().splitlines()) == 1, r.output


def test_a_report_without_id_block_fails_the_id_key_check(runner, guests, owner_keys, tmp_path):
    image = guests / "attest.img"
    r = runner.invoke(main, ["run", str(image), "--sev-snp", "-q", "--json"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["launch"]["id_block"] is False
    lines = dict(line.split(": ", 1) for line in out["serial"].splitlines())
    (tmp_path / "report.txt").write_text("report: " + lines["report"] + "\n")
    chain = tmp_path / "certs"
    assert runner.invoke(main, ["psp", "export", "-o", str(chain)]).exit_code == 0
    r = runner.invoke(main, ["owner", "verify-report", str(tmp_path / "report.txt"), "--chain",
                             str(chain), "--id-key", str(owner_keys["id"])])
    assert r.exit_code == 1 and "without an ID block" in r.output, r.output


@pytest.mark.parametrize("signed_for, run_args, status", [
    ("hello.img", [], "BAD_MEASUREMENT"),                   # another image's launch digest
    ("attest.img", ["--policy", "0x30001"], "POLICY_FAILURE"),  # launched with another policy
])
def test_a_mismatching_id_block_fails_the_launch(runner, guests, owner_keys, tmp_path, signed_for, run_args,
                                                 status):
    ib = tmp_path / "ib"
    r = runner.invoke(main, ["owner", "id-block", str(guests / signed_for), "--id-key",
                             str(owner_keys["id"]), "-o", str(ib)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(main, ["run", str(guests / "attest.img"), "--sev-snp", "--id-block", str(ib),
                             "-q", *run_args])
    assert r.exit_code == 3, r.output
    assert r.output.strip().splitlines() == [r.output.strip()]
    assert "SNP_LAUNCH_FINISH" in r.output and status in r.output


def test_a_tampered_id_block_fails_the_launch(runner, guests, owner_keys, tmp_path):
    ib = tmp_path / "ib"
    image = guests / "attest.img"
    assert runner.invoke(main, ["owner", "id-block", str(image), "--id-key", str(owner_keys["id"]),
                                "--svn", "1", "-o", str(ib)]).exit_code == 0
    block = bytearray((ib / "id_block.bin").read_bytes())
    block[0x54] = 2  # the SVN raised after signing
    (ib / "id_block.bin").write_bytes(bytes(block))
    r = runner.invoke(main, ["run", str(image), "--sev-snp", "--id-block", str(ib), "-q"])
    assert r.exit_code == 3 and "BAD_SIGNATURE" in r.output, r.output


def test_bad_id_block_directories_are_usage_errors(runner, guests, tmp_path):
    image = guests / "attest.img"
    d = tmp_path / "ib"
    d.mkdir()
    r = runner.invoke(main, ["run", str(image), "--sev-snp", "--id-block", str(d)])
    assert r.exit_code == 2 and "id_block.bin" in r.output, r.output
    (d / "id_block.bin").write_bytes(bytes(0x60))
    (d / "id_auth.bin").write_bytes(bytes(0x100))
    r = runner.invoke(main, ["run", str(image), "--sev-snp", "--id-block", str(d)])
    assert r.exit_code == 2 and "expected 4096 bytes" in r.output, r.output
    r = runner.invoke(main, ["run", str(image), "--sev-es", "--id-block", str(d)])
    assert r.exit_code == 2 and "--sev-snp" in r.output, r.output


def test_owner_exec_releases_only_to_a_guest_launched_with_its_id_key(runner, guests, owner_keys, tmp_path):
    """Scenario: the owner's release also demands its own ID key in the report (`python -m
    hv.owner.exec --snp --id-key`): the guest launched with that key's ID block gets the secret;
    launched with another owner's block, or with none, it is refused."""
    root = Path(__file__).resolve().parents[2]
    image = guests / "secret.img"
    shutil.copy(GUESTS / "secret.img", image)
    secret = tmp_path / "s.bin"
    secret.write_bytes(b"released only to the id key's guests")
    chain = tmp_path / "certs"
    assert runner.invoke(main, ["psp", "export", "-o", str(chain)]).exit_code == 0
    owner = " ".join([sys.executable, "-m", "hv.owner.exec", "--snp", "--chain", str(chain), "--image",
                      str(image), "--secret", str(secret), "--id-key", str(owner_keys["id"])])
    want = f"secret-sha256: {hashlib.sha256(secret.read_bytes()).hexdigest()}"
    for key, ok in (("id", True), ("other", False), (None, False)):
        args = ["run", str(image), "--sev-snp", "--owner-exec", owner, "-q", "--json"]
        if key is not None:
            ib = tmp_path / f"ib-{key}"
            r = runner.invoke(main, ["owner", "id-block", str(image), "--id-key", str(owner_keys[key]),
                                     "-o", str(ib)])
            assert r.exit_code == 0, r.output
            args += ["--id-block", str(ib)]
        env = {"PYTHONPATH": str(root)}
        r = runner.invoke(main, args, env=env, catch_exceptions=False)
        serial = json.loads(r.stdout)["serial"]
        if ok:
            assert r.exit_code == 0 and want in serial, serial
        else:
            assert r.exit_code == 3, serial
            assert "no secret: the owner refused: report REJECTED at id key" in serial, serial
