#!/usr/bin/env python3
"""Fetch a stock Debian 12 Linux kernel and build a busybox initramfs for it.

`fetch` looks up the newest `linux-image-6.1.0-N-amd64-unsigned` that apt can install (N changes
every few weeks, so it is never pinned), downloads it and `busybox-static` with `apt-get download`
(nothing is installed on the host), unpacks both with `dpkg-deb -x` in a temporary directory and
writes into the output directory (default build/linux/):

  vmlinuz          the bzImage (boot/vmlinuz-*)
  System.map       boot/System.map-* as Debian ships it: a one-line placeholder, since the real
                   map is in the -dbg package (about 860 MB), which is not fetched; the
                   manifest's "system_map" says which one was found
  config           the kernel's build configuration (boot/config-*)
  sev-guest.ko     the SEV-SNP guest driver module, uncompressed (/dev/sev-guest)
  initrd.cpio.gz   a gzip-compressed newc cpio archive: /bin/busybox, /bin/hv-report (below),
                   /lib/modules/*.ko (sev-guest.ko and the AES-GCM modules it needs),
                   /init, /dev/console (5,1), /etc/hv-secret (below) and the usual directories
  manifest.json    package names and versions, the SHA-256 of every file above and of
                   /bin/hv-report (hv_report_sha256), where each module came from
                   (initrd_modules), and the digest of the initrd's layout (initrd_layout_sha256)

/bin/hv-report is the project's own attestation client, guests/linux/hv-report: a static
program with no libc that asks /dev/sev-guest for an SEV-SNP report (guests/README.md). It is
committed prebuilt (tools/build_guests.py rebuilds it bit for bit), so fetching needs no compiler.

A second run asks apt again and does nothing when the manifest names the same package versions,
every file still has its recorded digest and the initrd's layout is this tool's: the manifest's
initrd_layout_sha256 is the digest of the initrd this tool builds with an empty busybox and
empty modules (the files that come from packages, whose versions the manifest names), so a
change to any other member (the /init script, hv-report, the marker, the directories, the list of
modules, the archive format) makes the next run build the initrd again. `--force` fetches anyway. The cpio archive and
its gzip wrapper carry no time stamps, so the same packages always give the same initrd.

/etc/hv-secret is a marker that only the initramfs holds: the text "hv-initramfs-secret ",
the SHA-256 in hex of the phrase in SECRET_PHRASE, and a newline (85 bytes; INITRAMFS_SECRET).
It is in no package's files, so finding it in guest memory means finding the initramfs's
contents: the kernel unpacks the archive into its page cache, where a plain guest's memory dump
shows the file and an SEV guest's must not (docs/linux.md; the attack lab's A01-A03 with
--kernel judge by it). The gzip stream does not hold it verbatim. Nothing prints it.

The initramfs's /init (a busybox sh script) mounts /proc, /sys and devtmpfs on /dev, installs the
busybox applets as links and prints "hv-init: user space is up". When the kernel command line
holds `hv.report=NONCE` (128 hex digits, the report_data), it prints "hv-init: attestation",
loads the modules with insmod and runs `hv-report NONCE` (SNP_GET_REPORT), whose lines go to the
console prefixed with "SNP_GET_REPORT ", then `hv-report --ext NONCE` (SNP_GET_EXT_REPORT: the
report and the host's certificate table), whose `report_data:`, `report:` (the one line starting
so, which `hv owner verify-report` reads from the console's text) and `cert:`/`cert_data:` lines
go to the console as they are; if a step fails it
prints "hv-init: attestation failed" and goes on. It then runs an interactive `sh` on the
console, or, when the command line holds `hv.init=poweroff`, prints "hv-init: powering off" and
runs `poweroff -f`.

    python tools/linux.py fetch                  # into build/linux/
    python tools/linux.py fetch -o DIR           # elsewhere
    python tools/linux.py fetch --force          # download again even when up to date

Exit status: 0 on success (fetched or already up to date), 1 when apt is missing, no package is
found, a download or an unpacking fails or guests/linux/hv-report is missing (one line on
stderr), 2 for bad usage.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import lzma
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "build" / "linux"

KERNEL_PATTERN = r"^linux-image-6\.1\.0-([0-9]+)-amd64-unsigned$"
BUSYBOX_PACKAGE = "busybox-static"
SEV_GUEST_MODULE = "kernel/drivers/virt/coco/sev-guest/sev-guest.ko"
# The modules /init loads, in this order, before hv-report asks /dev/sev-guest for a report. Linux
# 6.1's sev-guest seals its messages with crypto_alloc_aead("gcm(aes)"), and Debian builds the
# templates that make it as modules (CONFIG_CRYPTO_GCM, _CTR, _GHASH and _GF128MUL are m; AES and
# crypto_null are built in). The kernel's request_module finds no modprobe database in the
# initramfs, so without them the driver's probe fails. Order: each module's .modinfo "depends=".
INITRD_MODULES = (
    ("gf128mul", "kernel/crypto/gf128mul.ko"),
    ("ghash-generic", "kernel/crypto/ghash-generic.ko"),
    ("ctr", "kernel/crypto/ctr.ko"),
    ("gcm", "kernel/crypto/gcm.ko"),
    ("sev-guest", SEV_GUEST_MODULE),
)
MANIFEST = "manifest.json"
SYSTEM_MAP_PLACEHOLDER = b"The real System.map is in"
OUTPUTS = ("vmlinuz", "System.map", "config", "sev-guest.ko", "initrd.cpio.gz")

INIT_MARKER = "hv-init: user space is up"
POWEROFF_MARKER = "hv-init: powering off"
POWEROFF_PARAM = "hv.init=poweroff"
ATTEST_MARKER = "hv-init: attestation"
ATTEST_FAILED_MARKER = "hv-init: attestation failed"
# The lines of the SNP_GET_REPORT request carry this prefix, so the extended request's
# `report:` line is the one report a whole console log holds for `hv owner verify-report`.
PLAIN_REPORT_PREFIX = "SNP_GET_REPORT"
REPORT_PARAM = "hv.report"  # hv.report=<128 hex digits>: the nonce of the reports /init asks for

# The attestation client (guests/linux/hv-report.c, committed prebuilt) and where the initramfs
# holds it and the modules (MODULE_DIR/NAME.ko).
CLIENT_BINARY = REPO / "guests" / "linux" / "hv-report"
CLIENT_PATH = "bin/hv-report"
MODULE_DIR = "lib/modules"

# The initramfs's marker file (see the module's docstring). hv reads it back from the archive
# (hv.vmm.initramfs), so the path is the one thing both sides must agree on
# (tests/tools/test_linux_tool.py checks that they do).
SECRET_PATH = "etc/hv-secret"
SECRET_PHRASE = "hv test initramfs: a file only the initramfs holds"
INITRAMFS_SECRET = "hv-initramfs-secret " + hashlib.sha256(SECRET_PHRASE.encode()).hexdigest() + "\n"

# The kernel runs /init through its #! line (CONFIG_BINFMT_SCRIPT) with /dev/console as stdin,
# stdout and stderr. A parameter with a dot in its name is taken for a module parameter and never
# reaches init's arguments or environment, so the script reads /proc/cmdline itself. If /init
# exits, the kernel panics: every path ends in exec or poweroff. The nonce is passed to hv-report
# as it is (the last hv.report= wins): the client checks it, so a malformed one is reported as a
# failed attestation rather than ignored. devtmpfs makes /dev/sev-guest when sev-guest loads.
_REPORT_SED = rf"s/.* {REPORT_PARAM.replace('.', '[.]')}=\([^ ]*\) .*/\1/"
INIT_SCRIPT = f"""#!/bin/busybox sh
# /init of hv's test initramfs, written by tools/linux.py.
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev
/bin/busybox --install -s
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
echo "{INIT_MARKER}"
attest() {{
    for module in {" ".join(name for name, _ in INITRD_MODULES)}; do
        /bin/busybox insmod /{MODULE_DIR}/$module.ko || return 1
    done
    plain="$(/{CLIENT_PATH} "$1")" || return 1
    echo "$plain" | /bin/busybox sed 's/^/{PLAIN_REPORT_PREFIX} /'
    /{CLIENT_PATH} --ext "$1"
}}
cmdline=" $(/bin/busybox cat /proc/cmdline) "
case "$cmdline" in
*" {REPORT_PARAM}="*)
    echo "{ATTEST_MARKER}"
    nonce="$(echo "$cmdline" | /bin/busybox sed '{_REPORT_SED}')"
    attest "$nonce" || echo "{ATTEST_FAILED_MARKER}"
    ;;
