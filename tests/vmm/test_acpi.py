"""ACPI tables parsed back by the specification's layout (ACPI 6.3, 5.2), and the PM registers
driven as ACPICA drives them on `poweroff -f` and reboot."""

import shutil
import struct
import subprocess

import pytest

from hv.boot.acpi_tables import PmLayout, build_acpi
from hv.vmm.acpi import AcpiPm, ResetControl
from hv.vmm.bus import Bus
from hv.vmm.clock import ManualClock

BASE = 0x000E_0000


def mem_at(blob, gpa, n):
    off = gpa - BASE
    assert 0 <= off and off + n <= len(blob)
    return blob[off:off + n]


def table_at(blob, gpa, signature):
    """A table by its header: signature, length, and a byte sum of zero."""
    header = mem_at(blob, gpa, 36)
    assert header[:4] == signature
    length = struct.unpack_from("<I", header, 4)[0]
    table = mem_at(blob, gpa, length)
    assert sum(table) % 256 == 0, f"{signature} checksum"
    assert header[10:16] == b"HVPC  "               # OEMID
    return table


def gas(table, offset):
    space, width, bit, access, address = struct.unpack_from("<BBBBQ", table, offset)
    return space, width, bit, access, address


@pytest.fixture(scope="module")
def tables():
    blob, rsdp = build_acpi(BASE)
    assert rsdp % 16 == 0
    r = mem_at(blob, rsdp, 36)
    assert r[:8] == b"RSD PTR "
    assert sum(r[:20]) % 256 == 0                   # ACPI 1.0 checksum over the first 20 bytes
    assert sum(r) % 256 == 0                        # extended checksum over all 36
    assert r[15] == 2                               # revision 2: XSDT present
    rsdt_gpa, length, xsdt_gpa = struct.unpack_from("<IIQ", r, 16)
    assert length == 36
    xsdt = table_at(blob, xsdt_gpa, b"XSDT")
    entries = struct.unpack_from(f"<{(len(xsdt) - 36) // 8}Q", xsdt, 36)
    rsdt = table_at(blob, rsdt_gpa, b"RSDT")
    assert struct.unpack_from(f"<{(len(rsdt) - 36) // 4}I", rsdt, 36) == entries
    found = {mem_at(blob, e, 4): e for e in entries}
    assert set(found) == {b"FACP"}
    fadt = table_at(blob, found[b"FACP"], b"FACP")
    return blob, fadt


def test_fadt_is_acpi6_and_not_hardware_reduced(tables):
    blob, fadt = tables
    assert len(fadt) == 276 and fadt[8] == 6        # major revision 6 layout
    flags = struct.unpack_from("<I", fadt, 112)[0]
    assert not flags & (1 << 20)                    # HW_REDUCED_ACPI clear
    assert flags & (1 << 10)                        # RESET_REG_SUP
    assert flags & (1 << 8)                         # TMR_VAL_EXT: 32-bit PM timer
    assert flags & 1 and flags & (1 << 2)           # WBINVD, PROC_C1


def test_fadt_sci_and_smi(tables):
    blob, fadt = tables
    sci, smi_cmd, acpi_enable, acpi_disable = struct.unpack_from("<HIBB", fadt, 46)
    assert sci == 9
    assert smi_cmd == 0 and acpi_enable == 0 and acpi_disable == 0


def test_fadt_pm_blocks_32bit_and_extended_agree(tables):
    blob, fadt = tables
    evt, evtb, cnt, cntb, pm2, tmr = struct.unpack_from("<6I", fadt, 56)
    evt_len, cnt_len, pm2_len, tmr_len = struct.unpack_from("<4B", fadt, 88)
    assert (evt, cnt, tmr) == (0x600, 0x604, 0x608) and evtb == cntb == pm2 == 0
    assert (evt_len, cnt_len, tmr_len) == (4, 2, 4)
    assert gas(fadt, 148)[:2] == (1, 32) and gas(fadt, 148)[4] == evt      # X_PM1a_EVT_BLK
    assert gas(fadt, 172)[:2] == (1, 16) and gas(fadt, 172)[4] == cnt      # X_PM1a_CNT_BLK
    assert gas(fadt, 208)[:2] == (1, 32) and gas(fadt, 208)[4] == tmr      # X_PM_TMR_BLK
    assert gas(fadt, 160) == gas(fadt, 184) == (0, 0, 0, 0, 0)            # no PM1b


