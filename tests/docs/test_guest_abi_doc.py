"""docs/guest-abi.md is enough to build a guest and to predict its launch digest.

The launch digests are recomputed here from the document alone: the ELF is parsed with struct,
the page tables follow the document's table, the initial VMSA and SNP's PAGE_INFO are built from
the document's tables as parsed out of the Markdown. Nothing of hv.boot is used, so a rule the
code changes without the document (or the other way round) fails here. The GHCB, guest-message
and report tables are checked against the code that reads or writes those bytes."""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from hv.cli import main

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "guest-abi.md").read_text()
IMAGES = sorted((ROOT / "guests").glob("*.img"))
PAGE, GIB, MIB2 = 0x1000, 1 << 30, 2 << 20


# -- reading the document ------------------------------------------------------------------------
def table_after(anchor: str) -> list[list[str]]:
    """The rows (cells, stripped, `\\|` unescaped) of the first Markdown table after `anchor`."""
    start = DOC.rfind("\n", 0, DOC.index(anchor)) + 1   # from the start of the anchor's line
    rows, seen = [], False
    for line in DOC[start:].splitlines():
        line = line.strip()
        if line.startswith("|"):
            seen = True
            cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line)[1:-1]]
            if not all(set(c) <= set("-: ") for c in cells):
                rows.append(cells)
        elif seen:
            break
    return rows[1:]  # without the header


def ints(cell: str) -> list[int]:
    return [int(x, 0) for x in re.findall(r"\b(?:0x[0-9a-f]+|\d+)\b", cell)]


def size_of(cell: str) -> int:
    return {"u8": 1, "u16": 2, "u32": 4, "u64": 8}.get(cell.split()[0]) or ints(cell)[0]


# -- the launch digest, from the document --------------------------------------------------------
def pte_bits() -> dict[str, int]:
    m = re.search(r"with P = `(0x[0-9a-f]+)`, RW = `(0x[0-9a-f]+)`, PS = `(0x[0-9a-f]+)`", DOC)
    return dict(zip(("P", "RW", "PS"), (int(x, 16) for x in m.groups())))