esac
case "$cmdline" in
*" {POWEROFF_PARAM} "*)
    echo "{POWEROFF_MARKER}"
    /bin/busybox poweroff -f
    echo "hv-init: poweroff failed"
    ;;
esac
exec /bin/busybox sh
"""

# -- the newc cpio format ------------------------------------------------------------------------
#
# Documentation/driver-api/early-userspace/buffer-format.rst: each entry is a 110-byte ASCII
# header ("070701" and thirteen 8-digit hex fields), the path name with its NUL, padding to a
# multiple of 4 counted from the start of the header, the data, padding to a multiple of 4. The
# archive ends with an entry named "TRAILER!!!".

NEWC_MAGIC = b"070701"
NEWC_TRAILER = "TRAILER!!!"


@dataclass(frozen=True)
class CpioEntry:
    """One member of the archive; `name` is relative ("bin/busybox"), as the kernel expects."""

    name: str
    mode: int  # file type bits and permissions, as in st_mode
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)  # (major, minor) of a device node

    @staticmethod
    def directory(name: str, perm: int = 0o755) -> CpioEntry:
        return CpioEntry(name, stat.S_IFDIR | perm)

    @staticmethod
    def file(name: str, data: bytes, perm: int = 0o644) -> CpioEntry:
        return CpioEntry(name, stat.S_IFREG | perm, data)

    @staticmethod
    def char_device(name: str, major: int, minor: int, perm: int = 0o600) -> CpioEntry:
        return CpioEntry(name, stat.S_IFCHR | perm, rdev=(major, minor))


def _pad4(n: int) -> bytes:
    return b"\0" * (-n % 4)


def _newc_member(ino: int, entry: CpioEntry, nlink: int) -> bytes:
    name = entry.name.encode() + b"\0"
    fields = (
        ino, entry.mode, 0, 0, nlink, 0,   # ino, mode, uid, gid, nlink, mtime
        len(entry.data), 0, 0,             # filesize, devmajor, devminor (the archive's own device)
        entry.rdev[0], entry.rdev[1],      # rdevmajor, rdevminor (what a device node names)
        len(name), 0,                      # namesize with the NUL, check (0 for newc)
    )
    for value in fields:
        if not 0 <= value <= 0xFFFFFFFF:
            raise ValueError(f"cpio field out of range in {entry.name!r}: {value}")
    header = NEWC_MAGIC + b"".join(b"%08X" % v for v in fields)
    return header + name + _pad4(len(header) + len(name)) + entry.data + _pad4(len(entry.data))


def newc_archive(entries: list[CpioEntry]) -> bytes:
    """A newc cpio archive of `entries` in order, with inode numbers from 1 and no time stamps."""
    names = [e.name for e in entries]
    if len(set(names)) != len(names):
        raise ValueError("cpio entries with the same name")
    out = []
    for ino, entry in enumerate(entries, start=1):
        if not entry.name or entry.name.startswith("/") or entry.name == NEWC_TRAILER:
            raise ValueError(f"bad cpio entry name {entry.name!r}")
        out.append(_newc_member(ino, entry, 2 if stat.S_ISDIR(entry.mode) else 1))
    out.append(_newc_member(0, CpioEntry(NEWC_TRAILER, 0), 1))
    return b"".join(out)


def initramfs_entries(busybox: bytes, modules: dict[str, bytes], client: bytes) -> list[CpioEntry]:
    """The initramfs: busybox, the report client, the modules (name -> contents, in
    INITRD_MODULES's order), /init, /dev/console, the marker and the directories they need."""
    if list(modules) != [name for name, _ in INITRD_MODULES]:
        raise ValueError(f"modules {list(modules)}, expected those of INITRD_MODULES in order")
    dirs = ["bin", "dev", "etc", "lib", "lib/modules", "proc", "root", "sbin", "sys", "tmp", "usr",
            "usr/bin", "usr/sbin"]
    entries = [CpioEntry.directory(d, 0o1777 if d == "tmp" else 0o700 if d == "root" else 0o755)
               for d in dirs]
    # The kernel opens /dev/console for init's stdin/stdout/stderr before /init runs (and before
    # devtmpfs is mounted), so the node must be in the archive.
    entries.append(CpioEntry.char_device("dev/console", 5, 1))
    entries.append(CpioEntry.file("bin/busybox", busybox, 0o755))
    entries.append(CpioEntry.file(CLIENT_PATH, client, 0o755))
    entries.extend(CpioEntry.file(f"{MODULE_DIR}/{name}.ko", data, 0o644) for name, data in modules.items())
    entries.append(CpioEntry.file("init", INIT_SCRIPT.encode(), 0o755))
    entries.append(CpioEntry.file(SECRET_PATH, INITRAMFS_SECRET.encode(), 0o600))
    return entries


def gzip_deterministic(data: bytes) -> bytes:
    """gzip with no file name and a zero time stamp: the same input gives the same bytes."""
    return gzip.compress(data, compresslevel=9, mtime=0)


def build_initrd(busybox: bytes, modules: dict[str, bytes], client: bytes) -> bytes:
    return gzip_deterministic(newc_archive(initramfs_entries(busybox, modules, client)))


def initrd_layout_sha256(client: bytes) -> str:
    """The digest of the initrd built around an empty busybox and empty modules (the members
    that come from packages): it changes with every other member, the client included, and with
    the list of modules and the archive's format, so an initrd from an older tool is rebuilt."""
    return hashlib.sha256(build_initrd(b"", {name: b"" for name, _ in INITRD_MODULES}, client)).hexdigest()


# -- apt ----------------------------------------------------------------------------------------


class FetchError(Exception):
    """Fetching failed; the message is one line for the user."""


@dataclass(frozen=True)
class Package:
    name: str
    version: str


def _run(argv: list[str], cwd: Path | None = None) -> str:
    try:
        r = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)
    except OSError as e:
        raise FetchError(f"cannot run {argv[0]}: {e.strerror}") from None
    if r.returncode != 0:
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        why = lines[-1].strip() if lines else f"status {r.returncode}"
        raise FetchError(f"{' '.join(argv[:3])} failed: {why}")
    return r.stdout


