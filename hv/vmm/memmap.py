"""`hv memmap`: draw a guest's memory map as a PNG and as a table, from the probe's numbers.

The numbers come from the machine's probe (hv.hw.inspect, run by the command line); this module
only draws. Three panels of one cell per guest page (several pages per cell for big guests),
wrapped in rows of CELLS_PER_ROW and read left to right, top to bottom from GPA 0:

  mapping    how the guest's own page tables map the page (private, shared, both, ...)
  DRAM       byte entropy of what DRAM stores: what the hypervisor sees
  guest      byte entropy of what the guest holds: its plaintext

A private page of an SEV guest is ~8 bits/byte in DRAM whatever the guest keeps there; a shared
one looks the same on both sides. The PNG is written by hand (zlib + struct): no image library.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

import numpy as np

__all__ = ["CELLS_PER_ROW", "KIND_COLORS", "Layout", "layout", "map_json", "render_png", "render_table"]

CELLS_PER_ROW = 128
MAX_CELLS = 128 * 256   # more pages than this are grouped several to a cell
MARGIN, GAP, LABEL_W = 10, 16, 60
KIND_COLORS = {
    "unmapped": (48, 48, 48), "plain": (90, 150, 230), "private": (150, 70, 210),
    "shared": (40, 190, 90), "both": (245, 150, 30), "mixed": (210, 210, 90),
}
_BG, _FG = (16, 16, 20), (230, 230, 230)
# Entropy colour scale (bits per byte -> RGB): dark for constant pages, white for random ones.
_STOPS = [(0.0, (0, 0, 0)), (3.0, (80, 20, 130)), (6.0, (225, 85, 35)), (7.5, (250, 215, 60)),
          (8.0, (255, 255, 255))]


@dataclass(frozen=True)
class Layout:
    group: int        # pages per cell
    cells: int
    rows: int
    cell_px: int
    top: int          # y of the first cell row
    panels: tuple[int, int, int]  # x of each panel's first cell column
    width: int
    height: int

    def cell_origin(self, panel: int, cell: int) -> tuple[int, int]:
        """Top-left pixel (x, y) of `cell` in `panel` (0 mapping, 1 DRAM, 2 guest)."""
        row, col = divmod(cell, CELLS_PER_ROW)
        return self.panels[panel] + col * self.cell_px, self.top + row * self.cell_px


def layout(pages: int) -> Layout:
    group = 1
    while pages / group > MAX_CELLS:
        group *= 2
    cells = -(-pages // group)
    rows = -(-cells // CELLS_PER_ROW)
    cell_px = max(2, min(8, 512 // max(rows, 1)))
    panel_w = CELLS_PER_ROW * cell_px
    x0 = MARGIN + LABEL_W
    panels = (x0, x0 + panel_w + GAP, x0 + 2 * (panel_w + GAP))
    top = MARGIN + 2 * _LINE + 4
    height = top + rows * cell_px + 12 + 4 * _LINE + MARGIN
    return Layout(group, cells, rows, cell_px, top, panels, panels[2] + panel_w + MARGIN, height)


# -- a 5x7 bitmap font (rows of 5 bits, most significant bit on the left) --------------------------
_GLYPHS = {
    "0": "0E11131519110E", "1": "040C040404040E", "2": "0E11010204081F", "3": "1F02040201110E",
    "4": "02060A121F0202", "5": "1F101E0101110E", "6": "0608101E11110E", "7": "1F010204080808",
    "8": "0E11110E11110E", "9": "0E11110F01020C", "A": "0E11111F111111", "B": "1E11111E11111E",
    "C": "0E11101010110E", "D": "1C12111111121C", "E": "1F10101E10101F", "F": "1F10101E101010",
    "G": "0E11101711110F", "H": "1111111F111111", "I": "0E04040404040E", "J": "0702020202120C",
    "K": "11121418141211", "L": "1010101010101F", "M": "111B1515111111", "N": "11111915131111",
    "O": "0E11111111110E", "P": "1E11111E101010", "Q": "0E11111115120D", "R": "1E11111E141211",
    "S": "0F10100E01011E", "T": "1F040404040404", "U": "1111111111110E", "V": "11111111110A04",
    "W": "1111111515150A", "X": "11110A040A1111", "Y": "1111110A040404", "Z": "1F01020408101F",
    " ": "00000000000000", ":": "000C0C000C0C00", ".": "00000000000C0C", "-": "0000001F000000",
    "/": "00010204081000", "(": "02040808080402", ")": "08040202020408", ",": "000000000C0408",
    "=": "00001F001F0000", "+": "0004041F040400", "%": "18190204081303", "_": "0000000000001F",
    ">": "08040201020408", "<": "02040810080402", "?": "0E110102040004",
}
_FONT = {c: [int(h[i:i + 2], 16) for i in range(0, 14, 2)] for c, h in _GLYPHS.items()}
_ADVANCE, _LINE = 6, 10


def _text(img: np.ndarray, x: int, y: int, text: str, color=_FG) -> None:
    for ch in text.upper():
        rows = _FONT.get(ch, _FONT["?"])
        for dy, bits in enumerate(rows):
            for dx in range(5):
                if bits >> (4 - dx) & 1 and 0 <= y + dy < img.shape[0] and 0 <= x + dx < img.shape[1]:
                    img[y + dy, x + dx] = color
        x += _ADVANCE


def _scale(h: np.ndarray) -> np.ndarray:
    """Entropy (bits/byte) to RGB along _STOPS."""
    xs = [s[0] for s in _STOPS]
    return np.stack([np.interp(h, xs, [s[1][c] for s in _STOPS]) for c in range(3)], axis=-1).astype(np.uint8)


def _group(values: np.ndarray, group: int, cells: int, fill) -> np.ndarray:
    padded = np.full(cells * group, fill, dtype=values.dtype)
    padded[:values.size] = values
    return padded.reshape(cells, group)


def render_png(mm, kind_names: tuple[str, ...], title: str) -> bytes:
    """The picture of MemoryMap `mm` (kinds index into `kind_names`)."""
    lay = layout(mm.pages)
    img = np.zeros((lay.height, lay.width, 3), dtype=np.uint8)
    img[:] = _BG
    names = list(kind_names) + ["mixed"]
    palette = np.array([KIND_COLORS[n] for n in names], dtype=np.uint8)
    k = _group(mm.kinds, lay.group, lay.cells, mm.kinds[-1])
    kinds = np.where((k == k[:, :1]).all(axis=1), k[:, 0], len(names) - 1)
    colours = [palette[kinds],
               _scale(_group(mm.dram_entropy, lay.group, lay.cells, 0).mean(axis=1)),
               _scale(_group(mm.plain_entropy, lay.group, lay.cells, 0).mean(axis=1))]
    px = lay.cell_px
    inner = px - 1 if px >= 4 else px  # a 1-pixel grid line between big cells
    for panel, colour in enumerate(colours):
        for cell in range(lay.cells):
            x, y = lay.cell_origin(panel, cell)
            img[y:y + inner, x:x + inner] = colour[cell]
    _text(img, MARGIN, MARGIN, title)
    for panel, label in enumerate(("MAPPING (GUEST PAGE TABLES)", "DRAM: WHAT THE HYPERVISOR SEES",
                                   "GUEST: WHAT THE GUEST HOLDS")):
        _text(img, lay.panels[panel], MARGIN + _LINE + 2, label)
    every = max(1, lay.rows // 16)
    for row in range(0, lay.rows, every):
        gpa = row * CELLS_PER_ROW * lay.group * 4096
        _text(img, MARGIN, lay.top + row * px, f"{gpa:08X}", (150, 150, 150))
    _legend(img, lay, names[:-1] if lay.group == 1 else names, mm)
    return _png(img)


def _legend(img: np.ndarray, lay: Layout, names: list[str], mm) -> None:
    y = lay.top + lay.rows * lay.cell_px + 12
    x = lay.panels[0]
    for name in names:
        if name == "plain" and mm.encrypted or name in ("private", "shared", "both") and not mm.encrypted:
            continue
        img[y:y + 7, x:x + 7] = KIND_COLORS[name]
        _text(img, x + 10, y, name)
        x += 10 + _ADVANCE * len(name) + 12
    per_cell = f"ONE CELL = {lay.group} PAGE{'S' if lay.group > 1 else ''} (4 KIB), ROWS OF {CELLS_PER_ROW}"
    _text(img, lay.panels[0], y + _LINE + 4, per_cell, (150, 150, 150))
    x0, w = lay.panels[1], 2 * (lay.panels[1] - lay.panels[0]) - GAP
    bar = _scale(np.linspace(0, 8, w))
    img[y:y + 8, x0:x0 + w] = bar[None, :, :]
    for bits in (0, 2, 4, 6, 8):
        tx = x0 + int((w - 1) * bits / 8)
        img[y + 8:y + 11, tx] = _FG
        _text(img, min(tx, x0 + w - 6), y + 12, str(bits))
    _text(img, x0, y + 12 + _LINE + 2, "BYTE ENTROPY PER PAGE, BITS PER BYTE (8 = LOOKS RANDOM)")


def _png(img: np.ndarray) -> bytes:
    h, w, _ = img.shape
    raw = b"".join(b"\x00" + img[y].tobytes() for y in range(h))  # filter 0 on every row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))


# -- the table -----------------------------------------------------------------------------------
def _entropy_class(h: float) -> str:
    return "const" if h < 0.5 else ("random" if h >= 7.5 else "data")


def _runs(mm) -> tuple[list[tuple[int, int]], list[str], list[str]]:
    """Runs [first, end) of pages with the same mapping and entropy classes, and the classes."""
    kinds = mm.kinds
    dram_c = [_entropy_class(float(h)) for h in mm.dram_entropy]
    plain_c = [_entropy_class(float(h)) for h in mm.plain_entropy]
    runs = []
    start = 0
    for p in range(1, mm.pages + 1):
        if p == mm.pages or (kinds[p], dram_c[p], plain_c[p]) != (kinds[start], dram_c[start], plain_c[start]):
            runs.append((start, p))
            start = p
    return runs, dram_c, plain_c


def map_json(mm, kind_names: tuple[str, ...]) -> dict:
    """The table's content, every run of it, for `hv memmap --json`: GPAs, page counts, the
    mapping and the mean entropy (bits per byte) with its class on each side."""
    runs, dram_c, plain_c = _runs(mm)
    kinds = mm.kinds
    return {
        "pages": mm.pages,
        "counts": {name: int((kinds == i).sum()) for i, name in enumerate(kind_names)},
        "runs": [{"gpa": p0 << 12, "end": (p1 << 12) - 1, "pages": p1 - p0,
                  "mapping": kind_names[kinds[p0]],
                  "dram_entropy": round(float(mm.dram_entropy[p0:p1].mean()), 3), "dram": dram_c[p0],
                  "guest_entropy": round(float(mm.plain_entropy[p0:p1].mean()), 3), "guest": plain_c[p0]}
                 for p0, p1 in runs],
    }


def render_table(mm, kind_names: tuple[str, ...], max_rows: int = 40) -> str:
    """Runs of pages with the same mapping and entropy classes, one line each."""
    kinds = mm.kinds
    runs, dram_c, plain_c = _runs(mm)
    lines = [f"{'GPA range':<23} {'pages':>6}  {'mapping':<8}  {'DRAM (hypervisor)':<17}  guest plaintext"]
    for p0, p1 in runs[:max_rows]:
        d = float(mm.dram_entropy[p0:p1].mean())
        g = float(mm.plain_entropy[p0:p1].mean())
        lines.append(f"{p0 << 12:#010x}-{(p1 << 12) - 1:#010x}  {p1 - p0:>6}  {kind_names[kinds[p0]]:<8}  "
                     f"{d:4.2f} {dram_c[p0]:<12}  {g:4.2f} {plain_c[p0]}")
    if len(runs) > max_rows:
        lines.append(f"... {len(runs) - max_rows} more runs (the picture, -o, shows every page)")
    counts = ", ".join(f"{name} {int((kinds == i).sum())}" for i, name in enumerate(kind_names)
                       if (kinds == i).any())
    lines.append(f"pages: {mm.pages} ({counts}); entropy in bits per byte")
    return "\n".join(lines)