def page_tables(mem: int, cbit: int) -> list[tuple[int, bytes]]:
    b, c = pte_bits(), 1 << cbit
    p, rw, ps = b["P"], b["RW"], b["PS"]
    ngib = -(-mem // GIB)
    pml4 = {0: 0x2000 | p | rw | c}
    pdpt = {g: (0x4000 + g * PAGE) | p | rw | c for g in range(ngib)}
    pt0 = {k: k * PAGE | p | rw | (0 if k == 8 else c) for k in range(1, 512)}
    pds = []
    for g in range(ngib):
        pd = {}
        for j in range(512):
            base = g * GIB + j * MIB2
            if base < mem:
                pd[j] = (0x3000 | p | rw | c) if base == 0 else (base | p | rw | ps | c)
        pds.append((0x4000 + g * PAGE, pd))

    def page(entries):
        return b"".join(struct.pack("<Q", entries.get(i, 0)) for i in range(512))
    return [(0x1000, page(pml4)), (0x2000, page(pdpt)), (0x3000, page(pt0))] + \
        [(gpa, page(pd)) for gpa, pd in pds]


def elf_segments(image: bytes) -> tuple[int, list[tuple[int, bytes]]]:
    """(entry, [(p_paddr, file bytes)]) of every PT_LOAD; a flat binary is one segment."""
    if image[:4] != b"\x7fELF":
        return 0x100000, [(0x100000, image)]
    entry, phoff = struct.unpack_from("<QQ", image, 0x18)
    phentsize, phnum = struct.unpack_from("<HH", image, 0x36)
    segs = []
    for i in range(phnum):
        p_type, _flags, off, _vaddr, paddr, filesz, _memsz = struct.unpack_from(
            "<IIQQQQQ", image, phoff + i * phentsize)
        if p_type == 1:
            segs.append((paddr, image[off:off + filesz]))
    return entry, sorted(segs)


def image_regions(image: bytes) -> list[tuple[int, bytes]]:
    _entry, segs = elf_segments(image)
    spans: list[list[int]] = []
    for gpa, data in segs:
        if not data:
            continue
        lo, hi = gpa & ~15, (gpa + len(data) + 15) & ~15
        if spans and lo <= spans[-1][1]:
            spans[-1][1] = max(spans[-1][1], hi)
        else:
            spans.append([lo, hi])
    out = []
    for lo, hi in spans:
        buf = bytearray(hi - lo)
        for gpa, data in segs:
            for i, byte in enumerate(data):
                if lo <= gpa + i < hi:
                    buf[gpa + i - lo] = byte
        out.append((lo, bytes(buf)))
    return out


def initial_vmsa(image: bytes, snp: bool) -> bytes:
    entry, _ = elf_segments(image)
    page = bytearray(PAGE)
    segments: dict[str, tuple[int, ...]] = {}
    for offsets, size, field, value in table_after("**The initial VMSA**"):
        where = ints(offsets)
        if size.startswith("16"):
            names = [n.strip() for n in field.split(":")[0].split(",")]
            for off, name in zip(where, names):
                if value == "all 0":
                    segments[name] = (0, 0, 0, 0)
                elif value.startswith("as "):
                    segments[name] = segments[value[3:]]
                else:
                    segments[name] = tuple(ints(value))
                struct.pack_into("<HHIQ", page, off, *segments[name])
            continue
        if "entry point" in value:
            v = entry
        elif "SEV-SNP" in value:
            v = int(re.search(r"(\d+) \(SEV-SNP", value).group(1)) if snp else \
                int(re.search(r"(\d+) \(SEV-ES", value).group(1))
        else:
            v = ints(value)[0]
        page[where[0]:where[0] + size_of(size)] = v.to_bytes(size_of(size), "little")
    return bytes(page)


def sev_digest(image: bytes, mem: int, cbit: int, es: bool) -> bytes:
    h = hashlib.sha256()
    for _gpa, data in page_tables(mem, cbit) + image_regions(image):
        h.update(data)
    if es:
        h.update(initial_vmsa(image, snp=False))
    return h.digest()


def page_info(ld: bytes, contents: bytes | None, page_type: int, gpa: int) -> bytes:
    info = bytearray(0x70)
    for off, size, field in table_after("size | PAGE_INFO field"):
        off, n = int(off.strip("`"), 16), size_of(size)
        if "digest so far" in field:
            value = ld
        elif field.startswith("SHA-384 of the page"):
            value = hashlib.sha384(contents).digest() if contents is not None else bytes(48)
        elif field.startswith("length"):
            value = ints(field)[0].to_bytes(n, "little")
        elif field.startswith("page type"):
            value = page_type.to_bytes(n, "little")
        elif field.endswith("GPA"):
            value = gpa.to_bytes(n, "little")
        else:
            assert field.endswith(", 0"), field  # IMI, the VMPL masks, reserved
            value = bytes(n)
        info[off:off + n] = value
    return bytes(info)


def snp_digest(image: bytes, mem: int, cbit: int) -> bytes:
    kinds = {name: int(num) for num, name in re.findall(r"(\d) ([A-Z]+)", dict(
        (r[2].split(":")[0], r[2]) for r in table_after("size | PAGE_INFO field"))["page type"])}
    pages: dict[int, bytearray] = {}
    for gpa, data in page_tables(mem, cbit) + image_regions(image):
        for i in range(len(data)):
            a = gpa + i
            pages.setdefault(a & ~(PAGE - 1), bytearray(PAGE))[a % PAGE] = data[i]
    ld = bytes(48)
    for gpa, buf in pages.items():
        ld = hashlib.sha384(page_info(ld, bytes(buf), kinds["NORMAL"], gpa)).digest()
    ld = hashlib.sha384(page_info(ld, None, kinds["SECRETS"], 0x9000)).digest()
    vmsa = initial_vmsa(image, snp=True)
    return hashlib.sha384(page_info(ld, vmsa, kinds["VMSA"], 0xFFFFFFFFF000)).digest()


def measure(*args) -> str:
    r = CliRunner().invoke(main, ["owner", "measure", *map(str, args), "--json"])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)["digest"]