def test_fadt_reset_register_is_port_cf9(tables):
    blob, fadt = tables
    assert gas(fadt, 116) == (1, 8, 0, 1, 0xCF9)    # system I/O, 8 bits, byte access
    assert fadt[128] == 0x06


def test_fadt_points_at_facs_and_dsdt_both_ways(tables):
    blob, fadt = tables
    facs32, dsdt32 = struct.unpack_from("<II", fadt, 36)
    facs64, dsdt64 = struct.unpack_from("<QQ", fadt, 132)
    assert (facs32, dsdt32) == (facs64, dsdt64)
    assert facs32 % 64 == 0
    facs = mem_at(blob, facs32, 64)
    assert facs[:4] == b"FACS" and struct.unpack_from("<I", facs, 4)[0] == 64
    assert facs[32] == 2                             # version
    table_at(blob, dsdt32, b"DSDT")


def test_fadt_century_and_boot_flags(tables):
    blob, fadt = tables
    assert fadt[108] == 0x32
    boot = struct.unpack_from("<H", fadt, 109)[0]
    assert boot & 1 and not boot & (1 << 5)          # legacy devices; CMOS RTC present


def test_dsdt_defines_s5_as_sleep_type_5(tables):
    blob, fadt = tables
    dsdt = table_at(blob, struct.unpack_from("<I", fadt, 40)[0], b"DSDT")
    assert dsdt[8] == 2                              # 64-bit integers
    # Name (\_S5_, Package (4) {5, 5, 0, 0}) in AML: NameOp, root, NameSeg, PackageOp,
    # PkgLength (itself + NumElements + 6 element bytes), NumElements, BytePrefix 5 twice, Zero twice.
    want = bytes([0x08, 0x5C]) + b"_S5_" + bytes([0x12, 0x08, 0x04, 0x0A, 5, 0x0A, 5, 0, 0])
    assert dsdt[36:] == want


def test_iasl_disassembles_the_dsdt_to_s5(tables, tmp_path):
    iasl = shutil.which("iasl")
    if iasl is None:
        pytest.skip("iasl (Debian package acpica-tools) is not installed")
    blob, fadt = tables
    dsdt = table_at(blob, struct.unpack_from("<I", fadt, 40)[0], b"DSDT")
    (tmp_path / "dsdt.dat").write_bytes(dsdt)
    subprocess.run([iasl, "-d", "dsdt.dat"], cwd=tmp_path, check=True, capture_output=True)
    dsl = (tmp_path / "dsdt.dsl").read_text()
    assert "Name (\\_S5, Package (0x04)" in dsl
    body = dsl[dsl.index("_S5_: S5"):]
    assert [line.strip().rstrip(",") for line in body.splitlines()[2:6]] == \
        ["0x05", "0x05", "Zero", "Zero"]


def test_builder_refuses_misaligned_base():
    with pytest.raises(ValueError):
        build_acpi(BASE + 8)


# -- the PM registers -------------------------------------------------------------------------

def pm_machine(layout=PmLayout()):
    clock = ManualClock()
    events, sci = [], []
    pm = AcpiPm(clock, sci.append, events.append, layout)
    bus = Bus("pio")
    bus.register(layout.base, layout.length, pm)
    bus.register(0xCF9, 1, ResetControl(events.append))
    return clock, pm, bus, events, sci


