"""`hv owner measure` and `verify --image`: the digest of an image is SHA-256 over hv.boot's
launch regions; any changed byte, memory size or C-bit position changes it."""

import hashlib
import json

import pytest
from click.testing import CliRunner

from hv.owner.cli import owner

from hv import boot

IMAGE = bytes.fromhex("f4") + bytes(range(256)) * 3  # a flat binary: hlt, then data


def run(*args):
    return CliRunner().invoke(owner, [str(a) for a in args])


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "guest.img"
    path.write_bytes(IMAGE)
    return path


def test_digest_is_sha256_of_launch_regions(image):
    result = run("measure", image, "--mem", "16M")
    assert result.exit_code == 0, result.output
    h = hashlib.sha256()
    for _, data in boot.launch_regions(IMAGE, 16 << 20, 47):
        h.update(data)
    assert result.stdout.strip() == h.hexdigest()
    if hasattr(boot, "launch_digest"):
        assert result.stdout.strip() == boot.launch_digest(IMAGE, 16 << 20, 47).hex()


def test_json_lists_regions(image):
    data = json.loads(run("measure", image, "--mem", "16M", "--json").stdout)
    assert data["mem_size"] == 16 << 20 and data["cbitpos"] == 47
    assert [r["gpa"] for r in data["regions"]] == [gpa for gpa, _ in boot.launch_regions(IMAGE, 16 << 20, 47)]


def test_digest_depends_on_every_input(image, tmp_path):
    base = run("measure", image).stdout
    changed = tmp_path / "changed.img"
    changed.write_bytes(IMAGE[:100] + bytes([IMAGE[100] ^ 1]) + IMAGE[101:])
    assert run("measure", changed).stdout != base
    assert run("measure", image, "--mem", "128M").stdout != base
    assert run("measure", image, "--cbitpos", "51").stdout != base
    assert run("measure", image, "--mem", "64M").stdout == base  # the default


def test_verify_with_image(image, tmp_path, export_dir):
    out = tmp_path / "s"
    assert run("session", export_dir / "pdh.cert", "-o", out).exit_code == 0
    digest = bytes.fromhex(run("measure", image).stdout.strip())
    import hmac
    tk = (out / "tmp_tk.bin").read_bytes()
    msg = bytes([4, 0, 24, 15]) + (1).to_bytes(4, "little") + digest + bytes(16)  # policy 0x1, the default
    meas = hmac.new(tk[16:], msg, hashlib.sha256).hexdigest()
    args = ["verify", "--measurement", meas, "--mnonce", "00" * 16, "--tk", out / "tmp_tk.bin", "--image", image,
            "--api-major", 0, "--api-minor", 24, "--build", 15]
    assert run(*args).exit_code == 0
    args[args.index("--image") + 1] = tmp_path / "none.img"
    assert run(*args).exit_code == 2


def test_bad_images_and_sizes_exit_2(tmp_path, image):
    empty = tmp_path / "empty.img"
    empty.write_bytes(b"")
    result = run("measure", empty)
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1
    result = run("measure", image, "--mem", "lots")
    assert result.exit_code == 2 and "not a size" in result.stderr
    result = run("measure", image, "--mem", "3M")
    assert result.exit_code == 2
    truncated_elf = tmp_path / "bad.elf"
    truncated_elf.write_bytes(b"\x7fELF\x02\x01\x01" + bytes(9))
    assert run("measure", truncated_elf).exit_code == 2


def test_es_policy_extends_the_digest_over_the_vmsa(image):
    """Scenario: with the ES policy bit the digest continues over the initial VMSA page."""
    result = run("measure", image, "--mem", "16M", "--policy", "0x5")
    assert result.exit_code == 0, result.output
    h = hashlib.sha256()
    for _, data in boot.launch_regions(IMAGE, 16 << 20, 47):
        h.update(data)
    h.update(boot.initial_vmsa(IMAGE, 16 << 20))
    assert result.stdout.strip() == h.hexdigest()
    assert result.stdout != run("measure", image, "--mem", "16M", "--policy", "0x1").stdout


def test_owner_exec_without_policy_takes_the_es_digest_for_an_es_launch_of_an_image(image, tmp_path):
    """Scenario: `hv run IMAGE --sev-es --owner-exec` (policy 0x5) measures the VMSA after the
    image; the owner's exec without --policy expects that digest of it, and the SEV one of an
    SEV launch."""
    import sevwire as sw
    from tests.owner.test_owner_respond import run_exec

    tk, mnonce = bytes(range(32)), bytes(16)
    for policy in (5, 1):
        digest = boot.launch_digest(IMAGE, 16 << 20, 47, es=policy == 5)
        meas = sw.launch_measure(tk[16:], 0, 24, 15, policy, digest, mnonce)
        request = json.dumps({"measurement": meas.hex(), "mnonce": mnonce.hex(), "policy": policy,
                              "api_major": 0, "api_minor": 24, "build": 15})
        proc = run_exec(tmp_path, tk, request, "--image", str(image), "--mem", "16M")
        assert proc.returncode == 0 and "header" in json.loads(proc.stdout), proc.stderr
