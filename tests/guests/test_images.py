"""The committed guest images: reproducible from source, and loadable under docs/guest-abi.md."""

from __future__ import annotations

import importlib.util
import io
import shutil
import subprocess
from pathlib import Path

import pytest
from elftools.elf.constants import P_FLAGS
from elftools.elf.elffile import ELFFile

REPO = Path(__file__).resolve().parents[2]
GUESTS_DIR = REPO / "guests"
IMAGE_BASE = 0x100000
FOUR_KIB_MAPPED_END = 2 << 20  # the boot page tables map [0, 2 MiB) with 4 KiB pages
PAGE = 0x1000


def _load_build_tool():
    spec = importlib.util.spec_from_file_location("build_guests", REPO / "tools" / "build_guests.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build_guests = _load_build_tool()
IMAGES = [GUESTS_DIR / f"{name}.img" for name in build_guests.GUESTS]


def _elf(path: Path) -> ELFFile:
    return ELFFile(io.BytesIO(path.read_bytes()))


def _loads(elf: ELFFile):
    return [seg for seg in elf.iter_segments() if seg["p_type"] == "PT_LOAD"]


def _symbols(elf: ELFFile) -> dict[str, int]:
    return {sym.name: sym["st_value"] for sym in elf.get_section_by_name(".symtab").iter_symbols()}


def test_every_guest_has_a_source_and_a_committed_image():
    """Scenario: a fresh checkout runs guests without a compiler, so every listed guest is there."""
    for name in build_guests.GUESTS:
        assert (GUESTS_DIR / f"{name}.c").is_file(), name
        assert (GUESTS_DIR / f"{name}.img").is_file(), f"{name}.img is missing: run tools/build_guests.py"
    stale = {p.stem for p in GUESTS_DIR.glob("*.img")} - set(build_guests.GUESTS)
    assert not stale, f"images with no entry in tools/build_guests.py: {sorted(stale)}"


def _toolchain_skip_reason() -> str | None:
    for tool in ("gcc", "ld"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    recorded = (GUESTS_DIR / "toolchain.txt").read_text()
    try:
        local = build_guests.toolchain_versions()
    except (OSError, subprocess.CalledProcessError) as exc:
        return f"cannot run the toolchain: {exc}"
    if local != recorded:
        return ("the images were built with a different toolchain (bit-for-bit equality needs the "
                f"same one): recorded {recorded.splitlines()}, local {local.splitlines()}")
    return None


def test_committed_images_rebuild_bit_for_bit(tmp_path):
    """Scenario: anyone with the recorded gcc/binutils rebuilds exactly the committed bytes."""
    reason = _toolchain_skip_reason()
    if reason:
        pytest.skip(reason)
    out = tmp_path / "rebuilt"
    rebuilt = build_guests.build(out)
    assert sorted(rebuilt) == sorted(build_guests.GUESTS)
    for name, path in rebuilt.items():
        fresh = path.read_bytes()
        committed = (GUESTS_DIR / f"{name}.img").read_bytes()
        assert fresh == committed, f"{name}.img differs from a rebuild: run tools/build_guests.py"
        # Nothing about the build machine may reach an image (it is measured byte for byte).
        for leak in (str(REPO), str(tmp_path)):
            assert leak.encode() not in fresh, f"{name}.img contains the path {leak}"


@pytest.mark.parametrize("image", IMAGES, ids=lambda p: p.stem)
def test_image_is_a_loadable_elf64_x86_64_executable(image: Path):
    """Scenario: hv's loader takes the image as docs/guest-abi.md describes ELF images."""
    elf = _elf(image)
    assert elf.elfclass == 64
    assert elf.little_endian
    assert elf.header["e_type"] == "ET_EXEC"
    assert elf.header["e_machine"] == "EM_X86_64"

    loads = _loads(elf)
    assert loads, "no PT_LOAD segment"
    spans = []
    for seg in loads:
        start, end = seg["p_paddr"], seg["p_paddr"] + seg["p_memsz"]
        assert seg["p_vaddr"] == seg["p_paddr"], "the guest runs identity-mapped"
        assert seg["p_filesz"] <= seg["p_memsz"]
        assert IMAGE_BASE <= start < end <= FOUR_KIB_MAPPED_END, f"segment [{start:#x}, {end:#x})"
        spans.append((start, end))
    spans.sort()
    for (_, a_end), (b_start, _) in zip(spans, spans[1:]):
        assert a_end <= b_start, "overlapping PT_LOAD segments"

    entry = elf.header["e_entry"]
    holders = [s for s in loads if s["p_paddr"] <= entry < s["p_paddr"] + s["p_filesz"]]
    assert len(holders) == 1, f"entry {entry:#x} is not in the file-backed part of one segment"
    assert holders[0]["p_flags"] & P_FLAGS.PF_X, "the entry segment is not executable"


@pytest.mark.parametrize("image", IMAGES, ids=lambda p: p.stem)
def test_image_layout_symbols(image: Path):
    """Scenario: start.S zeroes .bss and the heap starts at _end, all below the 4 KiB-mapped 2 MiB."""
    elf = _elf(image)
    sym = _symbols(elf)
    assert sym["_start"] == elf.header["e_entry"]
    assert sym["_end"] % PAGE == 0
    assert sym["_end"] <= FOUR_KIB_MAPPED_END
    assert IMAGE_BASE <= sym["__bss_start"] <= sym["__bss_end"] <= sym["_end"]
    assert sym["__bss_start"] % 8 == 0 and sym["__bss_end"] % 8 == 0, "start.S clears 8 bytes at a time"
    top = max(s["p_paddr"] + s["p_memsz"] for s in _loads(elf))
    assert top <= sym["_end"], "the heap would start inside the image"
    if "shared_pool" in sym:
        assert sym["shared_pool"] % PAGE == 0
        assert sym["__bss_start"] <= sym["shared_pool"] < sym["__bss_end"]


@pytest.mark.parametrize("image", IMAGES, ids=lambda p: p.stem)
def test_image_carries_no_build_metadata(image: Path):
    """Scenario: the launch measurement covers the image bytes, so they hold no build id or compiler banner."""
    names = {section.name for section in _elf(image).iter_sections()}
    assert not {n for n in names if n.startswith(".note") or n == ".comment"}, names
    assert b"GCC:" not in image.read_bytes()


def test_secret_guest_documents_its_default_secret():
    """Scenario: the default secret in the source is the one the documents promise."""
    default = b"HV-DEFAULT-SECRET-0123456789abcd"
    assert f'"{default.decode()}"' in (GUESTS_DIR / "secret.c").read_text()
    assert default in (GUESTS_DIR / "secret.img").read_bytes()
    for doc in (GUESTS_DIR / "README.md", REPO / "docs" / "guest-abi.md"):
        assert default.decode() in doc.read_text(), doc
