"""`hv memmap`: a valid PNG (signature, IHDR, CRCs, zlib IDAT) whose mapping panel shows the
guest's own page tables: the secret guest shares exactly the boot information page and the first
page of its shared pool, page 0 is unmapped, and every other page is private."""

import struct
import zlib

import numpy as np
import pytest
from click.testing import CliRunner

from hv.cli import main
from hv.vmm.memmap import KIND_COLORS, layout
from seeing_support import SECRET, symbol

MEM = 4 << 20


def read_png(data: bytes) -> np.ndarray:
    """Decode an 8-bit RGB PNG independently of the writer: chunks, CRCs, zlib, filters."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, []
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        (crc,) = struct.unpack(">I", data[pos + 8 + n:pos + 12 + n])
        assert zlib.crc32(kind + body) == crc, kind
        chunks.append((kind, body))
        pos += 12 + n
    assert chunks[0][0] == b"IHDR" and chunks[-1] == (b"IEND", b"")
    w, h, depth, colour, comp, filt, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    assert (depth, colour, comp, filt, interlace) == (8, 2, 0, 0, 0)
    raw = zlib.decompress(b"".join(b for k, b in chunks if k == b"IDAT"))
    assert len(raw) == h * (1 + 3 * w)
    img = np.zeros((h, w * 3), dtype=np.int32)
    prev = np.zeros(w * 3, dtype=np.int32)
    for y in range(h):
        ftype, line = raw[y * (1 + 3 * w)], np.frombuffer(raw, np.uint8, 3 * w, y * (1 + 3 * w) + 1).astype(np.int32)
        out = line.copy() if ftype == 0 else np.zeros_like(line)
        for x in range(3 * w) if ftype else ():
            a = out[x - 3] if x >= 3 else 0
            b, c = prev[x], (prev[x - 3] if x >= 3 else 0)
            pred = [0, a, b, (a + b) // 2, _paeth(a, b, c)][ftype]
            out[x] = (line[x] + pred) & 0xFF
        img[y], prev = out, out
    return img.reshape(h, w, 3)


def _paeth(a, b, c):
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    return a if pa <= pb and pa <= pc else (b if pb <= pc else c)


@pytest.fixture(scope="module")
def sev_map(psp_state, tmp_path_factory):
    out = tmp_path_factory.mktemp("memmap") / "map.png"
    r = CliRunner(env={"HV_PSP_STATE": psp_state}).invoke(
        main, ["memmap", str(SECRET), "--sev", "--mem", "4M", "-o", str(out)])
    return r, out.read_bytes()


def test_picture_matches_the_guest_page_tables(sev_map):
    r, png = sev_map
    assert r.exit_code == 0, r.output
    img = read_png(png)
    lay = layout(MEM // 4096)
    assert lay.group == 1 and img.shape[:2] == (lay.height, lay.width)
    shared = {0x8000 >> 12, symbol(SECRET, "shared_pool") >> 12}
    colours = {name: tuple(rgb) for name, rgb in KIND_COLORS.items()}
    for page in range(MEM // 4096):
        x, y = lay.cell_origin(0, page)
        got = tuple(int(v) for v in img[y, x])
        expected = "unmapped" if page == 0 else ("shared" if page in shared else "private")
        assert got == colours[expected], f"page {page:#x}: {got} is not {expected}"


def test_dram_panel_shows_ciphertext_where_the_guest_holds_code(sev_map):
    r, png = sev_map
    img = read_png(png)
    lay = layout(MEM // 4096)
    code = symbol(SECRET, "_start") >> 12  # the first code page: file-backed to its end
    dram = img[lay.cell_origin(1, code)[1], lay.cell_origin(1, code)[0]]
    boot_info = img[lay.cell_origin(1, 8)[1], lay.cell_origin(1, 8)[0]]
    assert dram.sum() > 600            # near-white: ~8 bits/byte, ciphertext
    assert boot_info.sum() < 100       # the shared boot information page is mostly zeros


def test_table_on_the_terminal(sev_map):
    r, _png = sev_map
    lines = r.output.splitlines()
    assert lines[0].startswith("GPA range")
    assert any(line.startswith("0x00008000-0x00008fff") and " shared " in line for line in lines)
    assert "pages: 1024 (unmapped 1, private 1021, shared 2)" in r.output


def test_plain_guest_map_without_picture(tmp_path):
    r = CliRunner().invoke(main, ["memmap", str(SECRET), "--mem", "4M"])
    assert r.exit_code == 0, r.output
    assert "pages: 1024 (unmapped 1, plain 1023)" in r.output
