"""The SNP debug and reclaim commands on the wire: ids from Linux's `enum sev_cmd`
(include/linux/psp-sev.h; AMD's firmware uses the same values), buffers checked against bytes
built by hand at the offsets of `struct sev_data_snp_dbg` and `sev_data_snp_page_reclaim`."""

import pytest

import sevwire as sw


def test_snp_command_ids():
    expected = {
        "SNP_INIT": 0x81, "SNP_DECOMMISSION": 0x90, "SNP_ACTIVATE": 0x91, "SNP_GCTX_CREATE": 0x93,
        "SNP_GUEST_REQUEST": 0x94, "SNP_LAUNCH_START": 0xA0, "SNP_LAUNCH_UPDATE": 0xA1,
        "SNP_LAUNCH_FINISH": 0xA2, "SNP_DBG_DECRYPT": 0xB0, "SNP_DBG_ENCRYPT": 0xB1,
        "SNP_PAGE_RECLAIM": 0xC7,
    }
    for name, value in expected.items():
        assert sw.Cmd[name] == value


@pytest.mark.parametrize("cls", [sw.SnpDbgDecrypt, sw.SnpDbgEncrypt])
def test_snp_dbg_buffer_is_three_packed_u64(cls):
    """struct sev_data_snp_dbg { u64 gctx_paddr; u64 src_addr; u64 dst_addr; } __packed"""
    raw = (0x200000).to_bytes(8, "little") + (0x1234000).to_bytes(8, "little") + \
        (0xFFFF_FFFF_FFFF_F000).to_bytes(8, "little")
    buf = cls(gctx_paddr=0x200000, src_addr=0x1234000, dst_addr=0xFFFF_FFFF_FFFF_F000)
    assert cls.SIZE == 24 and buf.pack() == raw
    assert cls.unpack(raw) == buf
    for bad in (raw[:-1], raw + b"\0"):
        with pytest.raises(sw.BufferLengthError) as err:
            cls.unpack(bad)
        assert err.value.status == sw.Status.INVALID_LEN


def test_snp_page_reclaim_buffer():
    """struct sev_data_snp_page_reclaim { u64 paddr; }: bit 0 of paddr is the page size."""
    assert sw.SnpPageReclaim.SIZE == 8
    assert sw.SnpPageReclaim(0x5000 | 1).pack() == (0x5001).to_bytes(8, "little")


def test_out_of_range_addresses_are_refused():
    with pytest.raises(sw.FieldRangeError):
        sw.SnpDbgDecrypt(0, 1 << 64, 0).pack()
