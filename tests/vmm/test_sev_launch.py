"""The measured SEV launch end to end: the guest receives the secret, the hypervisor's view of its
memory holds neither the secret nor its private data, and the owner refuses a changed image."""

import hashlib
import shlex
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from hv.cli import main

GUESTS = Path(__file__).resolve().parents[2] / "guests"
SECRET = b"owner's launch secret: 7f3a9c-hv-test"
MARKER = b"HV-SHARED-MARKER"


@pytest.fixture
def hv(psp_state):
    runner = CliRunner(env={"HV_PSP_STATE": psp_state})

    def invoke(*args):
        return runner.invoke(main, [str(a) for a in args])
    return invoke


@pytest.fixture
def secret_file(tmp_path):
    p = tmp_path / "secret.bin"
    p.write_bytes(SECRET)
    return p


def digest_line(secret: bytes) -> str:
    return f"secret-sha256: {hashlib.sha256(secret).hexdigest()}"


def test_secret_reaches_the_guest_and_nothing_private_reaches_the_dump(hv, secret_file, tmp_path):
    dump = tmp_path / "dram.bin"
    r = hv("run", GUESTS / "secret.img", "--sev", "--secret-file", secret_file, "--dump-dram", dump)
    assert r.exit_code == 0, r.output
    assert digest_line(SECRET) in r.output
    d = dump.read_bytes()
    assert len(d) == 64 << 20
    assert SECRET[:16] not in d and SECRET[-16:] not in d
    assert b"secret-sha256" not in d  # the guest's own code and data are private too
    assert MARKER in d  # shared on purpose: the honest control


def test_plain_baseline_dump_holds_everything(hv, secret_file, tmp_path):
    dump = tmp_path / "dram.bin"
    r = hv("run", GUESTS / "secret.img", "--secret-file", secret_file, "--dump-dram", dump)
    assert r.exit_code == 0 and digest_line(SECRET) in r.output
    d = dump.read_bytes()
    assert SECRET in d and MARKER in d and b"secret-sha256" in d


def owner_flow(hv, tmp_path, policy="0x1"):
    certs, sess = tmp_path / "certs", tmp_path / "session"
    assert hv("psp", "export", "-o", certs).exit_code == 0
    r = hv("owner", "verify-chain", certs)
    assert r.exit_code == 0 and "FAIL" not in r.output, r.output
    r = hv("owner", "session", certs / "pdh.cert", "--policy", policy, "-o", sess)
    assert r.exit_code == 0, r.output
    return sess


def owner_exec(sess, image, secret_file):
    return " ".join(shlex.quote(str(a)) for a in (
        sys.executable, "-m", "hv.owner.exec", "--tk", sess / "tmp_tk.bin", "--image", image,
        "--secret", secret_file))


def test_owner_files_and_owner_exec(hv, tmp_path, secret_file):
    sess = owner_flow(hv, tmp_path)
    image = GUESTS / "secret.img"
    r = hv("run", image, "--sev", "--session", sess, "--owner-exec", owner_exec(sess, image, secret_file),
           "--json")
    assert r.exit_code == 0, r.output
    assert digest_line(SECRET) in r.output
    assert '"secret_injected": true' in r.output


def test_one_changed_byte_means_no_secret(hv, tmp_path, secret_file):
    sess = owner_flow(hv, tmp_path)
    good = GUESTS / "secret.img"
    data = bytearray(good.read_bytes())
    from elftools.elf.elffile import ELFFile

    with open(good, "rb") as f:
        seg = next(s for s in ELFFile(f).iter_segments() if s["p_type"] == "PT_LOAD" and s["p_filesz"])
        offset = seg["p_offset"] + seg["p_filesz"] // 2
    data[offset] ^= 1  # one byte the guest would run or read
    bad = tmp_path / "altered.img"
    bad.write_bytes(bytes(data))
    # the owner expects the good image; the hypervisor launches the altered one
    r = hv("run", bad, "--sev", "--session", sess, "--owner-exec", owner_exec(sess, good, secret_file))
    if r.exit_code == 0:
        pytest.fail("the owner released the secret to an altered image")
    assert r.exit_code == 3
    assert "refused" in r.output and "measurement" in r.output
    assert digest_line(SECRET) not in r.output


def test_firmware_errors_read_like_qemu(hv, tmp_path):
    sess = owner_flow(hv, tmp_path, policy="0x1")
    r = hv("run", GUESTS / "hello.img", "--sev", "--policy", "0x0", "--session", sess)
    assert r.exit_code == 3
    line = r.output.strip().splitlines()[-1]
    assert line.startswith("hv: launch failed: LAUNCH_START failed: firmware error 0x7 (POLICY_FAILURE):")


def test_measurement_in_json_matches_the_owner_prediction(hv):
    import json

    r = hv("run", GUESTS / "hello.img", "--sev", "--json")
    assert r.exit_code == 0
    launch = json.loads(r.stdout[r.stdout.index("{"):])["launch"]
    m = hv("owner", "measure", GUESTS / "hello.img", "--json")
    assert m.exit_code == 0, m.output
    assert json.loads(m.stdout)["digest"] == launch["digest"]
    assert set(launch) >= {"measurement", "mnonce", "api_major", "api_minor", "build", "policy"}