def require_tools() -> None:
    for tool in ("apt-cache", "apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise FetchError(f"{tool} not found: fetching needs Debian's apt and dpkg (Debian 12)")


def candidate_version(name: str) -> str | None:
    """The version `apt-get download NAME` would fetch, or None when apt has none."""
    for line in _run(["apt-cache", "policy", name]).splitlines():
        key, _, value = line.strip().partition(":")
        if key == "Candidate":
            value = value.strip()
            return None if value in ("", "(none)") else value
    return None


def newest_kernel() -> Package:
    """The highest N whose linux-image-6.1.0-N-amd64-unsigned apt can download."""
    found = []
    for line in _run(["apt-cache", "search", "--names-only", KERNEL_PATTERN]).splitlines():
        name = line.split(" - ", 1)[0].strip()
        m = re.match(KERNEL_PATTERN, name)
        if m:
            found.append((int(m.group(1)), name))
    for _, name in sorted(found, reverse=True):
        version = candidate_version(name)
        if version is not None:
            return Package(name, version)
    raise FetchError("no linux-image-6.1.0-N-amd64-unsigned package found by apt-cache search "
                     "(is this Debian 12 with bookworm in the apt sources, after apt-get update?)")


def client_binary() -> bytes:
    """The committed attestation client (guests/linux/hv-report); no compiler is needed."""
    try:
        return CLIENT_BINARY.read_bytes()
    except OSError as e:
        raise FetchError(f"{CLIENT_BINARY}: {e.strerror} (python tools/build_guests.py builds it)") from None


def busybox_package() -> Package:
    version = candidate_version(BUSYBOX_PACKAGE)
    if version is None:
        raise FetchError(f"no {BUSYBOX_PACKAGE} package found by apt-cache policy")
    return Package(BUSYBOX_PACKAGE, version)


def download(pkg: Package, workdir: Path) -> Path:
    """`apt-get download` one exact version into a directory of its own; the .deb's path."""
    dest = workdir / pkg.name
    dest.mkdir()
    _run(["apt-get", "download", "-q", f"{pkg.name}={pkg.version}"], cwd=dest)
    debs = sorted(dest.glob("*.deb"))
    if len(debs) != 1:
        raise FetchError(f"apt-get download {pkg.name} left {len(debs)} .deb files, expected 1")
    return debs[0]


def unpack(deb: Path, dest: Path) -> Path:
    dest.mkdir()
    _run(["dpkg-deb", "-x", str(deb), str(dest)])
    return dest


def _one(root: Path, pattern: str, what: str) -> Path:
    hits = sorted(root.glob(pattern))
    if len(hits) != 1:
        raise FetchError(f"expected one {what} ({pattern}) in the package, found {len(hits)}")
    return hits[0]


def kernel_module(kernel_root: Path, module: str) -> tuple[bytes, str]:
    """A module's bytes, uncompressed, and where it was found (Debian 12 ships plain .ko; later
    kernels compress modules, so .ko.xz is unpacked here and busybox insmod gets a .ko)."""
    for moddir in sorted((kernel_root / "lib" / "modules").glob("*")):
        plain = moddir / module
        if plain.is_file():
            return plain.read_bytes(), str(plain.relative_to(kernel_root))
        packed = moddir / (module + ".xz")
        if packed.is_file():
            return lzma.decompress(packed.read_bytes()), str(packed.relative_to(kernel_root))
    raise FetchError(f"{module} (or .ko.xz) not found in the kernel package")


# -- the manifest -------------------------------------------------------------------------------


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_manifest(out: Path) -> dict | None:
    try:
        manifest = json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def up_to_date(out: Path, packages: list[Package], client: bytes) -> bool:
    """The manifest names exactly these packages, the initrd is built around this client with
    this tool's layout, and every output still has its digest."""
    manifest = read_manifest(out)
    if manifest is None:
        return False
    if manifest.get("packages") != {p.name: p.version for p in packages}:
        return False
    if manifest.get("initrd_layout_sha256") != initrd_layout_sha256(client):
        return False  # the initrd this tool builds changed: it must be built again
    files = manifest.get("files")
    if not isinstance(files, dict) or set(files) != set(OUTPUTS):
        return False
    return all((out / name).is_file() and sha256_file(out / name) == files[name] for name in OUTPUTS)


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def fetch(out: Path, force: bool = False, log=print) -> dict:
    """Fetch into `out` (see the module's docstring); the manifest written or found current."""
    require_tools()
    client = client_binary()
    kernel = newest_kernel()
    busybox = busybox_package()
    for pkg in (kernel, busybox):
        log(f"{pkg.name} {pkg.version}")
    if not force and up_to_date(out, [kernel, busybox], client):
        log(f"{out}: up to date (manifest matches; nothing downloaded)")
        return read_manifest(out)

    started = time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)  # a run that stops half-way leaves no valid manifest
    with tempfile.TemporaryDirectory(prefix="hv-linux-") as tmp:
        work = Path(tmp)
        debs = {pkg.name: download(pkg, work) for pkg in (kernel, busybox)}
        download_bytes = {name: deb.stat().st_size for name, deb in debs.items()}
        for name, size in download_bytes.items():
            log(f"downloaded {debs[name].name} ({size / 1e6:.1f} MB)")
        kroot = unpack(debs[kernel.name], work / "kernel")
        broot = unpack(debs[busybox.name], work / "busybox")

        vmlinuz = _one(kroot, "boot/vmlinuz-*", "kernel image")
        release = vmlinuz.name.removeprefix("vmlinuz-")
        _write(out / "vmlinuz", vmlinuz.read_bytes())
        system_map = _one(kroot, f"boot/System.map-{release}", "System.map").read_bytes()
        _write(out / "System.map", system_map)
        system_map_kind = "placeholder" if SYSTEM_MAP_PLACEHOLDER in system_map else "symbols"
        if system_map_kind == "placeholder":
            log("System.map: Debian's placeholder (the real map is in the -dbg package)")
        _write(out / "config", _one(kroot, f"boot/config-{release}", "config").read_bytes())
        found = {name: kernel_module(kroot, path) for name, path in INITRD_MODULES}
        modules = {name: data for name, (data, _) in found.items()}
        module_sources = {name: source for name, (_, source) in found.items()}
        _write(out / "sev-guest.ko", modules["sev-guest"])
        for name, source in module_sources.items():
            log(f"{name} module: {source}")
        bb = _one(broot, "bin/busybox", "busybox binary").read_bytes()
        _write(out / "initrd.cpio.gz", build_initrd(bb, modules, client))

    manifest = {
        "packages": {kernel.name: kernel.version, busybox.name: busybox.version},
        "kernel_release": release,
        "system_map": system_map_kind,
        "sev_guest_module_source": module_sources["sev-guest"],
        "initrd_modules": module_sources,
        "download_bytes": download_bytes,
        "initrd_layout_sha256": initrd_layout_sha256(client),
        "hv_report_sha256": hashlib.sha256(client).hexdigest(),
        "files": {name: sha256_file(out / name) for name in OUTPUTS},
    }
    _write(out / MANIFEST, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
    for name in OUTPUTS:
        log(f"  {name:15} {(out / name).stat().st_size:>10} bytes  sha256 {manifest['files'][name]}")
    log(f"wrote {out} in {time.monotonic() - started:.1f} s")
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="linux.py", description=__doc__.splitlines()[0],
        epilog="Exit status: 0 done, 1 fetching failed (one line on stderr), 2 bad usage.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser(
        "fetch", help="download the newest Debian 12 amd64 kernel and busybox, build the initrd",
        description="Download the newest linux-image-6.1.0-N-amd64-unsigned and busybox-static "
                    "with apt-get download (nothing is installed), and write vmlinuz, System.map, "
                    "config, sev-guest.ko, initrd.cpio.gz and manifest.json. Skips the download "
                    "when the manifest already matches the newest versions. The initrd's /init "
                    f"prints \"{INIT_MARKER}\" and starts a shell on the console; with "
                    f"{REPORT_PARAM}=NONCE (128 hex digits) on the kernel command line it first "
                    "prints SEV-SNP attestation reports over NONCE (hv-report), with "
                    f"{POWEROFF_PARAM} it powers off instead of starting the shell.")
    p.add_argument("-o", "--out", metavar="DIR", type=Path, default=DEFAULT_OUT,
                   help="output directory (default: build/linux/ in the repository)")
    p.add_argument("--force", action="store_true",
                   help="download and rebuild even when the manifest is up to date")
    args = parser.parse_args(argv)

    try:
        fetch(args.out, force=args.force)
    except FetchError as e:
        print(f"linux.py: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"linux.py: {e.filename or args.out}: {e.strerror}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