def test_poweroff_is_slp_typ_5_with_slp_en():
    clock, pm, bus, events, sci = pm_machine()
    assert bus.read(0x604, 2) & 1                    # SCI_EN: already in ACPI mode
    # acpi_hw_legacy_sleep: clear the status bits, write SLP_TYP, then SLP_TYP | SLP_EN.
    bus.write(0x600, 2, 0xFFFF)
    control = bus.read(0x604, 2) & ~(0x7 << 10 | 1 << 13)
    bus.write(0x604, 2, control | 5 << 10)
    assert events == []
    bus.write(0x604, 2, control | 5 << 10 | 1 << 13)
    assert events == ["poweroff"]
    assert not bus.read(0x604, 2) & (1 << 13)        # SLP_EN reads 0


def test_other_sleep_types_are_not_poweroff():
    clock, pm, bus, events, sci = pm_machine()
    bus.write(0x604, 2, 1 << 13 | 1 << 10)           # S1's type here would be 1: not offered
    bus.write(0x605, 1, 0x20 | 3 << 2)               # a byte write of SLP_EN with type 3
    assert events == []
    bus.write(0x605, 1, 0x20 | 5 << 2)               # and of type 5 in the high byte alone
    assert events == ["poweroff"]


def test_reset_register_write_of_6_is_reset():
    clock, pm, bus, events, sci = pm_machine()
    bus.write(0xCF9, 1, 0x02)                        # SYS_RST alone does nothing yet
    assert events == []
    bus.write(0xCF9, 1, 0x06)
    assert events == ["reset"]


def test_pm_timer_counts_at_3_579545_mhz_and_wraps_at_32_bits():
    clock, pm, bus, events, sci = pm_machine()
    clock.set(10**9)
    assert bus.read(0x608, 4) == 3_579_545
    clock.set(2000 * 10**9)                          # 7,159,090,000 ticks
    assert bus.read(0x608, 4) == 7_159_090_000 % 2**32


def test_pm_timer_24_bit_without_tmr_val_ext():
    clock, pm, bus, events, sci = pm_machine(PmLayout(timer_32bit=False))
    clock.set(10 * 10**9)
    assert bus.read(0x608, 4) == 35_795_450 % 2**24
    blob, _ = build_acpi(BASE, PmLayout(timer_32bit=False))
    fadt_off = blob.index(b"FACP")
    assert not struct.unpack_from("<I", blob, fadt_off + 112)[0] & (1 << 8)


def test_timer_overflow_sets_tmr_sts_and_raises_sci_when_enabled():
    clock, pm, bus, events, sci = pm_machine(PmLayout(timer_32bit=False))
    assert pm.next_deadline_ns() is None
    bus.write(0x602, 2, 0x0001)                      # TMR_EN
    half = 1 << 23                                   # bit 23 toggles every 2^23 ticks
    due = pm.next_deadline_ns()
    assert due == -(-half * 10**9 // 3_579_545)
    pm.update(due - 1)
    assert sci == [] and not bus.read(0x600, 2) & 1
    pm.update(due)
    assert sci == [True]
    assert bus.read(0x600, 2) & 1                    # TMR_STS
    bus.write(0x600, 2, 0x0001)                      # write 1 to clear
    assert sci == [True, False]
    assert not bus.read(0x600, 2) & 1


def test_status_is_write_one_to_clear_and_enable_is_plain():
    clock, pm, bus, events, sci = pm_machine(PmLayout(timer_32bit=False))
    clock.set(-(-(1 << 23) * 10**9 // 3_579_545))
    assert bus.read(0x600, 2) & 1                    # TMR_STS set, no SCI without TMR_EN
    assert sci == []
    bus.write(0x600, 2, 0x0000)                      # writing 0 clears nothing
    assert bus.read(0x600, 2) & 1
    bus.write(0x602, 2, 0x0121)
    assert bus.read(0x600, 4) >> 16 == 0x0121
    assert sci == [True]
