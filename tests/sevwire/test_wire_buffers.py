"""Command buffers: sizes and field offsets from sev-reference 5.2, checked against bytes built
by hand at the spec's offsets (not with the module's struct formats)."""

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

import sevwire as sw

SPEC_SIZES = {
    sw.Init: 0x14, sw.InitEx: 0x24, sw.PlatformStatus: 12, sw.PekCsr: 12, sw.PekCertImport: 0x1C,
    sw.PdhCertExport: 0x1C, sw.GetId: 12, sw.DownloadFirmware: 12, sw.LaunchStart: 0x24,
    sw.LaunchUpdateData: 0x14, sw.LaunchUpdateVmsa: 0x14, sw.LaunchMeasure: 0x14, sw.LaunchSecret: 0x34,
    sw.LaunchFinish: 4, sw.Decommission: 4, sw.Deactivate: 4, sw.Activate: 8, sw.GuestStatus: 13,
    sw.DbgDecrypt: 0x1C, sw.DbgEncrypt: 0x1C, sw.Attestation: 0x24, sw.MeasureResult: 48,
}


def put(buf: bytearray, off: int, value: int, size: int) -> None:
    buf[off:off + size] = value.to_bytes(size, "little")


@pytest.mark.parametrize("cls,size", SPEC_SIZES.items(), ids=lambda v: getattr(v, "__name__", str(v)))
def test_size(cls, size):
    assert cls.SIZE == size
    assert len(cls().pack()) == size


@pytest.mark.parametrize("cls", SPEC_SIZES, ids=lambda c: c.__name__)
def test_short_and_long_buffers_are_invalid_len(cls):
    for bad in (b"", bytes(cls.SIZE - 1), bytes(cls.SIZE + 1)):
        with pytest.raises(sw.BufferLengthError) as err:
            cls.unpack(bad)
        assert err.value.status == sw.Status.INVALID_LEN


def test_launch_start_offsets():
    raw = bytearray(0x24)
    put(raw, 0x00, 0x11223344, 4)
    put(raw, 0x04, 0x00050001, 4)
    put(raw, 0x08, 0x1000_2000_3000, 8)
    put(raw, 0x10, 2084, 4)
    put(raw, 0x18, 0xDEAD_BEEF_0000, 8)
    put(raw, 0x20, 128, 4)
    buf = sw.LaunchStart(0x11223344, 0x00050001, 0x1000_2000_3000, 2084, 0xDEAD_BEEF_0000, 128)
    assert buf.pack() == bytes(raw)
    assert sw.LaunchStart.unpack(bytes(raw)) == buf


def test_launch_secret_offsets():
    raw = bytearray(0x34)
    for off, value, size in [(0, 7, 4), (8, 0xA000, 8), (0x10, 52, 4), (0x18, 0x9000, 8), (0x20, 64, 4),
                             (0x28, 0xB000, 8), (0x30, 64, 4)]:
        put(raw, off, value, size)
    assert sw.LaunchSecret(7, 0xA000, 52, 0x9000, 64, 0xB000, 64).pack() == bytes(raw)


def test_init_offsets():
    raw = bytearray(0x14)
    put(raw, 0, 1, 4)
    put(raw, 8, 0x100000, 8)
    put(raw, 0x10, 0x100000, 4)
    assert sw.Init(sw.InitFlags.SEV_ES, 0x100000, 0x100000).pack() == bytes(raw)


def test_dbg_and_attestation_offsets():
    raw = bytearray(0x1C)
    put(raw, 0, 3, 4)
    put(raw, 8, 0x1000, 8)
    put(raw, 0x10, 0x2000, 8)
    put(raw, 0x18, 16, 4)
    assert sw.DbgDecrypt(3, 0x1000, 0x2000, 16).pack() == bytes(raw)
    raw = bytearray(0x24)
    put(raw, 0, 9, 4)
    put(raw, 8, 0x3000, 8)
    raw[0x10:0x20] = bytes(range(16))
    put(raw, 0x20, 208, 4)
    assert sw.Attestation(9, 0x3000, bytes(range(16)), 208).pack() == bytes(raw)


def test_platform_status_layout_and_linux_es_flag():
    raw = bytes([0, 24, 1, 1, 1, 0, 0, 15]) + (3).to_bytes(4, "little")
    status = sw.PlatformStatus.unpack(raw)
    assert (status.api_major, status.api_minor, status.state, status.owner, status.config, status.build,
            status.guest_count) == (0, 24, 1, 1, 1, 15, 3)
    # Linux reads bytes 3-6 as a u32 whose 0x0100 bit is "ES initialised": the same config bit 0.
    assert int.from_bytes(raw[3:7], "little") & 0x0100
    assert status.pack() == raw


def test_reserved_bytes_are_zero_and_ignored():
    raw = bytearray(sw.LaunchUpdateData(1, 0x100000, 4096).pack())
    assert raw[4:8] == bytes(4)
    raw[4:8] = b"\xff" * 4
    assert sw.LaunchUpdateData.unpack(bytes(raw)) == sw.LaunchUpdateData(1, 0x100000, 4096)


def test_out_of_range_fields_refused():
    with pytest.raises(sw.FieldRangeError):
        sw.Activate(1, 2**32).pack()
    with pytest.raises(sw.FieldRangeError):
        sw.Attestation(1, 0, bytes(15), 0).pack()
    with pytest.raises(sw.FieldRangeError):
        sw.MeasureResult(bytes(31), bytes(16)).pack()


def test_every_command_with_a_buffer_is_mapped():
    assert sw.BUFFER_FOR_CMD[sw.Cmd.LAUNCH_START] is sw.LaunchStart
    assert sw.BUFFER_FOR_CMD[sw.Cmd.LAUNCH_SECRET] is sw.LaunchSecret
    assert all(issubclass(c, sw.CommandBuffer) for c in sw.BUFFER_FOR_CMD.values())


u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)


@given(st.tuples(u32, u32, u64, u32, u64, u32))
def test_launch_start_round_trip(fields):
    buf = sw.LaunchStart(*fields)
    assert sw.LaunchStart.unpack(buf.pack()) == buf


@given(st.binary(min_size=48, max_size=48))
def test_measure_result_round_trip(raw):
    res = sw.MeasureResult.unpack(raw)
    assert res.measurement == raw[:32] and res.mnonce == raw[32:]
    assert res.pack() == raw


def test_buffers_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        sw.Activate(1, 2).asid = 3  # type: ignore[misc]
