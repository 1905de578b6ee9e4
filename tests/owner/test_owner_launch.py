"""`hv owner session / measure / verify / secret`: files of the right sizes that the PSP side
accepts, measurements recomputed and compared, and bad input rejected with exit status 2."""

import hashlib
import hmac
import json
import os
import stat

import pytest
from click.testing import CliRunner

import sevwire as sw
from hv.owner.cli import owner

API = (0, 24, 15)  # api_major, api_minor, build reported by the platform
MNONCE = bytes(range(16))


def run(*args):
    return CliRunner().invoke(owner, [str(a) for a in args])


@pytest.fixture
def session_dir(tmp_path, export_dir):
    out = tmp_path / "session"
    result = run("session", export_dir / "pdh.cert", "--policy", "NODBG|NOKS", "-o", out)
    assert result.exit_code == 0, result.output
    return out


def test_session_files_open_on_the_psp_side(session_dir, platform):
    blob = (session_dir / "launch_blob.bin").read_bytes()
    godh = (session_dir / "godh.cert").read_bytes()
    tk = (session_dir / "tmp_tk.bin").read_bytes()
    assert (len(blob), len(godh), len(tk)) == (128, 2084, 32)
    keys = sw.open_session(blob, godh, platform["keys"]["pdh"], 0x3)
    assert keys.tek + keys.tik == tk
    with pytest.raises(sw.PolicyMacError):
        sw.open_session(blob, godh, platform["keys"]["pdh"], 0x0)
    assert stat.S_IMODE(os.stat(session_dir / "tmp_tk.bin").st_mode) == 0o600


def test_session_json_and_bad_inputs(tmp_path, export_dir, platform):
    result = run("session", export_dir / "pdh.cert", "--policy", "0x1", "-o", tmp_path / "s", "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["policy"] == 1
    short = tmp_path / "short.cert"
    short.write_bytes(b"\0" * 2000)
    result = run("session", short, "-o", tmp_path / "x")
    assert result.exit_code == 2 and "expected 2084 bytes" in result.stderr
    result = run("session", export_dir / "pek.cert", "-o", tmp_path / "x")
    assert result.exit_code == 2 and "expected PDH" in result.stderr
    result = run("session", export_dir / "pdh.cert", "--policy", "0x40", "-o", tmp_path / "x")
    assert result.exit_code == 2 and "reserved" in result.stderr


def measurement_for(tk: bytes, policy: int, digest: bytes) -> bytes:
    """What the PSP would return, computed here from sev-reference 6 without sevwire."""
    msg = bytes([0x04, API[0], API[1], API[2]]) + policy.to_bytes(4, "little") + digest + MNONCE
    return hmac.new(tk[16:], msg, hashlib.sha256).digest()


def verify_args(session_dir, meas, digest, policy="0x3"):
    return ["verify", "--measurement", meas.hex(), "--mnonce", MNONCE.hex(), "--tk", session_dir / "tmp_tk.bin",
            "--digest", digest.hex(), "--policy", policy, "--api-major", API[0], "--api-minor", API[1],
            "--build", API[2]]


def test_verify_pass_and_fail(session_dir):
    tk = (session_dir / "tmp_tk.bin").read_bytes()
    digest = hashlib.sha256(b"image").digest()
    meas = measurement_for(tk, 0x3, digest)
    result = run(*verify_args(session_dir, meas, digest))
    assert result.exit_code == 0 and result.stdout.startswith("PASS")
    result = run(*verify_args(session_dir, meas, hashlib.sha256(b"other image").digest()))
    assert result.exit_code == 1 and result.stdout.startswith("FAIL") and "does not match" in result.stderr
    result = run(*verify_args(session_dir, meas, digest, policy="0x1"))
    assert result.exit_code == 1
    result = run(*verify_args(session_dir, meas, digest), "--json")
    assert json.loads(result.stdout)["ok"] is True


def test_verify_bad_inputs(session_dir, tmp_path):
    digest = hashlib.sha256(b"image").digest()
    args = verify_args(session_dir, bytes(32), digest)
    bad_mnonce = list(args)
    bad_mnonce[bad_mnonce.index("--mnonce") + 1] = "abcd"
    result = run(*bad_mnonce)
    assert result.exit_code == 2 and "--mnonce: expected 16 bytes" in result.stderr
    bad_tk = tmp_path / "tk.bin"
    bad_tk.write_bytes(bytes(31))
    args_tk = list(args)
    args_tk[args_tk.index("--tk") + 1] = bad_tk
    result = run(*args_tk)
    assert result.exit_code == 2 and "expected 32 bytes" in result.stderr
    result = run(*args, "--image", tmp_path / "img")
    assert result.exit_code == 2 and "exactly one of --digest, --image and --kernel" in result.stderr
    bad_hex = list(args)
    bad_hex[bad_hex.index("--measurement") + 1] = "zz" * 32
    assert run(*bad_hex).exit_code == 2
    result = run(*args[:-2], "--build", "256")
    assert result.exit_code == 2 and "8 bits" in result.stderr


def test_secret_packet_opens_on_the_psp_side(session_dir, tmp_path):
    tk = (session_dir / "tmp_tk.bin").read_bytes()
    meas = measurement_for(tk, 0x3, hashlib.sha256(b"image").digest())
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"disk passphrase: correct horse")
    out = tmp_path / "packet"
    result = run("secret", "--tk", session_dir / "tmp_tk.bin", "--measurement", meas.hex(), "--in", secret, "-o", out,
                 "--json")
    assert result.exit_code == 0, result.output
    header, data = (out / "header.bin").read_bytes(), (out / "data.bin").read_bytes()
    assert len(header) == 52 and len(data) == len(secret.read_bytes())
    assert sw.open_secret(tk[:16], tk[16:], header, data, meas, 0, 24) == secret.read_bytes()
    with pytest.raises(sw.SecretMacError):
        sw.open_secret(tk[:16], tk[16:], header, data, bytes(32), 0, 24)


def test_secret_bad_inputs(session_dir, tmp_path):
    big = tmp_path / "big"
    big.write_bytes(bytes(4097))
    result = run("secret", "--tk", session_dir / "tmp_tk.bin", "--measurement", "00" * 32, "--in", big, "-o", tmp_path)
    assert result.exit_code == 2 and "4096" in result.stderr
    result = run("secret", "--tk", session_dir / "tmp_tk.bin", "--measurement", "00" * 31, "--in", big, "-o", tmp_path)
    assert result.exit_code == 2
    result = run("secret", "--tk", tmp_path / "missing", "--measurement", "00" * 32, "--in", big, "-o", tmp_path)
    assert result.exit_code == 2 and "no such file" in result.stderr


@pytest.mark.parametrize("command", ["verify-chain", "session", "measure", "verify", "secret"])
def test_every_command_has_help_and_json(command):
    result = run(command, "--help")
    assert result.exit_code == 0 and "--json" in result.stdout
