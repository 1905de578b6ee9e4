#!/usr/bin/env python3
"""Rebuild the sample guest images (guests/*.img) and the Linux report client bit for bit.

The images are committed, so users need no compiler; this script is how they were made. It calls
gcc (compile and assemble) and GNU ld (link) with fixed flags, from the guests/ directory with
relative paths, so that nothing about the build machine (paths, time, build id) reaches an image.
Bit-for-bit equality only holds with the same gcc and binutils versions: the ones used are written
to toolchain.txt beside the images.

guests/linux/hv-report, the attestation client of the test initramfs (tools/linux.py puts it in
as /bin/hv-report), is built the same way from guests/linux/hv-report.c: a static x86-64 Linux
executable with no libc, compiled and linked by one gcc call from guests/linux/, stripped.

    python tools/build_guests.py               # rebuild guests/*.img and guests/linux/hv-report
    python tools/build_guests.py --out DIR     # build into DIR (DIR/linux/hv-report) instead
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GUESTS_DIR = REPO / "guests"

GUESTS = ("hello", "sevcheck", "secret", "compute", "memstress", "service", "attest")

# The freestanding library every guest links; start.S first so _start opens .text.
LIB_SOURCES = (
    "lib/start.S",
    "lib/runtime.c",
    "lib/mem.c",
    "lib/printf.c",
    "lib/heap.c",
    "lib/sha256.c",
    "lib/sev.c",
    "lib/paging.c",
    "lib/ghcb.c",
    "lib/aesgcm.c",
    "lib/snp_guest.c",
    "lib/x25519.c",
    "lib/secret.c",
    "lib/vc.c",
    "lib/vc_entry.S",
)

CFLAGS = (
    "-std=gnu11",
    "-O2",
    "-Wall",
    "-Wextra",
    "-ffreestanding",
    "-nostdlib",
    "-fno-pic",
    "-fno-pie",
    "-mcmodel=small",
    "-mno-red-zone",
    # The ABI does not promise CR4.OSFXSR at entry, and without it SSE faults: general registers only.
    "-mgeneral-regs-only",
    "-fno-stack-protector",
    "-fno-asynchronous-unwind-tables",
    "-fno-unwind-tables",
    "-fcf-protection=none",
    "-fno-ident",
    "-ffunction-sections",
    "-fdata-sections",
    "-ffile-prefix-map=.=.",
    "-Ilib",
)

LDFLAGS = (
    "-m",
    "elf_x86_64",
    "-static",
    "-nostdlib",
    "--build-id=none",
    "--gc-sections",
    "-z",
    "noexecstack",
    "-z",
    "max-page-size=4096",
    "-z",
    "common-page-size=4096",
    "-T",
    "guest.ld",
)


# The Linux user-space client: freestanding like the guests, but a Linux process (a kernel that
# saves SSE state, a red zone, a loader that maps ELF segments), linked by the gcc driver.
LINUX_CLIENT = "linux/hv-report"

LINUX_CFLAGS = (
    "-std=gnu11",
    "-Os",
    "-Wall",
    "-Wextra",
    "-static",
    "-nostdlib",
    "-ffreestanding",
    "-fno-stack-protector",
    "-fno-pie",
    "-no-pie",
    "-fno-asynchronous-unwind-tables",
    "-fno-unwind-tables",
    "-fcf-protection=none",
    "-fno-ident",
    "-ffile-prefix-map=.=.",
    "-s",
    "-Wl,--build-id=none",
    "-Wl,-z,noexecstack",
    "-Wl,-z,max-page-size=4096",
    "-Wl,-z,common-page-size=4096",
)


class BuildError(Exception):
    """A compiler or linker step failed; the message holds its output."""


def _run(argv: list[str], cwd: Path) -> None:
    env = dict(os.environ, LC_ALL="C", SOURCE_DATE_EPOCH="0")
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise BuildError(f"{' '.join(argv)}\n{proc.stdout}{proc.stderr}")
    if proc.stderr:
        sys.stderr.write(proc.stderr)


def toolchain_versions(cc: str = "gcc", ld: str = "ld") -> str:
    """The first line of `cc --version` and of `ld --version`: what bit-for-bit equality needs."""
    lines = []
    for tool in (cc, ld):
        out = subprocess.run([tool, "--version"], capture_output=True, text=True, check=True)
        lines.append(out.stdout.splitlines()[0].strip())
    return "\n".join(lines) + "\n"


def build(out_dir: Path, cc: str = "gcc", ld: str = "ld", src_dir: Path = GUESTS_DIR) -> dict[str, Path]:
    """Build every guest into out_dir; returns {name: image path}."""
    out_dir.mkdir(parents=True, exist_ok=True)
    images = {}
    with tempfile.TemporaryDirectory(prefix="hv-guests-") as tmp:
        objdir = Path(tmp)

        def compile_one(source: str) -> Path:
            obj = objdir / (source.replace("/", "_").rsplit(".", 1)[0] + ".o")
            _run([cc, *CFLAGS, "-c", source, "-o", str(obj)], cwd=src_dir)
            return obj

        lib_objs = [compile_one(src) for src in LIB_SOURCES]
        for name in GUESTS:
            guest_obj = compile_one(f"{name}.c")
            linked = objdir / f"{name}.img"
            _run([ld, *LDFLAGS, "-o", str(linked), *map(str, lib_objs), str(guest_obj)], cwd=src_dir)
            # Copy rather than link in place, so a failed build leaves the old image alone.
            target = out_dir / f"{name}.img"
            shutil.copyfile(linked, target)
            os.chmod(target, 0o644)
            images[name] = target
    (out_dir / "toolchain.txt").write_text(toolchain_versions(cc, ld))
    return images


def build_linux_client(out_dir: Path, cc: str = "gcc", src_dir: Path = GUESTS_DIR) -> Path:
    """Build hv-report into out_dir/linux/hv-report (mode 0755); returns its path."""
    source = Path(LINUX_CLIENT + ".c")
    target = out_dir / LINUX_CLIENT
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="hv-linux-client-") as tmp:
        linked = Path(tmp) / source.stem
        _run([cc, *LINUX_CFLAGS, source.name, "-o", str(linked)], cwd=src_dir / source.parent)
        # Copy rather than link in place, so a failed build leaves the old binary alone.
        shutil.copyfile(linked, target)
    os.chmod(target, 0o755)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=GUESTS_DIR, help="output directory (default: guests/)")
    parser.add_argument("--cc", default="gcc", help="C compiler (default: gcc)")
    parser.add_argument("--ld", default="ld", help="linker (default: ld)")
    args = parser.parse_args(argv)
    try:
        images = build(args.out, cc=args.cc, ld=args.ld)
        client = build_linux_client(args.out, cc=args.cc)
    except (BuildError, OSError, subprocess.CalledProcessError) as exc:
        print(f"build_guests: {exc}", file=sys.stderr)
        return 1
    for name, path in images.items():
        print(f"{path.stat().st_size:8d}  {name}.img")
    print(f"{client.stat().st_size:8d}  {LINUX_CLIENT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
