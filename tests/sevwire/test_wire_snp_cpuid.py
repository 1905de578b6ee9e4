"""The SNP CPUID page on the wire, checked against bytes packed by hand at the offsets of Linux's
`struct snp_cpuid_table` (count u32 @0, reserved u32 @4 and u64 @8, entries of 48 bytes from
0x10: eax_in, ecx_in u32, xcr0_in, xss_in u64, eax, ebx, ecx, edx u32, reserved u64), and the
launch digest of a CPUID page hashed by hand from PAGE_INFO (es-snp-reference 3.4)."""

import hashlib
import struct

import pytest

import sevwire as sw

PAGE = 4096


def raw_entry(*fields) -> bytes:
    """fields: eax_in, ecx_in, xcr0_in, xss_in, eax, ebx, ecx, edx, reserved (missing: zero)."""
    fields = list(fields) + [0] * (9 - len(fields))
    return (b"".join(f.to_bytes(4, "little") for f in fields[0:2])
            + b"".join(f.to_bytes(8, "little") for f in fields[2:4])
            + b"".join(f.to_bytes(4, "little") for f in fields[4:8])
            + fields[8].to_bytes(8, "little"))


def raw_page(count: int, entries: list[bytes], reserved: bytes = bytes(12)) -> bytes:
    return (count.to_bytes(4, "little") + reserved + b"".join(entries)).ljust(PAGE, b"\0")


def test_encode_lays_out_the_header_and_48_byte_entries():
    entries = [sw.SnpCpuidEntry(0x1, 0, 0, 0, 0x00A00F11, 0x800, 0x7ED8320B, 0x178BFBFF),
               sw.SnpCpuidEntry(0xD, 1, xcr0_in=1, xss_in=0x1800, eax=0xF, ebx=0x240)]
    expected = raw_page(2, [raw_entry(0x1, 0, 0, 0, 0x00A00F11, 0x800, 0x7ED8320B, 0x178BFBFF),
                            raw_entry(0xD, 1, 1, 0x1800, 0xF, 0x240)])
    page = sw.encode_snp_cpuid_page(entries)
    assert page == expected and len(page) == PAGE
    assert page[0x10 + 48:0x10 + 48 + 16] == (0xD).to_bytes(4, "little") + (1).to_bytes(4, "little") \
        + (1).to_bytes(8, "little")
    assert sw.decode_snp_cpuid_page(page) == (tuple(entries), ())
    assert sw.SNP_CPUID_COUNT_MAX == 64 and sw.SNP_CPUID_PAGE_SIZE == PAGE


def test_encode_takes_64_entries_and_refuses_65():
    entries = [sw.SnpCpuidEntry(0x40000000 + i, eax=i) for i in range(65)]
    page = sw.encode_snp_cpuid_page(entries[:64])
    assert page[:4] == (64).to_bytes(4, "little")
    assert page[0x10 + 63 * 48:0x10 + 63 * 48 + 4] == (0x4000003F).to_bytes(4, "little")
    assert page[0x10 + 64 * 48:] == bytes(PAGE - 0x10 - 64 * 48)
    with pytest.raises(ValueError):
        sw.encode_snp_cpuid_page(entries)
    with pytest.raises(sw.FieldRangeError):
        sw.encode_snp_cpuid_page([sw.SnpCpuidEntry(1, eax=1 << 32)])


@pytest.mark.parametrize("page,entries,problems", [
    (raw_page(65, [raw_entry(0x80000000 + i) for i in range(65)]),
     [sw.SnpCpuidEntry(0x80000000 + i) for i in range(64)], ["count 65 is above 64"]),
    (raw_page(0xFFFFFFFF, []), [sw.SnpCpuidEntry(0)] * 64, ["count 4294967295 is above 64"]),
    (raw_page(1, [raw_entry(7, 1, 0, 0, 1, 2, 3, 4, 0x99)]),
     [sw.SnpCpuidEntry(7, 1, 0, 0, 1, 2, 3, 4, 0x99)], ["entry 0 (leaf 0x7 subleaf 0x1): reserved is not zero"]),
    (raw_page(0, [], reserved=bytes(4) + b"\x01" + bytes(7)), [],
     ["header reserved 0x100000000 is not zero"]),
    (raw_page(0, [raw_entry(1, 0, 0, 0, 5)]), [], []),  # past the count: not read
])
def test_decode_reads_at_most_64_entries_and_names_what_breaks_the_format(page, entries, problems):
    assert sw.decode_snp_cpuid_page(page) == (tuple(entries), tuple(problems))


def test_decode_wants_a_whole_page():
    with pytest.raises(sw.BufferLengthError):
        sw.decode_snp_cpuid_page(bytes(PAGE - 1))


def test_changes_are_listed_field_by_field_in_table_order():
    before = raw_page(66, [raw_entry(0x1, 0, 0, 0, 1, 2, 0x80000004, 4),
                           raw_entry(0x7, 1, 0, 0, 0, 8, 0, 0, 5)], reserved=b"\x01" + bytes(11))
    after = raw_page(64, [raw_entry(0x1, 0, 0, 0, 1, 2, 0x80000000, 4),
                          raw_entry(0x7, 1, 0, 0, 0, 0, 0, 0)])
    assert sw.snp_cpuid_changes(before, after) == [
        "count 66 -> 64", "header reserved 0x1 -> 0x0", "leaf 0x1 ECX 0x80000004 -> 0x80000000",
        "leaf 0x7 subleaf 0x1 EBX 0x8 -> 0x0", "leaf 0x7 subleaf 0x1 reserved 0x5 -> 0x0"]
    assert sw.snp_cpuid_changes(after, after) == []


def test_a_cpuid_page_is_measured_as_zeros():
    """PAGE_INFO of a CPUID page carries zero contents whatever the page holds: SHA-384 of the
    previous digest, 48 zero bytes, length 0x70, type 6, IMI 0, VMPL3/2/1 permissions, 0, GPA."""
    ld = bytes(range(48))
    page = raw_page(1, [raw_entry(1, 0, 0, 0, 1, 2, 3, 4)])
    expected = hashlib.sha384(ld + bytes(48) + struct.pack("<HBBBBBBQ", 0x70, 6, 0, 0, 0, 0, 0,
                                                           0x3000)).digest()
    assert sw.snp_extend(ld, page, sw.SnpPageType.CPUID, 0x3000) == expected
    assert sw.snp_extend(ld, bytes(PAGE), sw.SnpPageType.CPUID, 0x3000) == expected
    assert sw.snp_extend(ld, page, sw.SnpPageType.NORMAL, 0x3000) != expected
