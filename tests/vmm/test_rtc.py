"""The CMOS RTC read and set the way Linux's mc146818 code does."""

import calendar
import time

from hv.vmm.bus import Bus
from hv.vmm.rtc import CmosRtc

# Thursday 29 February 2024, 23:59:58 UTC
LEAP_EVE = calendar.timegm((2024, 2, 29, 23, 59, 58, 0, 0, 0))


class Host:
    def __init__(self, t):
        self.t = t

    def __call__(self):
        return self.t


def make(t=LEAP_EVE):
    host = Host(t)
    rtc = CmosRtc(host)
    bus = Bus("pio")
    bus.register(0x70, 2, rtc)
    return host, rtc, bus


def cmos(bus, index):
    bus.write(0x70, 1, 0x80 | index)    # Linux's CMOS_READ sets the NMI-disable bit... sometimes
    return bus.read(0x71, 1)


def cmos_set(bus, index, value):
    bus.write(0x70, 1, index)
    bus.write(0x71, 1, value)


def read_time(bus):
    return [cmos(bus, i) for i in (0x00, 0x02, 0x04, 0x06, 0x07, 0x08, 0x09, 0x32)]


def test_defaults_bcd_24h_valid_ram():
    host, rtc, bus = make()
    assert cmos(bus, 0x0B) == 0x02
    assert cmos(bus, 0x0D) == 0x80
    assert cmos(bus, 0x0A) & 0x7F == 0x26
    assert rtc.nmi_disabled


def test_bcd_time_of_a_known_instant():
    host, rtc, bus = make()
    # sec 58, min 59, hour 23, Thursday (Sunday is 1), day 29, month 2, year 24, century 20
    assert read_time(bus) == [0x58, 0x59, 0x23, 0x05, 0x29, 0x02, 0x24, 0x20]


def test_binary_and_12_hour_modes():
    host, rtc, bus = make()
    cmos_set(bus, 0x0B, 0x04)           # binary, 12-hour
    assert read_time(bus) == [58, 59, 0x80 | 11, 5, 29, 2, 24, 20]
    host.t += 2                         # midnight, 1 March: 12 AM
    assert read_time(bus)[2:6] == [12, 6, 1, 3]


def test_time_follows_the_host_clock():
    host, rtc, bus = make()
    host.t += 3
    assert read_time(bus)[:6] == [0x01, 0x00, 0x00, 0x06, 0x01, 0x03]


def test_real_host_utc_in_bcd():
    rtc = CmosRtc()
    bus = Bus("pio")
    bus.register(0x70, 2, rtc)
    for _ in range(3):
        # time.gmtime() without an argument reads the coarse clock (time(NULL)), which lags the
        # RTC's time.time() by up to a tick: a second behind it near a second's end.
        before = time.gmtime(time.time())
        regs = read_time(bus)
        if time.gmtime(time.time()) == before:
            break
    bcd = [(v >> 4) * 10 + (v & 15) for v in regs]
    sec, minute, hour, wday, day, month, year, century = bcd
    assert (sec, minute, hour) == (before.tm_sec, before.tm_min, before.tm_hour)
    assert (day, month, century * 100 + year) == (before.tm_mday, before.tm_mon, before.tm_year)
    assert wday == (before.tm_wday + 1) % 7 + 1


def test_uip_in_the_last_244_us_of_a_second():
    host, rtc, bus = make(LEAP_EVE + 0.5)
    assert not cmos(bus, 0x0A) & 0x80
    host.t = LEAP_EVE + 1 - 100e-6
    assert cmos(bus, 0x0A) & 0x80
    host.t = LEAP_EVE + 1
    assert not cmos(bus, 0x0A) & 0x80


def test_guest_sets_the_time_with_set_held():
    host, rtc, bus = make()
    cmos_set(bus, 0x0B, 0x82)           # SET: updates stop
    for index, value in ((0x00, 0x30), (0x02, 0x15), (0x04, 0x08), (0x07, 0x31),
                         (0x08, 0x12), (0x09, 0x99), (0x32, 0x19)):
        cmos_set(bus, index, value)
    host.t += 100                       # time does not run while SET is held
    assert cmos(bus, 0x00) == 0x30
    cmos_set(bus, 0x0B, 0x02)           # release: 31 Dec 1999 08:15:30, then runs
    host.t += 5
    assert read_time(bus) == [0x35, 0x15, 0x08, 0x06, 0x31, 0x12, 0x99, 0x19]


def test_other_bytes_are_ram_and_c_d_read_only():
    host, rtc, bus = make()
    cmos_set(bus, 0x10, 0xAB)
    cmos_set(bus, 0x7F, 0xCD)
    assert cmos(bus, 0x10) == 0xAB and cmos(bus, 0x7F) == 0xCD
    cmos_set(bus, 0x0D, 0x00)
    assert cmos(bus, 0x0D) == 0x80
    cmos_set(bus, 0x0C, 0xFF)
    assert cmos(bus, 0x0C) == 0x00
    bus.write(0x70, 1, 0x10)
    assert not rtc.nmi_disabled
