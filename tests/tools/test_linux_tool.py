"""tools/linux.py: the newc cpio writer read back independently, the /init script's behaviour, and
`fetch` end to end against stand-in apt commands (no network) serving packages built here.

The reader below follows the format's description (Documentation/driver-api/early-userspace/
buffer-format.rst), not the writer: fields are parsed as text, padding is checked to be zeros.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import lzma
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TOOL = REPO / "tools" / "linux.py"


def _load_tool():
    """tools/ is not a package: load linux.py by path."""
    spec = importlib.util.spec_from_file_location("hv_linux_tool", TOOL)
    module = importlib.util.module_from_spec(spec)
    sys.modules["hv_linux_tool"] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


linux = _load_tool()

FIELDS = ("ino", "mode", "uid", "gid", "nlink", "mtime", "filesize", "devmajor", "devminor",
          "rdevmajor", "rdevminor", "namesize", "check")


def read_newc(archive: bytes) -> list[dict]:
    """Every member up to and including TRAILER!!!, with its fields, name and data."""
    members, pos = [], 0
    while True:
        assert pos % 4 == 0, f"header at {pos} not 4-aligned"
        head = archive[pos:pos + 110]
        assert head[:6] == b"070701", f"bad magic at {pos}: {head[:6]!r}"
        m = {name: int(head[6 + 8 * i:14 + 8 * i], 16) for i, name in enumerate(FIELDS)}
        name_end = pos + 110 + m["namesize"]
        raw_name = archive[pos + 110:name_end]
        assert raw_name.endswith(b"\0") and b"\0" not in raw_name[:-1]
        m["name"] = raw_name[:-1].decode()
        data_start = (name_end + 3) & ~3
        assert archive[name_end:data_start] == b"\0" * (data_start - name_end)
        m["data"] = archive[data_start:data_start + m["filesize"]]
        assert len(m["data"]) == m["filesize"], "archive ends inside a member"
        pos = (data_start + m["filesize"] + 3) & ~3
        assert archive[data_start + m["filesize"]:pos] == b"\0" * (pos - data_start - m["filesize"])
        members.append(m)
        if m["name"] == "TRAILER!!!":
            assert pos == len(archive), "bytes after the trailer"
            return members


# -- the cpio writer ---------------------------------------------------------------------------


def test_newc_known_answer_for_one_file():
    """One 3-byte file "a" mode 0100644: the header text and the padding, spelled out by hand."""
    archive = linux.newc_archive([linux.CpioEntry.file("a", b"xyz", 0o644)])
    expect = (b"070701" + b"00000001" + b"000081A4" + b"00000000" * 2 + b"00000001" + b"00000000"
              + b"00000003" + b"00000000" * 4 + b"00000002" + b"00000000")
    assert archive[:110] == expect
    # 110 + 2 (name "a\0") = 112, already 4-aligned; data "xyz" + one pad byte.
    assert archive[110:116] == b"a\0xyz\0"
    trailer = archive[116:]
    assert trailer[:6] == b"070701" and trailer[110:121] == b"TRAILER!!!\0"
    assert len(archive) % 4 == 0


def test_odd_name_and_data_lengths_are_padded_to_four():
    entries = [linux.CpioEntry.file("n" * k, b"d" * j) for k, j in ((1, 1), (2, 2), (3, 3), (4, 5))]
    members = read_newc(linux.newc_archive(entries))
    assert [(m["name"], m["data"]) for m in members[:-1]] == [(e.name, e.data) for e in entries]


def test_bad_names_are_refused():
    for name in ("", "/init", "TRAILER!!!"):
        with pytest.raises(ValueError):
            linux.newc_archive([linux.CpioEntry.file(name, b"")])
    with pytest.raises(ValueError):
        linux.newc_archive([linux.CpioEntry.file("a", b""), linux.CpioEntry.file("a", b"")])


BUSYBOX = b"\x7fELF fake busybox \x00\x01\x02"
MODULE_NAMES = ["gf128mul", "ghash-generic", "ctr", "gcm", "sev-guest"]  # /init's insmod order
MODULES = {name: b"\x7fELF fake " + name.encode() + b".ko" for name in MODULE_NAMES}
NO_MODULES = dict.fromkeys(MODULE_NAMES, b"")
CLIENT = b"\x7fELF fake hv-report"


def entries() -> list:
    return linux.initramfs_entries(BUSYBOX, MODULES, CLIENT)


def initrd() -> bytes:
    return linux.build_initrd(BUSYBOX, MODULES, CLIENT)


def test_initramfs_members():
    members = read_newc(linux.newc_archive(entries()))
    by_name = {m["name"]: m for m in members}
    assert members[-1]["name"] == "TRAILER!!!"
    for d in ("dev", "proc", "sys", "bin", "sbin", "root", "lib", "lib/modules"):
        assert stat.S_ISDIR(by_name[d]["mode"]), d
    console = by_name["dev/console"]
    assert stat.S_ISCHR(console["mode"])
    assert (console["rdevmajor"], console["rdevminor"]) == (5, 1)
    assert by_name["bin/busybox"]["data"] == BUSYBOX
    assert by_name["bin/busybox"]["mode"] == 0o100755
    assert by_name["bin/hv-report"]["data"] == CLIENT and by_name["bin/hv-report"]["mode"] == 0o100755
    for name, data in MODULES.items():
        assert (by_name[f"lib/modules/{name}.ko"]["data"], by_name[f"lib/modules/{name}.ko"]["mode"]) == (
            data, 0o100644)
    assert by_name["init"]["mode"] == 0o100755
    assert by_name["init"]["data"].startswith(b"#!/bin/busybox sh\n")
    # Distinct inode numbers, so the kernel does not link members to each other.
    inos = [m["ino"] for m in members[:-1]]
    assert len(set(inos)) == len(inos)
    assert all(m["mtime"] == 0 and m["uid"] == 0 and m["gid"] == 0 for m in members)
    # A directory comes before anything inside it (the kernel creates members in order).
    order = [m["name"] for m in members]
    assert order.index("dev") < order.index("dev/console")
    assert order.index("bin") < order.index("bin/busybox") < order.index("init")
    assert order.index("bin") < order.index("bin/hv-report") < order.index("init")
    assert order.index("lib") < order.index("lib/modules") < order.index("lib/modules/gf128mul.ko")
    # The paths /init runs are the members' paths.
    assert f"/{linux.CLIENT_PATH} " in linux.INIT_SCRIPT
    assert f" /{linux.MODULE_DIR}/$module.ko" in linux.INIT_SCRIPT
    with pytest.raises(ValueError):  # the modules /init loads, no more, no fewer, in its order
        linux.initramfs_entries(BUSYBOX, dict(reversed(MODULES.items())), CLIENT)
    with pytest.raises(ValueError):
        linux.initramfs_entries(BUSYBOX, {"sev-guest": MODULES["sev-guest"]}, CLIENT)


def test_the_committed_client_goes_in():
    """Scenario: fetching takes the prebuilt client from the repository, no compiler needed."""
    assert linux.CLIENT_BINARY == REPO / "guests" / "linux" / "hv-report"
    assert linux.client_binary() == linux.CLIENT_BINARY.read_bytes()
    assert linux.client_binary()[:4] == b"\x7fELF"


def test_layout_digest_covers_the_client_but_not_package_files():
    """Scenario: a new hv-report (the tool's own) makes the next fetch rebuild the initrd; a new
    busybox or module comes with a new package version, which the manifest checks instead."""
    digest = linux.initrd_layout_sha256(CLIENT)
    assert digest == hashlib.sha256(linux.build_initrd(b"", NO_MODULES, CLIENT)).hexdigest()
    assert linux.initrd_layout_sha256(CLIENT + b"\0") != digest
    assert hashlib.sha256(linux.build_initrd(BUSYBOX, MODULES, CLIENT)).hexdigest() != digest


def test_the_marker_is_only_in_the_initramfs_and_never_printed():
    """Scenario: a dump that shows /etc/hv-secret's text shows the initramfs's contents, and
    nothing else in the archive (busybox, /init) or the guest's console can account for it."""
    secret = linux.INITRAMFS_SECRET.encode()
    digest = hashlib.sha256(linux.SECRET_PHRASE.encode()).hexdigest()
    assert secret == b"hv-initramfs-secret " + digest.encode() + b"\n" and len(secret) == 85
    members = read_newc(linux.newc_archive(entries()))
    by_name = {m["name"]: m for m in members}
    assert by_name["etc/hv-secret"]["data"] == secret
    assert by_name["etc/hv-secret"]["mode"] == 0o100600
    assert [m["name"] for m in members if secret in m["data"]] == ["etc/hv-secret"]
    assert "hv-secret" not in linux.INIT_SCRIPT and digest not in linux.INIT_SCRIPT
    # The gzip stream does not hold the text verbatim: only the unpacked file does.
    packed = initrd()
    assert not any(secret[i:i + 16] in packed for i in range(len(secret) - 15))


def test_hv_reads_the_marker_back_from_the_archive():
    """Scenario: the attack lab and the Linux tests read the marker from the initrd the guest
    boots (hv.vmm.initramfs), at the path this tool writes it to."""
    from hv.vmm import initramfs

    assert initramfs.SECRET_PATH == linux.SECRET_PATH
    assert initramfs.POWEROFF_PARAM == linux.POWEROFF_PARAM
    initrd_ = initrd()
    assert initramfs.initrd_file(initrd_, initramfs.SECRET_PATH) == linux.INITRAMFS_SECRET.encode()
    assert initramfs.initrd_file(gzip.decompress(initrd_), "bin/busybox") == BUSYBOX
    assert initramfs.initrd_file(initrd_, linux.CLIENT_PATH) == CLIENT
    assert initramfs.initrd_file(initrd_, "dev/console") is None  # a device node, not a file
    assert initramfs.initrd_file(initrd_, "etc/no-such-file") is None
    for bad in (b"not an archive", initrd_[:40], gzip.decompress(initrd_)[:2000]):
        with pytest.raises(initramfs.InitramfsError):
            initramfs.initrd_file(bad, initramfs.SECRET_PATH)


def test_initrd_is_gzip_and_reproducible():
    a, b = initrd(), initrd()
    assert a == b
    assert a[:2] == b"\x1f\x8b" and a[4:8] == b"\0\0\0\0"  # gzip magic, MTIME 0
    assert read_newc(gzip.decompress(a))[-1]["name"] == "TRAILER!!!"


@pytest.mark.skipif(shutil.which("cpio") is None, reason="no cpio on this machine (apt-get install cpio)")
def test_gnu_cpio_lists_the_archive(tmp_path):
    archive = tmp_path / "initrd.cpio"
    archive.write_bytes(linux.newc_archive(entries()))
    r = subprocess.run(["cpio", "-itv", "--quiet", "-F", str(archive)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    names = [ln.split()[-1] for ln in lines]
    assert {"init", "bin/busybox", "bin/hv-report", "lib/modules/sev-guest.ko", "lib/modules/gcm.ko",
            "dev/console", "proc", "sys"} <= set(names)
    console = next(ln for ln in lines if ln.endswith("dev/console"))
    assert console.startswith("crw") and "5,   1" in console


# -- the /init script ---------------------------------------------------------------------------


def test_init_script_markers():
    text = linux.INIT_SCRIPT
    assert text.startswith("#!/bin/busybox sh\n")
    for mount in ("-t proc proc /proc", "-t sysfs sysfs /sys", "-t devtmpfs devtmpfs /dev"):
        assert f"/bin/busybox mount {mount}\n" in text
    assert 'echo "hv-init: user space is up"' in text
    assert "hv.init=poweroff" in text and "/bin/busybox poweroff -f" in text
    assert '*" hv.report="*)' in text and 'echo "hv-init: attestation"' in text
    assert "for module in gf128mul ghash-generic ctr gcm sev-guest; do" in text
    assert "/bin/busybox insmod /lib/modules/$module.ko || return 1" in text
    assert 'plain="$(/bin/hv-report "$1")" || return 1' in text
    assert "echo \"$plain\" | /bin/busybox sed 's/^/SNP_GET_REPORT /'" in text
    assert '/bin/hv-report --ext "$1"' in text
    assert 'attest "$nonce" || echo "hv-init: attestation failed"' in text
    assert text.rstrip("\n").splitlines()[-1] == "exec /bin/busybox sh"


def run_init(tmp_path: Path, cmdline: str, failing: str = "") -> tuple[str, list[str]]:
    """Run /init under the host's sh with /bin/busybox and /bin/hv-report replaced by recorders;
    busybox answers `cat /proc/cmdline` with `cmdline`, hands `sed` to the host's sed and fails
    the applet named `failing`, as hv-report does when `failing` is "hv-report". What /init
    printed and the calls in order."""
    log = tmp_path / "calls"
    log.unlink(missing_ok=True)
    fake = tmp_path / "busybox"
    fake.write_text(f"""#!/bin/sh
if [ "$1" = sed ]; then shift; exec sed "$@"; fi
echo "$*" >> {log}
if [ "$1 $2" = "cat /proc/cmdline" ]; then echo '{cmdline}'; fi
if [ "$1" = "{failing}" ]; then exit 1; fi
exit 0
""")
    client = tmp_path / "hv-report"
    client.write_text(f"""#!/bin/sh
echo "hv-report $*" >> {log}
echo "report: $*"
exit {1 if failing == "hv-report" else 0}
""")
    for path in (fake, client):
        path.chmod(0o755)
    script = tmp_path / "init"
    script.write_text(linux.INIT_SCRIPT.replace("/bin/busybox", str(fake))
                      .replace("/bin/hv-report", str(client)))
    r = subprocess.run(["sh", str(script)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return r.stdout, log.read_text().splitlines()


needs_sh = pytest.mark.skipif(shutil.which("sh") is None or shutil.which("sed") is None,
                              reason="no sh or sed on this machine")
NONCE = "0123456789abcdef" * 8


@needs_sh
def test_init_runs_a_shell_by_default(tmp_path):
    out, calls = run_init(tmp_path, "console=ttyS0 panic=-1")
    assert out == "hv-init: user space is up\n"
    assert calls[:3] == ["mount -t proc proc /proc", "mount -t sysfs sysfs /sys",
                         "mount -t devtmpfs devtmpfs /dev"]
    assert calls[-1] == "sh"
    assert not any(c.startswith(("poweroff", "insmod", "hv-report")) for c in calls)


@needs_sh
def test_init_powers_off_when_asked(tmp_path):
    out, calls = run_init(tmp_path, "console=ttyS0 hv.init=poweroff panic=-1")
    assert out.startswith("hv-init: user space is up\nhv-init: powering off\n")
    assert "poweroff -f" in calls
    # At the end of the line too, and not for a longer value.
    _, calls = run_init(tmp_path, "console=ttyS0 hv.init=poweroff")
    assert "poweroff -f" in calls
    _, calls = run_init(tmp_path, "console=ttyS0 hv.init=poweroffx")
    assert "poweroff -f" not in calls


@needs_sh
@pytest.mark.parametrize("where", ["middle", "end"])
def test_init_reports_then_powers_off(tmp_path, where):
    """Scenario: `hv.report=NONCE hv.init=poweroff` loads the module, asks for a report and an
    extended report over NONCE (the first's lines marked, so one `report:` line starts a line
    on the console), then powers off."""
    params = [f"hv.report={NONCE}", "hv.init=poweroff"]
    cmdline = " ".join(["console=ttyS0", *(params if where == "middle" else params[::-1])])
    out, calls = run_init(tmp_path, cmdline)
    # The recorder's poweroff returns, so the script goes on to its "poweroff failed" line.
    assert out.startswith("hv-init: user space is up\nhv-init: attestation\n"
                          f"SNP_GET_REPORT report: {NONCE}\nreport: --ext {NONCE}\n"
                          "hv-init: powering off\n")
    work = [c for c in calls if not c.startswith(("mount", "--install", "cat"))]
    assert work[:8] == [*(f"insmod /lib/modules/{name}.ko" for name in MODULE_NAMES),
                        f"hv-report {NONCE}", f"hv-report --ext {NONCE}", "poweroff -f"]


@needs_sh
@pytest.mark.parametrize("failing, ran", [("insmod", []), ("hv-report", [f"hv-report {NONCE}"])])
def test_init_goes_on_when_attestation_fails(tmp_path, failing, ran):
    """Scenario: no SEV-SNP (insmod fails) or a refused request: one line, then the shell."""
    out, calls = run_init(tmp_path, f"console=ttyS0 hv.report={NONCE}", failing)
    assert out.startswith("hv-init: user space is up\nhv-init: attestation\n")
    assert out.endswith("hv-init: attestation failed\n") and "\nreport:" not in out
    assert [c for c in calls if c.startswith("hv-report")] == ran
    assert calls[-1] == "sh"


@needs_sh
def test_init_hands_any_nonce_to_the_client(tmp_path):
    """Scenario: the client, not the script, judges the nonce, so a bad one is a failed
    attestation on the console instead of silence; a longer parameter name is not ours."""
    _, calls = run_init(tmp_path, "hv.report=xyz console=ttyS0")
    assert "hv-report xyz" in calls
    _, calls = run_init(tmp_path, "console=ttyS0 hv.report=")
    assert "hv-report " in calls
    _, calls = run_init(tmp_path, f"console=ttyS0 xhv.report={NONCE} hv.reports={NONCE}")
    assert not any(c.startswith(("insmod", "hv-report")) for c in calls)


# -- fetch against stand-in apt commands ----------------------------------------------------------

KERNEL_N = 9
RELEASE = f"6.1.0-{KERNEL_N}-amd64"
KERNEL_PKG = f"linux-image-{RELEASE}-unsigned"
KERNEL_VER = "6.1.99-1"
BUSYBOX_VER = "1:1.35.0-4"
FAKE_VMLINUZ = b"MZ fake bzImage " * 64
FAKE_MODULE = b"\x7fELF fake sev-guest module"
FAKE_MODULES = {name: b"\x7fELF fake module " + name.encode() for name in MODULE_NAMES[:-1]}
FAKE_MODULES["sev-guest"] = FAKE_MODULE


def build_deb(root: Path, name: str, version: str, files: dict[str, bytes], out: Path) -> None:
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    (root / "DEBIAN").mkdir()
    (root / "DEBIAN" / "control").write_text(
        f"Package: {name}\nVersion: {version}\nArchitecture: amd64\nMaintainer: t <t@t>\n"
        "Description: test\n")
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(root), str(out)],
                   check=True, capture_output=True)


@pytest.fixture
def fake_apt(tmp_path):
    """A bin directory whose apt-cache and apt-get answer from packages built here; apt-get logs
    each download. Kernels 7 and 9 are downloadable, 12 is listed but has no candidate."""
    if shutil.which("dpkg-deb") is None:
        pytest.skip("no dpkg-deb on this machine")
    debs = tmp_path / "debs"
    debs.mkdir()
    build_deb(tmp_path / "k", KERNEL_PKG, KERNEL_VER, {
        f"boot/vmlinuz-{RELEASE}": FAKE_VMLINUZ,
        f"boot/System.map-{RELEASE}": b"ffffffffffffffff B The real System.map is in the -dbg package\n",
        f"boot/config-{RELEASE}": b"CONFIG_SEV_GUEST=m\n",
        f"lib/modules/{RELEASE}/kernel/drivers/virt/coco/sev-guest/sev-guest.ko.xz":
            lzma.compress(FAKE_MODULE, format=lzma.FORMAT_XZ),
        **{f"lib/modules/{RELEASE}/kernel/crypto/{name}.ko": FAKE_MODULES[name] for name in MODULE_NAMES[:-1]},
    }, debs / f"{KERNEL_PKG}.deb")
    build_deb(tmp_path / "b", "busybox-static", BUSYBOX_VER, {"bin/busybox": BUSYBOX},
              debs / "busybox-static.deb")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "downloads"
    policy = {"linux-image-6.1.0-7-amd64-unsigned": "6.1.90-1", KERNEL_PKG: KERNEL_VER,
              "linux-image-6.1.0-12-amd64-unsigned": None, "busybox-static": BUSYBOX_VER}
    (bindir / "apt-cache").write_text(f"""#!{sys.executable}
import json, re, sys
policy = json.loads({json.dumps(json.dumps(policy))})
if sys.argv[1] == "search":
    for name in list(policy) + ["linux-image-6.1.0-9-cloud-amd64-unsigned"]:
        if re.search(sys.argv[-1], name):
            print(name + " - Linux 6.1 for 64-bit PCs")
elif sys.argv[1] == "policy":
    v = policy.get(sys.argv[2])
    print(sys.argv[2] + ":")
    print("  Installed: (none)")
    print("  Candidate: " + (v or "(none)"))
""")
    (bindir / "apt-get").write_text(f"""#!{sys.executable}
import shutil, sys
assert sys.argv[1] == "download"
name, version = sys.argv[-1].split("=", 1)
with open({str(log)!r}, "a") as f:
    f.write(name + "=" + version + "\\n")
shutil.copy({str(debs)!r} + "/" + name + ".deb", name + "_" + version.replace(":", "%3a") + "_amd64.deb")
""")
    for tool in ("apt-cache", "apt-get"):
        (bindir / tool).chmod(0o755)
    dpkg = Path(shutil.which("dpkg-deb")).parent
    env = dict(os.environ, PATH=f"{bindir}:{dpkg}")
    return env, log


def run_tool(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TOOL), *args], env=env, capture_output=True,
                          text=True, timeout=120)


def test_fetch_end_to_end_and_idempotent(tmp_path, fake_apt):
    env, log = fake_apt
    out = tmp_path / "out"
    r = run_tool(env, "fetch", "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert f"{KERNEL_PKG} {KERNEL_VER}" in r.stdout  # 9, not 7 (older) or 12 (no candidate)
    assert f"busybox-static {BUSYBOX_VER}" in r.stdout
    assert "sev-guest.ko.xz" in r.stdout
    assert log.read_text().splitlines() == [f"{KERNEL_PKG}={KERNEL_VER}", f"busybox-static={BUSYBOX_VER}"]

    assert (out / "vmlinuz").read_bytes() == FAKE_VMLINUZ
    assert (out / "config").read_bytes() == b"CONFIG_SEV_GUEST=m\n"
    assert (out / "sev-guest.ko").read_bytes() == FAKE_MODULE  # unpacked from .ko.xz
    members = {m["name"]: m for m in read_newc(gzip.decompress((out / "initrd.cpio.gz").read_bytes()))}
    assert members["bin/busybox"]["data"] == BUSYBOX
    # The modules from the kernel package and the committed client, as /init expects them.
    client = (REPO / "guests" / "linux" / "hv-report").read_bytes()
    for name, data in FAKE_MODULES.items():
        assert members[f"lib/modules/{name}.ko"]["data"] == data
    assert (members["bin/hv-report"]["data"], members["bin/hv-report"]["mode"]) == (client, 0o100755)
    assert members["init"]["data"] == linux.INIT_SCRIPT.encode()

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["initrd_layout_sha256"] == hashlib.sha256(
        linux.build_initrd(b"", NO_MODULES, client)).hexdigest()
    assert manifest["hv_report_sha256"] == hashlib.sha256(client).hexdigest()
    assert manifest["packages"] == {KERNEL_PKG: KERNEL_VER, "busybox-static": BUSYBOX_VER}
    assert manifest["kernel_release"] == RELEASE
    assert manifest["system_map"] == "placeholder"
    moddir = f"lib/modules/{RELEASE}/kernel"
    assert manifest["initrd_modules"] == {
        **{name: f"{moddir}/crypto/{name}.ko" for name in MODULE_NAMES[:-1]},
        "sev-guest": f"{moddir}/drivers/virt/coco/sev-guest/sev-guest.ko.xz"}
    assert manifest["files"] == {
        name: hashlib.sha256((out / name).read_bytes()).hexdigest()
        for name in ("vmlinuz", "System.map", "config", "sev-guest.ko", "initrd.cpio.gz")}

    # Second run: apt is asked, nothing is downloaded.
    r = run_tool(env, "fetch", "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert "up to date" in r.stdout
    assert len(log.read_text().splitlines()) == 2

    # A damaged output makes the next run fetch again and restore it.
    (out / "vmlinuz").write_bytes(b"damaged")
    r = run_tool(env, "fetch", "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert len(log.read_text().splitlines()) == 4
    assert (out / "vmlinuz").read_bytes() == FAKE_VMLINUZ

    r = run_tool(env, "fetch", "-o", str(out), "--force")
    assert r.returncode == 0 and len(log.read_text().splitlines()) == 6

    # An initrd from an older tool (another layout, here: no marker file) is built again, even
    # though the packages and every recorded digest still match.
    old = linux.gzip_deterministic(linux.newc_archive(
        [e for e in linux.initramfs_entries(BUSYBOX, FAKE_MODULES, client) if e.name != linux.SECRET_PATH]))
    (out / "initrd.cpio.gz").write_bytes(old)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["files"]["initrd.cpio.gz"] = hashlib.sha256(old).hexdigest()
    manifest["initrd_layout_sha256"] = hashlib.sha256(linux.gzip_deterministic(linux.newc_archive(
        [e for e in linux.initramfs_entries(b"", NO_MODULES, client) if e.name != linux.SECRET_PATH]))).hexdigest()
    (out / "manifest.json").write_text(json.dumps(manifest))
    r = run_tool(env, "fetch", "-o", str(out))
    assert r.returncode == 0 and "up to date" not in r.stdout
    assert len(log.read_text().splitlines()) == 8
    members = read_newc(gzip.decompress((out / "initrd.cpio.gz").read_bytes()))
    assert {m["name"]: m["data"] for m in members}["etc/hv-secret"] == linux.INITRAMFS_SECRET.encode()

    # So is one around an older client: the client is the tool's own, part of the layout.
    stale = linux.build_initrd(BUSYBOX, FAKE_MODULES, b"\x7fELF older hv-report")
    (out / "initrd.cpio.gz").write_bytes(stale)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["files"]["initrd.cpio.gz"] = hashlib.sha256(stale).hexdigest()
    manifest["initrd_layout_sha256"] = linux.initrd_layout_sha256(b"\x7fELF older hv-report")
    (out / "manifest.json").write_text(json.dumps(manifest))
    r = run_tool(env, "fetch", "-o", str(out))
    assert r.returncode == 0 and "up to date" not in r.stdout
    assert len(log.read_text().splitlines()) == 10
    members = read_newc(gzip.decompress((out / "initrd.cpio.gz").read_bytes()))
    assert {m["name"]: m["data"] for m in members}["bin/hv-report"] == client


def test_fetch_without_the_client_is_one_error(tmp_path, monkeypatch):
    monkeypatch.setattr(linux, "CLIENT_BINARY", tmp_path / "hv-report")
    with pytest.raises(linux.FetchError, match="hv-report: No such file .*build_guests.py"):
        linux.client_binary()


def test_fetch_without_a_crypto_module_is_one_line(tmp_path, fake_apt):
    """Scenario: a kernel package without one of the modules /init loads is refused up front,
    not discovered as a failed attestation at boot."""
    env, _ = fake_apt
    debs = tmp_path / "debs"
    root = tmp_path / "k2"
    subprocess.run(["dpkg-deb", "-x", str(debs / f"{KERNEL_PKG}.deb"), str(root)], check=True)
    (root / f"lib/modules/{RELEASE}/kernel/crypto/gcm.ko").unlink()
    build_deb(root, KERNEL_PKG, KERNEL_VER, {}, debs / f"{KERNEL_PKG}.deb")
    r = run_tool(env, "fetch", "-o", str(tmp_path / "out"))
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1 and "kernel/crypto/gcm.ko (or .ko.xz) not found" in r.stderr


def test_fetch_without_apt_is_one_line(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    r = run_tool(dict(os.environ, PATH=str(empty)), "fetch", "-o", str(tmp_path / "out"))
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1 and "apt-cache not found" in r.stderr
    assert not (tmp_path / "out").exists()


def test_fetch_with_no_kernel_package_is_one_line(tmp_path, fake_apt):
    env, _ = fake_apt
    bindir = Path(env["PATH"].split(":")[0])
    (bindir / "apt-cache").write_text("#!/bin/sh\nexit 0\n")  # searches find nothing
    r = run_tool(env, "fetch", "-o", str(tmp_path / "out"))
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1 and "no linux-image-6.1.0-N-amd64-unsigned" in r.stderr


def test_help_names_the_subcommand_and_options():
    r = subprocess.run([sys.executable, str(TOOL), "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "fetch" in r.stdout
    r = subprocess.run([sys.executable, str(TOOL), "fetch", "--help"], capture_output=True, text=True)
    assert r.returncode == 0
    for option in ("-o DIR", "--force", "hv.init=poweroff"):
        assert option in r.stdout
    r = subprocess.run([sys.executable, str(TOOL)], capture_output=True, text=True)
    assert r.returncode == 2