@pytest.mark.parametrize("image", IMAGES, ids=[p.stem for p in IMAGES])
def test_launch_digests_follow_from_the_document(image):
    """Scenario: a guest owner without hv predicts every committed guest's digest in each mode."""
    data = image.read_bytes()
    mem = 64 << 20
    assert measure(image, "--policy", "0x1") == sev_digest(data, mem, 47, es=False).hex()
    assert measure(image, "--policy", "0x5") == sev_digest(data, mem, 47, es=True).hex()
    assert measure(image, "--snp") == snp_digest(data, mem, 47).hex()


@pytest.mark.parametrize("mem,cbit", [("1536M", 47), ("4G", 51), ("4M", 47)])
def test_page_directories_and_c_bit_follow_from_the_document(mem, cbit):
    """Scenario: more than one GiB (a page directory per started GiB) and another C-bit."""
    image = ROOT / "guests" / "hello.img"
    size = {"1536M": 1536 << 20, "4G": 4 << 30, "4M": 4 << 20}[mem]
    args = (image, "--mem", mem, "--cbitpos", cbit)
    assert measure(*args, "--policy", "0x5") == sev_digest(image.read_bytes(), size, cbit, True).hex()
    assert measure(*args, "--snp") == snp_digest(image.read_bytes(), size, cbit).hex()


def test_a_flat_binary_is_one_segment_at_1_mib(tmp_path):
    flat = tmp_path / "flat.bin"
    flat.write_bytes(bytes(range(1, 200)))   # not 16-byte aligned at its end: widened
    assert measure(flat, "--policy", "0x5") == sev_digest(flat.read_bytes(), 64 << 20, 47, True).hex()
    assert measure(flat, "--snp") == snp_digest(flat.read_bytes(), 64 << 20, 47).hex()


