"""Moving encrypted guests with `hv run`: migration between two platforms, and snapshots.

Two PSP state files are two platform identities. The guest is `secret` with a random injected
secret; its expected output line is computed here with hashlib. Each scenario runs the CLI
in-process, as a user would type it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from hv.cli import main

REPO = Path(__file__).resolve().parents[2]
SECRET_IMG = str(REPO / "guests" / "secret.img")
MEM = "4M"
AFTER = "30"  # the secret guest makes ~150 exits: this is mid-run, after its secret line


def hv(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def secret(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("secret") / "secret.bin"
    path.write_bytes(os.urandom(48))
    return path


@pytest.fixture(scope="module")
def target(tmp_path_factory) -> tuple[str, Path]:
    """A second platform: its own state file (a new chip and owner) and its exported certificates."""
    d = tmp_path_factory.mktemp("target")
    state = str(d / "psp-state.json")
    assert hv("psp", "export", "-o", d / "certs", "--psp-state", state).exit_code == 0
    return state, d / "certs"


def _expected_line(secret: Path) -> str:
    return f"secret-sha256: {hashlib.sha256(secret.read_bytes()).hexdigest()}"


def _send(mode, psp_state, secret, target_certs, out, *extra):
    return hv("run", SECRET_IMG, f"--{mode}", "--mem", MEM, "--secret-file", secret,
              "--psp-state", psp_state, "--migrate-to", target_certs / "pdh.cert",
              "--migrate-out", out, "--migrate-after-exits", AFTER, *extra)


@pytest.fixture(scope="module")
def sent(psp_state, secret, target, tmp_path_factory):
    """An SEV guest sent mid-run from the session's platform to the target: (stream, stdout)."""
    out = tmp_path_factory.mktemp("sent") / "stream"
    r = _send("sev", psp_state, secret, target[1], out)
    assert r.exit_code == 0, r.output
    return out, r.stdout


@pytest.mark.parametrize("mode", ["sev", "sev-es"])
def test_guest_with_a_secret_migrates_mid_run_and_finishes_on_the_target(mode, psp_state, secret, target, tmp_path):
    """Scenario: send at exit 30, receive on another platform, the guest finishes there."""
    out = tmp_path / "stream"
    first = _send(mode, psp_state, secret, target[1], out)
    assert first.exit_code == 0, first.output
    assert "sent to" in first.stderr
    stream = b"".join(p.read_bytes() for p in out.iterdir())
    data = secret.read_bytes()
    assert all(data[i:i + 16] not in stream for i in range(len(data) - 15))
    assert json.loads((out / "manifest.json").read_text())["mode"] == mode
    second = hv("run", "--incoming", out, "--psp-state", target[0])
    assert second.exit_code == 0, second.output
    assert _expected_line(secret) in (first.stdout + second.stdout).splitlines()


def test_the_stream_cannot_be_received_by_its_source_platform(sent, psp_state):
    r = hv("run", "--incoming", sent[0], "--psp-state", psp_state)
    assert r.exit_code == 3 and "BAD_MEASUREMENT" in r.stderr


def _copy_with_flip(stream: Path, where: Path, offset: int, fix_digest: bool) -> Path:
    copy = where / "flipped"
    shutil.copytree(stream, copy)
    memory = bytearray((copy / "memory.bin").read_bytes())
    memory[offset] ^= 0x01
    (copy / "memory.bin").write_bytes(bytes(memory))
    if fix_digest:  # a hypervisor covering its tracks: only the PSP can tell now
        manifest = json.loads((copy / "manifest.json").read_text())
        manifest["files"]["memory.bin"] = hashlib.sha256(bytes(memory)).hexdigest()
        (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


@pytest.mark.parametrize("fix_digest", [False, True], ids=["damaged", "forged"])
def test_a_stream_with_one_flipped_byte_is_refused_on_the_target(sent, target, tmp_path, fix_digest):
    copy = _copy_with_flip(sent[0], tmp_path, 8 + 52 + 100, fix_digest)  # record 0, packet data
    r = hv("run", "--incoming", copy, "--psp-state", target[0])
    assert r.exit_code == 3, r.output
    assert len(r.stderr.strip().splitlines()) == 1
    assert ("BAD_MEASUREMENT" if fix_digest else "does not match its digest") in r.stderr
    assert "secret-sha256" not in r.stdout


def test_a_guest_whose_policy_forbids_sending_is_refused_at_the_source(psp_state, secret, target, tmp_path):
    out = tmp_path / "stream"
    r = _send("sev", psp_state, secret, target[1], out, "--policy", "0x9")  # NODBG | NOSEND
    assert r.exit_code == 3
    assert "SEND_START" in r.stderr and "POLICY_FAILURE" in r.stderr
    assert not out.exists()


def test_the_targets_chain_is_checked_before_anything_runs(psp_state, secret, target, tmp_path):
    certs = tmp_path / "certs"
    shutil.copytree(target[1], certs)
    pek = bytearray((certs / "pek.cert").read_bytes())
    pek[0x630] ^= 1  # the CEK's signature over the PEK
    (certs / "pek.cert").write_bytes(bytes(pek))
    r = _send("sev", psp_state, secret, certs, tmp_path / "stream")
    assert r.exit_code == 3 and "CEK -> PEK" in r.stderr and r.stdout == ""


@pytest.mark.parametrize("mode", ["sev", "sev-es"])
def test_a_snapshot_restored_on_the_same_platform_finishes_as_if_uninterrupted(mode, psp_state, secret, tmp_path):
    whole = hv("run", SECRET_IMG, f"--{mode}", "--mem", MEM, "--secret-file", secret, "--psp-state", psp_state)
    snap = tmp_path / "guest.snap"
    saved = hv("run", SECRET_IMG, f"--{mode}", "--mem", MEM, "--secret-file", secret,
               "--psp-state", psp_state, "--save", snap, "--migrate-after-exits", AFTER)
    assert saved.exit_code == 0 and snap.is_file()
    data = secret.read_bytes()
    blob = snap.read_bytes()
    assert all(data[i:i + 16] not in blob for i in range(len(data) - 15))
    restored = hv("run", "--restore", snap, "--psp-state", psp_state)
    assert (restored.exit_code, saved.stdout + restored.stdout) == (whole.exit_code, whole.stdout)
    assert whole.exit_code == 0 and _expected_line(secret) in whole.stdout


@pytest.mark.parametrize("args,words", [
    (["--sev-snp", "--save", "x.snap", "--migrate-after-exits", "5"], "SEV-SNP guest cannot be migrated"),
    (["--save", "x.snap", "--migrate-after-exits", "5"], "for --sev and --sev-es"),
    (["--sev", "--migrate-out", "d", "--migrate-after-exits", "5"], "go together"),
    (["--sev", "--save", "x.snap"], "--save needs --migrate-after-exits"),
])
def test_bad_combinations_are_one_line_usage_errors(args, words):
    r = hv("run", SECRET_IMG, *args)
    assert r.exit_code == 2 and words in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_incoming_takes_no_image_and_a_stream_it_can_read(tmp_path, psp_state, sent):
    r = hv("run", SECRET_IMG, "--incoming", sent[0])
    assert r.exit_code == 2 and "IMAGE" in r.stderr
    (tmp_path / "empty").mkdir()
    r = hv("run", "--incoming", tmp_path / "empty", "--psp-state", psp_state)
    assert r.exit_code == 3 and "manifest.json" in r.stderr
