"""The --owner-exec protocol: `respond` and `python -m hv.owner.exec` release the secret to the
expected launch only. The PSP's side is played with the platform's PDH key."""

import hashlib
import json
import os
import pathlib
import subprocess
import sys

import pytest

import hv.owner
import sevwire as sw
from hv.owner import OwnerInputError, respond

DIGEST = hashlib.sha256(b"expected image").digest()
SECRET = b"the guest's disk key"
API = {"api_major": 0, "api_minor": 24, "build": 15}


@pytest.fixture
def launch(platform):
    """An owner session opened by the 'PSP', and the PSP's LAUNCH_MEASURE answer for DIGEST."""
    session = sw.build_session(platform["certs"]["pdh"], 0x1)
    keys = sw.open_session(session.blob, session.godh_cert, platform["keys"]["pdh"], 0x1)
    mnonce = os.urandom(16)
    meas = sw.launch_measure(keys.tik, 0, 24, 15, 0x1, DIGEST, mnonce)
    request = {"measurement": meas.hex(), "mnonce": mnonce.hex(), "policy": 1, **API}
    return session.tek + session.tik, keys, request


def test_expected_launch_gets_the_secret(launch):
    tk, psp_keys, request = launch
    answer = respond(request, tk, DIGEST, SECRET)
    assert set(answer) == {"header", "data"} and len(bytes.fromhex(answer["header"])) == 52
    got = sw.open_secret(psp_keys.tek, psp_keys.tik, bytes.fromhex(answer["header"]), bytes.fromhex(answer["data"]),
                         bytes.fromhex(request["measurement"]), 0, 24)
    assert got == SECRET


@pytest.mark.parametrize("change", [
    {"measurement": "00" * 32}, {"mnonce": "11" * 16}, {"policy": 0}, {"build": 16}, {"api_minor": 23},
])
def test_anything_else_is_refused(launch, change):
    tk, _, request = launch
    answer = respond({**request, **change}, tk, DIGEST, SECRET)
    assert list(answer) == ["refuse"] and "does not match" in answer["refuse"]


def test_other_image_is_refused(launch):
    tk, _, request = launch
    assert "refuse" in respond(request, tk, hashlib.sha256(b"patched image").digest(), SECRET)


def test_expected_policy(launch):
    tk, _, request = launch
    assert "header" in respond(request, tk, DIGEST, SECRET, expected_policy=1)
    answer = respond(request, tk, DIGEST, SECRET, expected_policy=0x3)
    assert "policy" in answer["refuse"]


def test_the_es_digest_is_expected_of_a_launch_whose_policy_has_the_es_bit(launch):
    """Scenario: given both digests, the owner expects the SEV-ES one (VMSA measured too) of a
    launch under an ES policy and the SEV one otherwise; a host that claims the ES bit for an SEV
    launch's measurement gets a refusal, since the measurement covers the policy."""
    tk, _, request = launch
    es_digest = hashlib.sha256(b"expected image, then its VMSA").digest()
    tik = bytes(tk[16:])
    mnonce = bytes.fromhex(request["mnonce"])
    es = {**request, "policy": 5,
          "measurement": sw.launch_measure(tik, 0, 24, 15, 5, es_digest, mnonce).hex()}
    assert "header" in respond(es, tk, DIGEST, SECRET, es_digest=es_digest)
    assert "header" in respond(request, tk, DIGEST, SECRET, es_digest=es_digest)
    assert "refuse" in respond(es, tk, DIGEST, SECRET)
    assert "refuse" in respond({**request, "policy": 5}, tk, DIGEST, SECRET, es_digest=es_digest)
    with pytest.raises(OwnerInputError):
        respond(request, tk, DIGEST, SECRET, es_digest=es_digest[:31])


@pytest.mark.parametrize("bad", [
    [], {"measurement": "00"}, {"measurement": "zz" * 32}, {"measurement": 5}, {"build": True}, {"build": 256},
    {"mnonce": "00" * 15},
])
def test_malformed_requests_raise(launch, bad):
    tk, _, request = launch
    req = bad if isinstance(bad, list) else {**request, **bad}
    with pytest.raises(OwnerInputError):
        respond(req, tk, DIGEST, SECRET)
    with pytest.raises(OwnerInputError):
        respond(request, tk[:31], DIGEST, SECRET)
    with pytest.raises(OwnerInputError):
        respond(request, tk, DIGEST, bytes(4097))


# ---- the script ------------------------------------------------------------------------------

REPO = pathlib.Path(hv.owner.__file__).resolve().parents[2]


def run_exec(tmp_path, tk, stdin, *extra):
    (tmp_path / "tk.bin").write_bytes(tk)
    (tmp_path / "secret").write_bytes(SECRET)
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-m", "hv.owner.exec", "--tk", str(tmp_path / "tk.bin"), "--secret", str(tmp_path / "secret"),
           *extra]
    return subprocess.run(cmd, input=stdin, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)


def test_exec_answers_and_refuses(tmp_path, launch):
    tk, psp_keys, request = launch
    proc = run_exec(tmp_path, tk, json.dumps(request), "--digest", DIGEST.hex())
    assert proc.returncode == 0, proc.stderr
    answer = json.loads(proc.stdout)
    assert sw.open_secret(psp_keys.tek, psp_keys.tik, bytes.fromhex(answer["header"]), bytes.fromhex(answer["data"]),
                          bytes.fromhex(request["measurement"]), 0, 24) == SECRET
    proc = run_exec(tmp_path, tk, json.dumps({**request, "build": 1}), "--digest", DIGEST.hex())
    assert proc.returncode == 1 and "refuse" in json.loads(proc.stdout)
    proc = run_exec(tmp_path, tk, "not json", "--digest", DIGEST.hex())
    assert proc.returncode == 2 and json.loads(proc.stdout)["refuse"].startswith("bad request")
    proc = run_exec(tmp_path, tk[:5], json.dumps(request), "--digest", DIGEST.hex())
    assert proc.returncode == 2 and proc.stdout == "" and "expected 32 bytes" in proc.stderr


def test_exec_with_image(tmp_path, launch, platform):
    boot = pytest.importorskip("hv.boot", reason="hv.boot (the launch layout) is not in the tree yet")
    image = b"\xf4" + bytes(100)
    (tmp_path / "guest.img").write_bytes(image)
    digest = boot.launch_digest(image, 64 << 20, 47)
    tk, psp_keys, request = launch
    mnonce = bytes.fromhex(request["mnonce"])
    request = {**request, "measurement": sw.launch_measure(psp_keys.tik, 0, 24, 15, 1, digest, mnonce).hex()}
    proc = run_exec(tmp_path, tk, json.dumps(request), "--image", str(tmp_path / "guest.img"), "--policy", "1")
    assert proc.returncode == 0, proc.stderr
    assert "header" in json.loads(proc.stdout)


# ---- the trust domain ------------------------------------------------------------------------


def test_owner_imports_only_trusted_code():
    """The owner's tools are trusted: they must not import the VMM, hypervisor, hardware or firmware."""
    import ast
    allowed_hv = ("hv.owner", "hv.boot")
    for path in pathlib.Path(hv.owner.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                assert name.split(".")[0] != "firmware", f"{path.name} imports {name}"
                if name == "hv" or name.startswith("hv."):
                    assert name.startswith(allowed_hv), f"{path.name} imports {name}"