# -- the GHCB ------------------------------------------------------------------------------------
def test_ghcb_layout_is_what_the_hypervisor_reads():
    """Every field of the document's GHCB table, written at its offset with its valid bit set by
    the document's rule, is what hv's GHCB reader sees."""
    from hv.kvm.ghcb import SHARED_BUFFER, SHARED_BUFFER_SIZE, Ghcb

    rows = {r[2].split(":")[0].split(" (")[0].strip("`"): (int(r[0].strip("`"), 16), int(r[1]))
            for r in table_after("| offset | size | field | hv |")}
    assert rows["sw_scratch"] == (0x3A8, 8) and rows["rsi"] == (0x330, 8)
    assert rows["shared buffer"] == (SHARED_BUFFER, SHARED_BUFFER_SIZE)
    bitmap = rows["valid_bitmap"][0]
    page = bytearray(PAGE)
    page[rows["protocol_version"][0]:rows["protocol_version"][0] + 2] = (2).to_bytes(2, "little")
    fields = [n for n in rows if n not in ("valid_bitmap", "shared buffer", "protocol_version",
                                           "ghcb_usage")]
    for i, name in enumerate(fields):
        off, size = rows[name]
        page[off:off + size] = (0x11 * (i + 1)).to_bytes(size, "little")
        page[bitmap + off // 64] |= 1 << ((off // 8) % 8)
    g = Ghcb(0x5000, bytes(page))
    for i, name in enumerate(fields):
        assert g.valid(name) and g.get(name) == 0x11 * (i + 1), name
    assert g.protocol_version == 2 and g.usage == 0


def test_ioio_address_size_and_segment_bits_do_not_matter():
    """An OUT whose exit info also carries A64, A32, A16, a segment and bit 1 is the same
    request as one without them; string and REP I/O are refused as an invalid input."""
    from hv.kvm import exits as K
    from hv.kvm.ghcb import Ghcb
    from hv.kvm.sev_es import EsExits

    assert "address-size bits 9:7" in DOC and "segment bits 12:10" in DOC
    es = EsExits(vm=None, control=None)

    def out(info: int):
        g = Ghcb(0x5000, bytes(PAGE))
        g.page[0xFFA:0xFFC] = (2).to_bytes(2, "little")
        for name, value in (("sw_exit_code", 0x7B), ("sw_exit_info_1", info),
                            ("sw_exit_info_2", 0), ("rax", 0x1234)):
            g.set(name, value)
        return es._dispatch(g)

    plain = out(0x3F8 << 16 | 1 << 5)                    # a 16-bit OUT to 0x3f8
    assert plain == K.Io(0x3F8, 2, False, 0x1234)
    assert out(0x3F8 << 16 | 1 << 5 | 0b111 << 7 | 0b101 << 10 | 1 << 1) == plain
    for bad in (1 << 2, 1 << 3, 3 << 4):
        with pytest.raises(Exception) as e:
            out(0x3F8 << 16 | 1 << 5 | bad)
        assert e.value.reason == 5   # GHCB_ERR invalid input


# -- SNP guest messages --------------------------------------------------------------------------
def test_guest_message_header_and_aead_from_the_document():
    """A request built by hand from the document's header table, IV and AAD rules opens in the
    code, and the code's sealed response opens by the document's rules."""
    from sevwire import MsgReportReq, MsgType, open_guest_message, seal_guest_message

    rows = {r[2].strip("`"): (int(r[0].strip("`"), 16), r[1])
            for r in table_after("| offset | size | header field |")}
    key, seqno, report_data = os.urandom(32), 7, os.urandom(64)
    body = report_data + bytes(0x20)                       # MSG_REPORT_REQ, vmpl 0, key_sel 0
    hdr = bytearray(0x60)
    for name, value in (("msg_seqno", seqno), ("algo", 1), ("hdr_version", 1), ("hdr_sz", 0x60),
                        ("msg_type", 5), ("msg_version", 1), ("msg_sz", len(body)), ("msg_vmpck", 0)):
        off, size = rows[name]
        hdr[off:off + size_of(size)] = value.to_bytes(size_of(size), "little")
    iv = seqno.to_bytes(8, "little") + bytes(4)
    sealed = AESGCM(key).encrypt(iv, body, bytes(hdr[0x30:0x60]))
    hdr[0:16] = sealed[-16:]
    got, plain = open_guest_message(key, bytes(hdr) + sealed[:-16])
    assert (got.msg_seqno, got.msg_type, plain) == (seqno, MsgType.MSG_REPORT_REQ, body)
    assert MsgReportReq.decode(plain).report_data == report_data

    rsp = seal_guest_message(key, seqno + 1, MsgType.MSG_REPORT_RSP, bytes(range(256)) * 4 + bytes(0xC0))
    off = rows["msg_sz"][0]
    size = int.from_bytes(rsp[off:off + 2], "little")
    assert size == 0x4C0 and rsp[rows["msg_type"][0]] == 6 and rsp[16:32] == bytes(16)
    iv = int.from_bytes(rsp[0x20:0x28], "little").to_bytes(8, "little") + bytes(4)
    assert AESGCM(key).decrypt(iv, rsp[0x60:0x60 + size] + rsp[:16], rsp[0x30:0x60])[:4] == \
        bytes(range(4))


def test_report_request_and_response_payloads():
    from sevwire import MsgReportReq, MsgReportRsp

    rows = table_after("| MSG_REPORT_REQ (`0x60` bytes) |")
    req = MsgReportReq(bytes(range(64)), vmpl=2, key_sel=1).encode()
    assert len(req) == 0x60 and req[:64] == bytes(range(64))
    assert ints(rows[1][0])[0] == 0x40 and req[0x40:0x44] == (2).to_bytes(4, "little")
    assert ints(rows[2][0])[0] == 0x44 and req[0x44:0x48] == (1).to_bytes(4, "little")
    rsp = MsgReportRsp(0, bytes(0x4A0)).encode()
    assert len(rsp) == 0x4C0 and rsp[4:8] == (0x4A0).to_bytes(4, "little")
    assert ints(rows[3][2])[0] == 0x20


def test_report_layout_is_the_codes():
    """Each field of the document's report table holds, at its offset, what the encoder put in."""
    import dataclasses

    from sevwire import SnpReport

    names = {"version": "version", "guest_svn": "guest_svn", "policy": "policy",
             "family_id": "family_id", "image_id": "image_id", "vmpl": "vmpl",
             "signature_algo": "signature_algo", "current_tcb": "current_tcb",
             "platform_info": "platform_info", "key_info": "key_info",
             "report_data": "report_data", "measurement": "measurement", "host_data": "host_data",
             "id_key_digest": "id_key_digest", "author_key_digest": "author_key_digest",
             "report_id": "report_id", "report_id_ma": "report_id_ma",
             "reported_tcb": "reported_tcb", "chip_id": "chip_id", "committed_tcb": "committed_tcb",
             "launch_tcb": "launch_tcb", "signature R, little-endian": "r",
             "signature S, little-endian": "s"}
    rows = table_after("| offset | size | field | hv's PSP writes |")
    values = {}
    for i, (off, size, field, _w) in enumerate(rows):
        if field not in names:
            continue
        n = size_of(size)
        values[names[field]] = (int(off.strip("`"), 16), n, bytes([i + 1]) * n)
    kw = {k: (v if k in ("r", "s") or len(v) > 8 else int.from_bytes(v, "little"))
          for k, (_o, _n, v) in values.items()}
    blob = dataclasses.replace(SnpReport(**{k: kw[k] for k in
                                            ("policy", "report_data", "measurement", "chip_id",
                                             "current_tcb")}), **kw).encode()
    assert len(blob) == 0x4A0 == int(re.search(r"1184 \(`(0x[0-9a-f]+)`\) bytes", DOC).group(1), 16)
    for name, (off, n, v) in values.items():
        assert blob[off:off + n] == v, name
    build = ints(next(r[0] for r in rows if r[2].startswith("current build")))[0]
    assert build == 0x1E8


def test_secrets_page_and_the_snp_status_values():
    from firmware._snp import SECRETS_VERSION  # the PSP writes the page: its own constants
    from sevwire import Status

    rows = {r[2]: int(r[0].strip("`"), 16) for r in table_after("The secrets page (GPA `0x9000`")}
    assert SECRETS_VERSION == 3 and rows["VMPCK0"] == 0x20 and rows["VMPCK3"] == 0x80
    assert "INVALID_PARAM `0x16`" in DOC and Status.INVALID_PARAM == 0x16
    assert "AEAD_OFLOW `0x1d`" in DOC and Status.AEAD_OFLOW == 0x1D
    assert "INVALID_KEY `0x27`" in DOC and Status.INVALID_KEY == 0x27
    assert "UNSUPPORTED `0x15`" in DOC and Status.UNSUPPORTED == 0x15


# -- hv owner verify-report reads a whole serial log --------------------------------------------
def _log(report: bytes, *, twice: bool = False) -> bytes:
    lines = [b"hello: boot", "caf\u00e9 \u2603".encode() + b" \xff\xfe raw bytes",
             b"report_data: " + os.urandom(64).hex().encode(), b"",
             b"   report: " + report.hex().upper().encode()]
    if twice:
        lines.append(b"report: " + report.hex().encode())
    return b"\r\n".join(lines + [b"attest: done", b""])


def test_verify_report_finds_the_report_in_a_whole_serial_log(tmp_path):
    from hv.owner._errors import OwnerInputError
    from hv.owner._snp_report import read_report

    report = os.urandom(0x4A0)
    (tmp_path / "serial.log").write_bytes(_log(report))
    assert read_report(tmp_path / "serial.log") == report
    (tmp_path / "twice.log").write_bytes(_log(report, twice=True))
    with pytest.raises(OwnerInputError, match="2 lines start with 'report:'"):
        read_report(tmp_path / "twice.log")
    (tmp_path / "none.log").write_bytes(b"attest: the guest request failed (22)\n")
    with pytest.raises(OwnerInputError, match="a serial log with a 'report: <hex>' line"):
        read_report(tmp_path / "none.log")
    (tmp_path / "short.log").write_bytes(b"report: abcd\n")
    with pytest.raises(OwnerInputError, match="not 2368 hex digits"):
        read_report(tmp_path / "short.log")


def test_verify_report_with_two_reports_says_so_in_one_line_with_status_2(tmp_path):
    (tmp_path / "twice.log").write_bytes(_log(os.urandom(0x4A0), twice=True))
    r = CliRunner().invoke(main, ["owner", "verify-report", str(tmp_path / "twice.log"),
                                  "--chain", str(tmp_path)])
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1, r.output


# -- the first instructions ----------------------------------------------------------------------
class _Asm:
    """Just enough x86-64 for the checks below; every failed check jumps to one UD2 (a crash)."""

    def __init__(self):
        self.code, self.fixups = bytearray(), []

    def emit(self, *parts: bytes) -> None:
        for p in parts:
            self.code += p

    def fail_unless(self, jcc_to_fail: int) -> None:   # 0x82 jc, 0x83 jnc, 0x85 jnz
        self.emit(bytes([0x0F, jcc_to_fail]))
        self.fixups.append(len(self.code))
        self.emit(bytes(4))

    def done(self) -> bytes:
        self.emit(b"\xf4")                                # hlt: the guest ends with status 0
        bad = len(self.code)
        self.emit(b"\x0f\x0b")                            # ud2: a crash
        for at in self.fixups:
            self.code[at:at + 4] = struct.pack("<i", bad - (at + 4))
        return bytes(self.code)


def _status_check(expected: int) -> _Asm:
    a = _Asm()
    a.emit(b"\xb9" + struct.pack("<I", 0xC0010131), b"\x0f\x32")       # rdmsr SEV_STATUS
    a.emit(b"\x3d" + struct.pack("<I", expected))                     # cmp eax, expected
    a.fail_unless(0x85)
    return a


def _pvalidate(a: _Asm, gpa: int, already_valid: bool) -> None:
    a.emit(b"\xb8" + struct.pack("<I", gpa), b"\x31\xc9", b"\xba\x01\x00\x00\x00",
           b"\xf2\x0f\x01\xff")                                       # pvalidate 4 KiB, validate
    a.fail_unless(0x83 if already_valid else 0x82)                    # CF = 1: it was valid
    a.emit(b"\x85\xc0")                                               # test eax, eax
    a.fail_unless(0x85)


def _run(image: bytes, mode: str, psp_state: str):
    from hv.vmm import Vmm, VmmConfig

    return Vmm(VmmConfig(image=image, vm_type=mode, mem_size=4 << 20, psp_state=psp_state,
                         timeout=60)).run()


@pytest.mark.parametrize("mode", ["plain", "sev", "sev-es", "sev-snp"])
def test_sev_status_is_the_first_instruction_in_every_mode(mode, psp_state):
    """Scenario: `_start` reads SEV_STATUS before it has a stack, an IDT or validated memory."""
    table = {r[0].strip("`").split()[0]: int(r[1].strip("`"), 16)
             for r in table_after("| mode (`hv run`) | SEV_STATUS")}
    expected = table["(plain)" if mode == "plain" else f"--{mode}"]
    assert _run(_status_check(expected).done(), mode, psp_state).exit_reason == "hlt"
    wrong = _run(_status_check(expected ^ 1).done(), mode, psp_state)
    assert wrong.exit_reason != "hlt"   # the check can fail


def test_under_snp_only_measured_pages_start_validated(psp_state):
    """Scenario: the page tables and the PD in use are valid at entry; the boot stack, the
    unused page-directory pages, 0x10000-0xfffff and the free memory above the image are not."""
    a = _status_check(0x7)
    for gpa in (0x1000, 0x2000, 0x3000, 0x4000, 0x9000):
        _pvalidate(a, gpa, already_valid=True)
    for gpa in (0x5000, 0x7000, 0xA000, 0xF000, 0x10000, 0xFF000, 0x200000):
        _pvalidate(a, gpa, already_valid=False)
    a.emit(b"\x50")   # push rax: the stack page 0xf000 is valid now
    assert _run(a.done(), "sev-snp", psp_state).exit_reason == "hlt"

    first_push = _status_check(0x7)
    first_push.emit(b"\x50")   # push before validating the stack: #VC 0x404 with no IDT
    r = _run(first_push.done(), "sev-snp", psp_state)
    assert r.exit_reason in ("shutdown", "crash"), r
